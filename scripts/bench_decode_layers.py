"""The sampler's one-token decode step over scanned layers vs over per-layer copies of them (XLA:CPU).

    JAX_PLATFORMS=cpu python scripts/bench_decode_layers.py [--sizes toy,mid] [--steps 63] [--reps 15]

Random QwenVL text decoders (no image), batch 8, a 34-token prompt prefilled, then `steps` calls of `decode_one` in
one jitted fori_loop (argmax feeds the next token), best of `reps` calls; milliseconds per step, wall and process
CPU (the CPU time is steadier on a shared machine). "scan": `decode_one` scans the stacked layers, slicing each
layer's weights out of the stack at every step; "layer list": `decode_one(..., layers=text.layer_list())` with the
slices made once before the loop, over the stacked caches (each step slices each layer's cache out of them);
"per-layer caches": the same over each layer's own K and V (`decode_cache(per_layer=True)`), what `Sampler` does on
CPU. On a tree without `layer_list` (before the layers
were stacked) it times the unrolled layers as "unrolled". Sizes: toy = hidden 128, 4 layers, MLP 512, vocab 2048
(as scripts/bench_sampler.py); mid = hidden 512, 12 layers, MLP 1536, vocab 8192.
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

from geojax.models import QwenVL, tiny_config  # noqa: E402

SIZES = {"toy": dict(hidden_size=128, num_layers=4, intermediate_size=512, vocab_size=2048),
         "mid": dict(hidden_size=512, num_layers=12, intermediate_size=1536, vocab_size=8192)}


def model_of(size: str) -> QwenVL:
  s = SIZES[size]
  vocab = s["vocab_size"]
  config = tiny_config(vocab_size=vocab, image_token_id=vocab - 6, video_token_id=vocab - 5,
                       vision_start_token_id=vocab - 4, vision_end_token_id=vocab - 3, hidden_size=s["hidden_size"],
                       num_layers=s["num_layers"], tie_word_embeddings=False)
  text = config.text.__class__(**{**config.text.__dict__, "intermediate_size": s["intermediate_size"]})
  return QwenVL(config.replace(text=text), rngs=nnx.Rngs(0))


def per_step(model, layer_list: bool, batch: int, prompt: int, steps: int, reps: int,
             per_layer: bool = False) -> tuple[float, float]:
  ids = jnp.asarray(np.random.default_rng(0).integers(0, 200, (batch, prompt)), jnp.int32)

  @nnx.jit
  def prefill(model, ids):
    _, cache = model.prefill(ids, jnp.ones_like(ids), None, None, None, model.init_cache(batch, prompt))
    return model.decode_cache(cache, prompt + steps, per_layer=per_layer)

  @nnx.jit
  def loop(model, cache):
    layers = model.language_model.layer_list() if layer_list else None

    def step(_, carry):
      token, cache = carry
      logits, cache = model.decode_one(token, cache, layers=layers) if layers else model.decode_one(token, cache)
      return jnp.argmax(logits, -1).astype(jnp.int32), cache
    return jax.lax.fori_loop(0, steps, step, (ids[:, -1], cache))

  cache = prefill(model, ids)
  jax.block_until_ready(loop(model, cache))
  wall, cpu = float("inf"), float("inf")
  for _ in range(reps):
    start, start_cpu = time.perf_counter(), time.process_time()
    jax.block_until_ready(loop(model, cache))
    wall, cpu = min(wall, time.perf_counter() - start), min(cpu, time.process_time() - start_cpu)
  return 1e3 * wall / steps, 1e3 * cpu / steps


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--sizes", default="toy,mid")
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--prompt", type=int, default=34)
  parser.add_argument("--steps", type=int, default=63)
  parser.add_argument("--reps", type=int, default=15)
  args = parser.parse_args()
  print(f"jax {jax.__version__} on {jax.devices()[0].platform} ({os.cpu_count()} cores); batch {args.batch}, "
        f"prompt {args.prompt}, {args.steps} decode steps, best of {args.reps}")
  for size in args.sizes.split(","):
    model = model_of(size)
    stacked = hasattr(model.language_model, "layer_list")
    per_layer = "per_layer" in model.decode_cache.__code__.co_varnames
    variants = (("scan", False, False), ("layer list", True, False)) if stacked else (("unrolled", False, False),)
    variants += (("per-layer caches", True, True),) if per_layer else ()
    times = {}
    for label, layer_list, caches in variants:
      times[label] = per_step(model, layer_list, args.batch, args.prompt, args.steps, args.reps, caches)
      print(f"{size:4s} {label:16s}: {times[label][0]:8.3f} ms per step ({times[label][1]:8.3f} CPU-ms)", flush=True)
    if stacked:
      print(f"{size:4s} scan / layer list: {times['scan'][0] / times['layer list'][0]:.2f}x wall, "
            f"{times['scan'][1] / times['layer list'][1]:.2f}x CPU", flush=True)
    if per_layer:
      print(f"{size:4s} layer list / per-layer caches: {times['layer list'][0] / times['per-layer caches'][0]:.2f}x "
            f"wall, {times['layer list'][1] / times['per-layer caches'][1]:.2f}x CPU", flush=True)


if __name__ == "__main__":
  main()
