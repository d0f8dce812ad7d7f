"""On a CUDA GPU: the cudnn attention backend against blockwise float32 (outputs and gradients; causal padding with
holes, the vision tower's padded segments, one decoder layer), then memory and speed of forward + backward.

    python scripts/check_attention_gpu.py   # prints one line per check; exits 1 if a check fails

Imports geojax.models' submodules without the package __init__ (which pulls the data and Hugging Face stack), so
it runs where only jax, flax and numpy are installed.
"""
from __future__ import annotations

import os
import statistics
import sys
import time
import types

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for name, path in (("geojax", "geojax"), ("geojax.models", "geojax/models")):
  module = types.ModuleType(name)
  module.__path__ = [os.path.join(ROOT, path)]
  sys.modules.setdefault(name, module)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from geojax.models import attention as attn  # noqa: E402
from geojax.models.config import TextConfig  # noqa: E402
from geojax.models.text import DecoderLayer  # noqa: E402

FAILED = []


def check(name, got, want, rows, tol):
  got, want = np.asarray(got, np.float32), np.asarray(want, np.float32)
  if rows is not None:
    got, want = got[rows], want[rows]
  err = float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-6))
  ok = err <= tol and np.isfinite(got).all()
  print(f"{'ok  ' if ok else 'FAIL'} {name}: max|diff|/max|ref| = {err:.2e} (tolerance {tol:.0e})", flush=True)
  if not ok:
    FAILED.append(name)


def out_and_grads(fn, q, k, v, mask, dout):
  out, vjp = jax.vjp(lambda q, k, v: fn(q, k, v, mask), q, k, v)
  return out, vjp(dout)


def compare(name, q, k, v, mask, rows):
  """cudnn (bf16) against blockwise on the same values in float32."""
  rng = np.random.default_rng(1)
  dout = jnp.asarray(rng.normal(size=q.shape) * rows[:, :, None, None], jnp.bfloat16)
  assert attn.cudnn_supports(q, k, mask), name
  got = jax.jit(lambda *a: out_and_grads(attn.cudnn_attention, *a))(q, k, v, mask, dout)
  f32 = lambda t: t.astype(jnp.float32)
  want = jax.jit(lambda *a: out_and_grads(attn.blockwise_attention, *a))(f32(q), f32(k), f32(v), mask, f32(dout))
  check(f"{name} output", got[0], want[0], rows, 2e-2)
  for label, g, w in zip(("dq", "dk", "dv"), got[1], want[1]):
    check(f"{name} {label}", g, w, None, 3e-2)


def numerics():
  rng = np.random.default_rng(0)
  bf = lambda *shape: jnp.asarray(rng.normal(size=shape), jnp.bfloat16)
  batch, length, heads, kv_heads, dim = 3, 1000, 16, 2, 128
  valid = np.zeros((batch, length), bool)
  valid[0, 100:] = True  # left padding
  valid[1, :900] = True  # right padding
  valid[2, 50:950] = True
  valid[2, 400:420] = False  # a hole
  mask = attn.Mask.from_valid(valid, causal=True)
  compare("text causal padding", bf(batch, length, heads, dim), bf(batch, length, kv_heads, dim),
          bf(batch, length, kv_heads, dim), mask, valid)
  segs, width = 6, 256  # vision: segments of a padded gather [G, S], head_dim 80, no grouping
  valid = np.arange(width)[None] < rng.integers(64, width + 1, size=segs)[:, None]
  compare("vision segments", bf(segs, width, 16, 80), bf(segs, width, 16, 80), bf(segs, width, 16, 80),
          attn.Mask.from_valid(valid, causal=False), valid)
  print(f"auto backend here: {attn.check_backend('auto')}")

  cfg = TextConfig(hidden_size=512, intermediate_size=1024, num_heads=8, num_kv_heads=2, mrope_section=(8, 12, 12))
  layer = DecoderLayer(cfg, dtype=jnp.bfloat16, param_dtype=jnp.float32, rngs=nnx.Rngs(0))
  x = jnp.asarray(rng.normal(size=(2, 300, 512)), jnp.bfloat16)
  ang = jnp.asarray(rng.uniform(0, 6, size=(2, 300, 64)), jnp.float32)
  valid = np.arange(300)[None] >= np.array([[0], [37]])

  @nnx.jit(static_argnames="backend")
  def run(layer, backend):
    return layer(x, jnp.cos(ang), jnp.sin(ang), attn.Mask.from_valid(valid, causal=True, backend=backend))[0]

  check("decoder layer bf16: cudnn vs xla", run(layer, "cudnn"), run(layer, "xla"), valid, 2e-2)


def median_time(fn, repeats=5):
  jax.block_until_ready(fn())
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def performance(lengths=(2048, 8192)):
  rng = np.random.default_rng(0)
  heads, kv_heads, dim = 28, 4, 128
  for length in lengths:
    q = jnp.asarray(rng.normal(size=(1, length, heads, dim)), jnp.bfloat16)
    k, v = (jnp.asarray(rng.normal(size=(1, length, kv_heads, dim)), jnp.bfloat16) for _ in range(2))
    valid = jnp.asarray(np.arange(length) >= length // 8)[None]
    line = []
    for backend in ("xla", "blockwise", "cudnn"):
      def loss(q, k, v, backend=backend):
        out = attn.attention(q, k, v, attn.Mask.from_valid(valid, causal=True, backend=backend))
        return jnp.sum(out.astype(jnp.float32) ** 2)
      grad = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))
      temp = grad.lower(q, k, v).compile().memory_analysis().temp_size_in_bytes / 2 ** 30
      seconds = median_time(lambda: grad(q, k, v))
      line.append(f"{backend} {seconds * 1e3:.2f} ms temp {temp:.3f} GiB")
    print(f"fwd+bwd L={length} (28 heads, 4 KV, bf16): " + "; ".join(line), flush=True)


if __name__ == "__main__":
  print(f"jax {jax.__version__}, devices {jax.devices()}")
  numerics()
  performance()
  print("FAILED: " + ", ".join(FAILED) if FAILED else "all checks passed")
  sys.exit(1 if FAILED else 0)
