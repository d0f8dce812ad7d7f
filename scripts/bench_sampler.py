"""Sampler throughput: a geojax.sampling.Sampler call vs transformers' generate, same weights, same prompts, same run.

    JAX_PLATFORMS=cpu HF_HUB_OFFLINE=1 python scripts/bench_sampler.py [--sizes toy,0.5b] [--modes greedy,sample]
    JAX_PLATFORMS=cpu HF_HUB_OFFLINE=1 python scripts/bench_sampler.py --early_stop 256,16 [--sizes toy]

Each size is a random-weight Qwen2.5-VL built in transformers (torch, CPU), saved with save_pretrained and loaded
into geojax with load_hf, so both sides run the same weights in float32. Batch 8 left-padded prompts with one
small image each, 64 new tokens. tokens/s = generated tokens (up to and including EOS) / wall time of the whole
call (vision tower + prefill + decode, host inputs to host tokens); geojax's Sampler is built once per setting and
called with the parameters, as a trainer does. geojax's compile time is excluded from the timed runs and printed
separately. For the breakdown, geojax's best one-token call (vision tower + prefill + first token + call overhead)
is timed too, and (best full call - best one-token call) / (new_tokens - 1) is printed as its time per decode step.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from geojax.models import load_hf  # noqa: E402
from flax import nnx  # noqa: E402

from geojax.sampling import Sampler  # noqa: E402
from geojax.models import scan, testing  # noqa: E402

SIZES = {
    # ~2M parameters: the size of the unit-test models, where per-step overhead dominates.
    "toy": dict(vocab_size=2048, hidden_size=128, num_layers=4, num_heads=4, num_kv_heads=2, intermediate_size=512,
                vision_hidden=64, vision_depth=2, vision_heads=2, tie_word_embeddings=False),
    # The Qwen2.5-0.5B language model (tied embeddings) with a small vision tower.
    "0.5b": dict(vocab_size=151936, hidden_size=896, num_layers=24, num_heads=14, num_kv_heads=2,
                 intermediate_size=4864, vision_hidden=128, vision_depth=2, vision_heads=2, tie_word_embeddings=True),
}
MODES = {
    "greedy": dict(ours=dict(temperature=0.0), hf=dict(do_sample=False)),
    "sample": dict(ours=dict(temperature=1.0, top_k=50, top_p=0.95),
                   hf=dict(do_sample=True, temperature=1.0, top_k=50, top_p=0.95)),
}


_COMPILE_SECONDS = [0.0]


def _on_duration(event: str, seconds: float, **_) -> None:
  if event.startswith("/jax/core/compile/"):  # tracing, lowering to MLIR, and XLA compilation
    _COMPILE_SECONDS[0] += seconds


jax.monitoring.register_event_duration_secs_listener(_on_duration)


def _count(tokens: np.ndarray, eos: int) -> int:
  """Generated tokens up to and including each row's first EOS."""
  total = 0
  for row in tokens:
    hits = np.flatnonzero(row == eos)
    total += int(hits[0]) + 1 if hits.size else row.size
  return total


def _pick_torch_threads(run_hf, choice: str) -> int:
  """Warm torch up and give it its faster thread count (timed on 8 new tokens): with other work on the cores,
  2 intra-op threads can be many times slower than 1 (spinning workers); on an idle machine 2 may win."""
  candidates = [1, 2] if choice == "best" else [int(choice)]
  timings = {}
  for n in candidates:
    torch.set_num_threads(n)
    run_hf(0, 8)  # warm-up (allocator, kernels)
    start = time.perf_counter()
    run_hf(0, 8)
    timings[n] = time.perf_counter() - start
  best = min(timings, key=timings.get)
  torch.set_num_threads(best)
  return best


def bench_size(name: str, modes: list[str], batch: int, new_tokens: int, reps: int, grid: tuple[int, int],
               torch_threads: str = "best") -> list:
  config = testing.hf_config("qwen2_5_vl", **SIZES[name])
  with tempfile.TemporaryDirectory() as path:
    hf = testing.build_hf_model(config, path)
    ours = load_hf(path)
  n_params = sum(p.numel() for p in hf.parameters())
  prompts = testing.make_prompts(config, batch, grid_hw=grid, seed=0)
  eos = config.text_config.eos_token_id
  torch_inputs = prompts.torch_inputs(config.image_token_id)
  params = nnx.state(ours, nnx.Param)
  rows = []
  for mode in modes:
    settings = MODES[mode]
    samplers = {steps: Sampler(ours, max_new_tokens=steps, eos_token_id=eos, pad_token_id=prompts.pad_id,
                               **settings["ours"]) for steps in (new_tokens, 1)}

    def run_ours(seed, steps=new_tokens):
      result = samplers[steps](params, prompts.input_ids, prompts.attention_mask, prompts.pixel_values,
                               prompts.image_grid_thw, rng=jax.random.key(seed))
      return np.asarray(result.tokens)

    def run_hf(seed, steps=new_tokens):
      torch.manual_seed(seed)
      with torch.no_grad():
        out = hf.generate(**torch_inputs, max_new_tokens=steps, eos_token_id=eos, pad_token_id=prompts.pad_id,
                          **settings["hf"])
      return out[:, prompts.input_ids.shape[1]:].numpy()

    _COMPILE_SECONDS[0] = 0.0
    run_ours(0)
    compile_s = _COMPILE_SECONDS[0]
    run_ours(0, 1)  # compiles the one-token call used for the breakdown below
    threads = _pick_torch_threads(run_hf, torch_threads)
    times = {"geojax": [], "transformers": []}
    counts = {"geojax": 0, "transformers": 0}
    for rep in range(reps):
      for label, fn in (("geojax", run_ours), ("transformers", run_hf)):
        start = time.perf_counter()
        tokens = fn(rep + 1)
        times[label].append(time.perf_counter() - start)
        counts[label] += _count(tokens, eos)
    one_token = []  # geojax's vision tower + prefill + first token (+ call overhead), for the breakdown
    for rep in range(reps):
      start = time.perf_counter()
      run_ours(rep + 1, 1)
      one_token.append(time.perf_counter() - start)
    tps = {k: counts[k] / sum(times[k]) for k in times}
    rows.append(dict(size=name, params=n_params, mode=mode, ours=tps["geojax"], hf=tps["transformers"],
                     threads=threads, ratio=tps["geojax"] / tps["transformers"], compile_s=compile_s,
                     ours_s=min(times["geojax"]), hf_s=min(times["transformers"]), prefill_s=min(one_token)))
    # Per decode step from best calls; an approximation when rows stop at EOS before new_tokens.
    step_ms = 1e3 * (min(times["geojax"]) - min(one_token)) / max(new_tokens - 1, 1)
    print(f"{name:5s} {n_params / 1e6:7.1f}M {mode:6s} geojax {tps['geojax']:9.1f} tok/s  transformers "
          f"{tps['transformers']:9.1f} tok/s ({threads} thr)  ratio {rows[-1]['ratio']:6.2f}x  "
          f"(compile {compile_s:.1f}s; best call {rows[-1]['ours_s']:.4f}s vs {rows[-1]['hf_s']:.4f}s; geojax "
          f"1-token call {min(one_token) * 1e3:.1f} ms, then {step_ms:.3f} ms per step)", flush=True)
  floor = matmul_floor(ours, batch, prompts.input_ids.shape[1] + new_tokens - 1, new_tokens - 1)
  best_one_token = min(r["prefill_s"] for r in rows)
  bound = best_one_token + (new_tokens - 1) * floor
  print(f"{name:5s} decode-step matmuls alone: {floor * 1e3:.3f} ms per step; the best one-token call plus "
        f"{new_tokens - 1} such steps is {bound * 1e3:.1f} ms, {min(r['hf_s'] for r in rows) / bound:.1f}x "
        f"transformers' best call", flush=True)
  return rows


def matmul_floor(model, batch: int, cache_len: int, steps: int, reps: int = 5) -> float:
  """Seconds per decode step spent in the step's matmuls alone, on this machine's XLA:CPU dot library.

  The same dots as one decode step of `model` (q/k/v/o, both attention dots over a `cache_len` cache, gate/up/down,
  the LM head, on its weights), chained by one add each so they run one after another, looped `steps` times in one
  jit; nothing else (no norms, rotary, softmax, cache writes or token choice). A lower bound for any XLA
  formulation of the step that keeps float32 and these shapes."""
  text = model.language_model
  cfg = text.cfg
  flat = lambda dense: dense.kernel[...].reshape(int(np.prod(dense.in_shape)), -1)
  layers = [(flat(layer.self_attn.q_proj), flat(layer.self_attn.k_proj), flat(layer.self_attn.v_proj),
             flat(layer.self_attn.o_proj), flat(layer.mlp.gate_proj), flat(layer.mlp.up_proj),
             flat(layer.mlp.down_proj)) for layer in (scan.layer(text.layers, i) for i in range(cfg.num_layers))]
  head = text.embed_tokens.embedding[...].T if text.lm_head is None else flat(text.lm_head)
  kv, groups, hd = cfg.num_kv_heads, cfg.num_heads // cfg.num_kv_heads, cfg.head_dim
  keys = jnp.ones((batch, kv, hd, cache_len), jnp.float32) / cache_len
  values = jnp.ones((batch, kv, cache_len, hd), jnp.float32) / cache_len

  @jax.jit
  def run(x, layers, head):
    def step(_, x):
      for wq, wk, wv, wo, wg, wu, wd in layers:
        q = ((x @ wq).reshape(batch, kv, groups, hd) + (x @ wk).reshape(batch, kv, 1, hd)
             + (x @ wv).reshape(batch, kv, 1, hd))
        scores = jnp.einsum("bkgd,bkdt->bkgt", q, keys)
        x = x + (jnp.einsum("bkgt,bktd->bkgd", scores, values).reshape(batch, -1) @ wo)
        x = x + ((x @ wg) + (x @ wu)) @ wd
      return x + (x @ head)[:, :x.shape[1]]
    return jax.lax.fori_loop(0, steps, step, x)

  x = jnp.full((batch, cfg.hidden_size), 1e-3, jnp.float32)
  jax.block_until_ready(run(x, layers, head))
  best = float("inf")
  for _ in range(reps):
    start = time.perf_counter()
    jax.block_until_ready(run(x, layers, head))
    best = min(best, time.perf_counter() - start)
  return best / steps


def bench_tiling(name: str, prompts_n: int, group: int, new_tokens: int, reps: int, grid: tuple[int, int]) -> None:
  """geojax alone: G samples per prompt by tiling the prefilled KV cache vs tiling the prompts before prefill."""
  config = testing.hf_config("qwen2_5_vl", **SIZES[name])
  with tempfile.TemporaryDirectory() as path:
    testing.build_hf_model(config, path)
    ours = load_hf(path)
  prompts = testing.make_prompts(config, prompts_n, grid_hw=grid, seed=0)
  for tile in ("cache", "prompt"):
    sampler = Sampler(ours, max_new_tokens=new_tokens, temperature=1.0, top_k=50, top_p=0.95,
                      eos_token_id=config.text_config.eos_token_id, num_samples=group, tile=tile)

    def run(seed):
      result = sampler(None, prompts.input_ids, prompts.attention_mask, prompts.pixel_values, prompts.image_grid_thw,
                       rng=jax.random.key(seed))
      return np.asarray(result.tokens)
    start = time.perf_counter()
    run(0)
    first = time.perf_counter() - start
    times = []
    for rep in range(reps):
      start = time.perf_counter()
      run(rep + 1)
      times.append(time.perf_counter() - start)
    print(f"{name:5s} {prompts_n} prompts x G={group} tile={tile:6s} best call {min(times):.3f}s  "
          f"(first call {first:.1f}s)", flush=True)


def _stop_ids(free: np.ndarray, short: int) -> tuple[int, ...]:
  """EOS ids that stop every row but row 0 at or soon after `short` tokens and never row 0: for each row, the first
  token it draws from step short - 1 on that row 0 never draws and no row draws before step short - 1."""
  forbidden = set(free[0].tolist()) | set(free[1:, :short - 1].ravel().tolist())
  ids = {next((int(x) for x in row[short - 1:] if int(x) not in forbidden), None) for row in free[1:]}
  return tuple(sorted(i for i in ids if i is not None))


def bench_early_stop(name: str, modes: list[str], batch: int, long: int, short: int, reps: int,
                     grid: tuple[int, int]) -> None:
  """geojax alone: one row of `batch` decodes `long` tokens, the others stop after about `short` (EOS ids picked
  from a free run with the same key). Phases off (one full-batch loop over the full cache, the sampler before
  phases) against phases on (finished rows dropped, cache grown in buckets); same tokens, calls alternated."""
  config = testing.hf_config("qwen2_5_vl", **SIZES[name])
  with tempfile.TemporaryDirectory() as path:
    testing.build_hf_model(config, path)
    ours = load_hf(path)
  prompts = testing.make_prompts(config, batch, grid_hw=grid, seed=0)
  args = (None, prompts.input_ids, prompts.attention_mask, prompts.pixel_values, prompts.image_grid_thw)
  key = jax.random.key(0)
  for mode in modes:
    settings = MODES[mode]["ours"]
    free = np.asarray(Sampler(ours, max_new_tokens=long, phases=False, **settings)(*args, rng=key).tokens)
    eos = _stop_ids(free, short)
    samplers = {p: Sampler(ours, max_new_tokens=long, eos_token_id=eos, pad_token_id=prompts.pad_id, phases=p,
                           **settings) for p in (False, True)}
    results = {p: jax.tree.map(np.asarray, s(*args, rng=key)) for p, s in samplers.items()}  # compiles
    np.testing.assert_array_equal(results[False].tokens, results[True].tokens)
    tokens = int(results[True].lengths.sum())
    times = {False: [], True: []}
    for _ in range(reps):
      for p, s in samplers.items():
        start = time.perf_counter()
        np.asarray(s(*args, rng=key).tokens)
        times[p].append(time.perf_counter() - start)
    tps = {p: tokens / min(t) for p, t in times.items()}
    lengths = results[True].lengths
    print(f"{name:5s} {mode:6s} row lengths {lengths[0]} and {lengths[1:].min()}-{lengths[1:].max()} "
          f"({tokens} tokens); phases off {tps[False]:8.1f} tok/s (best {min(times[False]):.3f}s), on "
          f"{tps[True]:8.1f} tok/s (best {min(times[True]):.3f}s): {tps[True] / tps[False]:.2f}x; phases "
          f"{samplers[True].last_phases}", flush=True)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--sizes", default="toy,0.5b")
  parser.add_argument("--modes", default="greedy,sample")
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--new_tokens", type=int, default=64)
  parser.add_argument("--reps", type=int, default=3)
  parser.add_argument("--grid", default="8x8", help="image patch grid h x w (8x8 = a 112x112 image, 16 tokens)")
  parser.add_argument("--torch_threads", default="best", help="'best' (faster of 1 and 2, chosen per mode) or N")
  parser.add_argument("--tiling_group", type=int, default=0,
                      help="if > 0, instead time geojax's two ways of drawing G samples per prompt (batch/G prompts)")
  parser.add_argument("--early_stop", default="",
                      help="LONG,SHORT: instead time one row of --batch decoding LONG tokens while the others stop "
                           "after SHORT, phases off vs on")
  args = parser.parse_args()
  grid = tuple(int(v) for v in args.grid.split("x"))
  if args.early_stop:
    long, short = (int(v) for v in args.early_stop.split(","))
    for name in args.sizes.split(","):
      bench_early_stop(name, args.modes.split(","), args.batch, long, short, args.reps, grid)
    return
  if args.tiling_group:
    for name in args.sizes.split(","):
      bench_tiling(name, max(args.batch // args.tiling_group, 1), args.tiling_group, args.new_tokens, args.reps, grid)
    return
  print(f"jax {jax.__version__} on {jax.devices()[0].platform} ({os.cpu_count()} cores), torch {torch.__version__}; "
        f"batch {args.batch}, {args.new_tokens} new tokens, image grid {grid}")
  rows = []
  for name in args.sizes.split(","):
    rows += bench_size(name, args.modes.split(","), args.batch, args.new_tokens, args.reps, grid, args.torch_threads)
  print("\n| size | params | mode | geojax tok/s | transformers tok/s (threads) | ratio | geojax compile s |")
  print("|---|---|---|---|---|---|---|")
  for r in rows:
    print(f"| {r['size']} | {r['params'] / 1e6:.1f}M | {r['mode']} | {r['ours']:.1f} | {r['hf']:.1f} ({r['threads']}) "
          f"| "
          f"{r['ratio']:.2f}x | {r['compile_s']:.1f} |")


if __name__ == "__main__":
  main()
