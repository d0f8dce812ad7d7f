"""Attention memory and speed on XLA:CPU: the dense reference (model.attention=xla, today's masked_attention) vs
blockwise online softmax (model.attention=blockwise, the CPU default).

    JAX_PLATFORMS=cpu python scripts/bench_attention.py --memory_lengths 2048,8192 --speed_lengths 1024,2048,4096

Memory: compiled temp bytes (`jit(...).lower(...).compile().memory_analysis()`, compiled, never run) of forward +
backward of (a) attention alone and (b) one decoder layer of Qwen2.5-VL-7B's width (hidden 3584, 28 heads, 4 KV
heads, MLP 18944), bfloat16, one row of L tokens with a causal padding mask. Linear growth is 4x from 2k to 8k,
quadratic 16x. Speed: median seconds of jitted attention forward + backward at Qwen2-VL-2B's attention shape
(12 heads, 2 KV heads, head_dim 128), float32, one row.

TPU: `--tpu_topology v5e:2x2` (needs libtpu, e.g. `pip install "jax[tpu]==0.10.2"`; TPU_SKIP_MDS_QUERY=1) compiles
attention forward + backward for that topology with the TPU compiler on this host (model.attention=auto picks
splash from the mesh's devices), text (causal) and vision (head_dim 80) shapes, batch sharded over the chips.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from geojax.models.attention import Mask, attention  # noqa: E402
from geojax.models.config import TextConfig  # noqa: E402
from geojax.models.text import DecoderLayer  # noqa: E402

GIB = 2 ** 30
WIDE = TextConfig(hidden_size=3584, intermediate_size=18944, num_heads=28, num_kv_heads=4)  # Qwen2.5-VL-7B's layer


def attention_grad(backend: str):
  def loss(q, k, v, valid):
    out = attention(q, k, v, Mask.from_valid(valid, causal=True, backend=backend))
    return jnp.sum(out.astype(jnp.float32) ** 2)
  return jax.jit(jax.grad(loss, argnums=(0, 1, 2)))


def layer_grad(backend: str, graphdef):
  def loss(state, x, cos, sin, valid):
    out, _ = nnx.merge(graphdef, state)(x, cos, sin, Mask.from_valid(valid, causal=True, backend=backend))
    return jnp.sum(out.astype(jnp.float32) ** 2)
  return jax.jit(jax.grad(loss, argnums=(0, 1)))


def temp_gib(fn, *args) -> float:
  return fn.lower(*args).compile().memory_analysis().temp_size_in_bytes / GIB


def memory(lengths: list[int]) -> None:
  cfg, dtype = WIDE, jnp.bfloat16
  layer = nnx.eval_shape(lambda: DecoderLayer(cfg, dtype=dtype, param_dtype=dtype, rngs=nnx.Rngs(0)))
  graphdef, state = nnx.split(layer)
  spec = jax.ShapeDtypeStruct
  rows = {}
  for backend in ("xla", "blockwise"):
    for length in lengths:
      valid = spec((1, length), jnp.bool_)
      q = spec((1, length, cfg.num_heads, cfg.head_dim), dtype)
      kv = spec((1, length, cfg.num_kv_heads, cfg.head_dim), dtype)
      attn_gib = temp_gib(attention_grad(backend), q, kv, kv, valid)
      trig = spec((1, length, cfg.head_dim), jnp.float32)
      layer_gib = temp_gib(layer_grad(backend, graphdef), state, spec((1, length, cfg.hidden_size), dtype), trig,
                           trig, valid)
      rows[backend, length] = (attn_gib, layer_gib)
      print(f"memory {backend:9s} L={length:6d}: attention fwd+bwd temp {attn_gib:8.3f} GiB, "
            f"decoder layer fwd+bwd temp {layer_gib:8.3f} GiB", flush=True)
  lo, hi = lengths[0], lengths[-1]
  for backend in ("xla", "blockwise"):
    a = rows[backend, hi][0] / rows[backend, lo][0]
    b = rows[backend, hi][1] / rows[backend, lo][1]
    print(f"growth {backend:9s} L {lo} -> {hi} ({hi / lo:.0f}x tokens): attention {a:.2f}x, layer {b:.2f}x")
  print(f"blockwise / xla at L={hi}: attention {rows['blockwise', hi][0] / rows['xla', hi][0]:.3f}, "
        f"layer {rows['blockwise', hi][1] / rows['xla', hi][1]:.3f}")


def median_time(fn, repeats: int) -> float:
  jax.block_until_ready(fn())  # compile
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def speed(lengths: list[int], repeats: int) -> None:
  rng = np.random.default_rng(0)
  heads, kv_heads, dim = 12, 2, 128
  for length in lengths:
    q = jnp.asarray(rng.normal(size=(1, length, heads, dim)), jnp.float32)
    k, v = (jnp.asarray(rng.normal(size=(1, length, kv_heads, dim)), jnp.float32) for _ in range(2))
    valid = jnp.asarray(np.arange(length) >= length // 8)[None]  # left padding
    times = {b: median_time(lambda b=b: attention_grad(b)(q, k, v, valid), repeats) for b in ("xla", "blockwise")}
    print(f"speed L={length:6d}: xla {times['xla']:.3f} s, blockwise {times['blockwise']:.3f} s, "
          f"xla / blockwise = {times['xla'] / times['blockwise']:.2f}x", flush=True)


def tpu_compile(topology: str) -> None:
  from jax.sharding import NamedSharding, PartitionSpec

  from geojax.models.sharding import make_mesh
  from geojax.plan import tpu_target
  devices = tpu_target(topology).devices  # its environment: no metadata server, libtpu shared with other plans
  mesh = make_mesh((1, -1, 1), devices=devices)
  rows = len(devices)
  shapes = {"text": (2048, 28, 4, 128, True), "vision": (1024, 16, 16, 80, False)}
  for name, (length, heads, kv_heads, dim, causal) in shapes.items():
    for backend in ("auto", "blockwise", "xla"):
      def loss(q, k, v, valid, backend=backend, causal=causal):
        out = attention(q, k, v, Mask.from_valid(valid, causal=causal, backend=backend))
        return jnp.sum(out.astype(jnp.float32) ** 2)
      batch_sharded = NamedSharding(mesh, PartitionSpec("fsdp"))
      spec = lambda shape, dtype: jax.ShapeDtypeStruct(shape, dtype, sharding=batch_sharded)
      kv = spec((rows, length, kv_heads, dim), jnp.bfloat16)
      args = (spec((rows, length, heads, dim), jnp.bfloat16), kv, kv, spec((rows, length), jnp.bool_))
      start = time.perf_counter()
      with jax.set_mesh(mesh):
        compiled = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(*args).compile()
      kernel = "tpu_custom_call" in compiled.as_text()
      print(f"tpu {topology} {name} L={length} head_dim={dim} {backend:9s}: compiled in "
            f"{time.perf_counter() - start:.1f} s, Pallas kernel in the program: {kernel}", flush=True)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--memory_lengths", default="2048,8192")
  parser.add_argument("--speed_lengths", default="1024,2048,4096")
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--tpu_topology", default="", help="also compile for this TPU topology (needs libtpu)")
  args = parser.parse_args()
  print(f"jax {jax.__version__} on {jax.devices()[0].platform}, {os.cpu_count()} CPUs")
  if args.memory_lengths:
    memory([int(n) for n in args.memory_lengths.split(",")])
  if args.speed_lengths:
    speed([int(n) for n in args.speed_lengths.split(",")], args.repeats)
  if args.tpu_topology:
    tpu_compile(args.tpu_topology)


if __name__ == "__main__":
  main()
