"""Compile time of a QwenVL forward + backward against depth (XLA:CPU, tiny widths, abstract parameters).

    JAX_PLATFORMS=cpu python scripts/bench_compile.py [--layers 4,28] [--remat none,full] [--version qwen2_5_vl]

For each depth N the model has N text decoder layers and N vision blocks (Qwen2.5-VL: full attention in every 4th
block), widths of `tiny_config`. The program is value_and_grad of the summed logits of 2 rows (one image each, 48
tokens) with respect to all parameters; the parameters are abstract (jax.ShapeDtypeStruct), so nothing is
initialised. Printed per depth: trace + lower seconds, XLA compile seconds (wall and process CPU) and the optimized
HLO's instruction count; then the ratios of the deepest to the shallowest. Scanned layers keep them near 1;
unrolled layers grow about linearly with depth.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from geojax.data.mrope import rope_index  # noqa: E402
from geojax.models import QwenVL, tiny_config  # noqa: E402

IDS = dict(vocab_size=256, image_token_id=250, video_token_id=251, vision_start_token_id=252, vision_end_token_id=253)


def batch(config, rows: int = 2, grid=(1, 8, 8), text: int = 30):
  """Host arrays of `rows` prompts, each `text` random tokens around one image of `grid` patches."""
  rng = np.random.default_rng(0)
  merged = int(np.prod(grid)) // config.vision.spatial_merge_size ** 2
  row = lambda: np.concatenate([rng.integers(0, 200, text // 2), [config.vision_start_token_id],
                                [config.image_token_id] * merged, [config.vision_end_token_id],
                                rng.integers(0, 200, text - text // 2)])
  ids = np.stack([row() for _ in range(rows)]).astype(np.int32)
  mask = np.ones_like(ids)
  grids = np.array([grid] * rows, np.int32)
  positions, _ = rope_index(ids, mask, grids, image_token_id=config.image_token_id)
  pixels = rng.standard_normal((rows * int(np.prod(grid)), config.vision.patch_dim)).astype(np.float32)
  return ids, mask, pixels, tuple(tuple(int(v) for v in g) for g in grids), positions


def measure(version: str, depth: int, remat: str) -> dict:
  config = tiny_config(version, num_layers=depth, vision_depth=depth, remat_policy=remat, **IDS)
  if version == "qwen2_5_vl":
    vision = config.vision.__class__(**{**config.vision.__dict__,
                                        "fullatt_block_indexes": tuple(range(3, depth, 4)) or (depth - 1,)})
    config = config.replace(vision=vision)
  abstract = nnx.eval_shape(lambda: QwenVL(config, rngs=nnx.Rngs(0)))
  graphdef, params, rest = nnx.split(abstract, nnx.Param, ...)
  ids, mask, pixels, grid, positions = batch(config)

  def loss(params, rest, ids, mask, pixels, positions):
    model = nnx.merge(graphdef, params, rest)
    return jnp.sum(model(ids, mask, pixels, grid, positions))

  step = jax.jit(jax.value_and_grad(loss))
  start = time.perf_counter()
  lowered = step.lower(params, rest, ids, mask, pixels, positions)
  lower_s = time.perf_counter() - start
  start, cpu = time.perf_counter(), time.process_time()
  compiled = lowered.compile()
  compile_s, compile_cpu = time.perf_counter() - start, time.process_time() - cpu
  hlo = compiled.as_text()
  instructions = sum(1 for line in hlo.splitlines() if " = " in line and not line.lstrip().startswith("//"))
  return dict(depth=depth, lower_s=lower_s, compile_s=compile_s, compile_cpu=compile_cpu, instructions=instructions)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--layers", default="4,28")
  parser.add_argument("--remat", default="none,full")
  parser.add_argument("--version", default="qwen2_5_vl")
  args = parser.parse_args()
  depths = [int(d) for d in args.layers.split(",")]
  print(f"jax {jax.__version__} on {jax.devices()[0].platform} ({os.cpu_count()} cores); {args.version}, "
        f"forward + backward of summed logits, 2 rows x 48 tokens, one 8x8-patch image each")
  for remat in args.remat.split(","):
    rows = [measure(args.version, d, remat) for d in depths]
    for r in rows:
      print(f"remat {remat:5s} depth {r['depth']:3d}: trace+lower {r['lower_s']:6.2f} s  "
            f"compile {r['compile_s']:6.2f} s ({r['compile_cpu']:6.2f} CPU-s)  "
            f"HLO instructions {r['instructions']:6d}", flush=True)
    first, last = rows[0], rows[-1]
    print(f"remat {remat:5s} depth {last['depth']} / {first['depth']}: trace+lower "
          f"{last['lower_s'] / first['lower_s']:.2f}x, compile {last['compile_s'] / first['compile_s']:.2f}x "
          f"({last['compile_cpu'] / first['compile_cpu']:.2f}x CPU), "
          f"instructions {last['instructions'] / first['instructions']:.2f}x", flush=True)


if __name__ == "__main__":
  main()
