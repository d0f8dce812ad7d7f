"""Attention memory and speed on XLA:CPU: the dense reference (model.attention=xla, today's masked_attention) vs
blockwise online softmax (model.attention=blockwise, the CPU default).

    JAX_PLATFORMS=cpu python scripts/bench_attention.py --memory_lengths 2048,8192 --speed_lengths 1024,2048,4096

Memory: compiled temp bytes (`jit(...).lower(...).compile().memory_analysis()`, compiled, never run) of forward +
backward of (a) attention alone and (b) one decoder layer of Qwen2.5-VL-7B's width (hidden 3584, 28 heads, 4 KV
heads, MLP 18944), bfloat16, one row of L tokens with a causal padding mask. Linear growth is 4x from 2k to 8k,
quadratic 16x. Speed: median seconds of jitted attention forward + backward at Qwen2-VL-2B's attention shape
(12 heads, 2 KV heads, head_dim 128), float32, one row.
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


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--memory_lengths", default="2048,8192")
  parser.add_argument("--speed_lengths", default="1024,2048,4096")
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args()
  print(f"jax {jax.__version__} on {jax.devices()[0].platform}, {os.cpu_count()} CPUs")
  if args.memory_lengths:
    memory([int(n) for n in args.memory_lengths.split(",")])
  if args.speed_lengths:
    speed([int(n) for n in args.speed_lengths.split(",")], args.repeats)


if __name__ == "__main__":
  main()
