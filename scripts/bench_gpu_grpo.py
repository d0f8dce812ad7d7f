"""One GRPO step at Qwen2.5-VL-3B's shape on one GPU: rollout tokens/s against transformers' `generate` on the same
GPU, the reference pass, the update step and its MFU. Random weights, synthetic photos; one prepared run.

    PYTHONPATH=. python scripts/bench_gpu_grpo.py                  # 3B shapes (a GPU with >= 80 GiB)
    JAX_PLATFORMS=cpu python scripts/bench_gpu_grpo.py --size toy  # the same program on a toy model (CPU check)

The shape: --prompts photos (--image px square, so (px/14)^2 patches and a quarter as many image tokens), each
sampled --group times for --new-tokens tokens, no EOS (every row decodes the full length on both sides, so the
weights' values do not matter and both sides do the same work). transformers runs first (bf16, sdpa attention,
`generate` with min_new_tokens = max_new_tokens and num_return_sequences = group, as TRL calls it), is freed, then
geojax: the rollout exactly as the trainer calls it (float32 master weights, bf16 compute) and with the weights
cast to bf16 once per rollout, then the GRPO learner's own jitted reference pass and update (AdamW, grad_accum
micro-batches, beta 0.04, full remat), compiled ahead of time so that their FLOPs come from XLA's cost analysis.

MFU = model FLOPs / time / the chip's dense bf16 peak, with model FLOPs = 6 x trained text parameters x trained
tokens (each prompt once, as the prefix pass runs it, plus every completion) + 6 x D x V per completion token (LM
head) + 2 x vision parameters x patches (the vision tower's forward; its backward when trained counted too);
attention's FLOPs are left out. XLA's own count of the compiled program is printed too, but it counts a loop's body
once (the micro-batch and log-prob chunk loops), so it is no hardware-FLOPs figure.
Each phase is skipped, with a line that says so, when fewer than its estimate of --budget_s seconds are left.
"""
from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import sys
import tempfile
import time
import types

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # torch runs first in the same process
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import numpy as np  # noqa: E402

# Dense bf16 peak FLOP/s by device name (vendor data sheets, SXM parts, no sparsity).
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12, "cpu": None}
START = time.perf_counter()


def log(msg: str) -> None:
  print(f"[{time.perf_counter() - START:6.1f}s] {msg}", flush=True)


def architecture(size: str):
  from geojax.models import PRESETS, tiny_config
  if size == "3b":
    return PRESETS["qwen2.5-vl-3b"]
  return tiny_config("qwen2_5_vl", vocab_size=2048, hidden_size=128, num_layers=4, vision_depth=4,
                     image_token_id=250, video_token_id=251, vision_start_token_id=252, vision_end_token_id=253,
                     eos_token_id=254, bos_token_id=None)


def prompts(arch, n: int, image_px: int, seed: int = 0) -> dict:
  """Left-padded prompts `text <vision_start> <image>*k <vision_end> text` with one random photo each."""
  from geojax.data.mrope import rope_index
  rng = np.random.default_rng(seed)
  side = image_px // arch.vision.patch_size
  n_image = side * side // arch.vision.spatial_merge_size ** 2
  special = {arch.image_token_id, arch.video_token_id, arch.vision_start_token_id, arch.vision_end_token_id}
  rows = []
  for _ in range(n):
    text = [int(t) for t in rng.integers(0, min(arch.text.vocab_size, 240), 40) if int(t) not in special]
    cut = int(rng.integers(4, 12))
    rows.append(text[:cut] + [arch.vision_start_token_id] + [arch.image_token_id] * n_image
                + [arch.vision_end_token_id] + text[cut:])
  length = max(map(len, rows))
  ids = np.zeros((n, length), np.int32)
  mask = np.zeros((n, length), np.int32)
  for i, r in enumerate(rows):
    ids[i, length - len(r):], mask[i, length - len(r):] = r, 1
  grid = np.tile(np.array([[1, side, side]], np.int32), (n, 1))
  pixels = rng.standard_normal((n * side * side, arch.vision.patch_dim)).astype(np.float32)
  pos, _ = rope_index(ids, mask, grid, spatial_merge_size=arch.vision.spatial_merge_size,
                      image_token_id=arch.image_token_id)
  return dict(input_ids=ids, attention_mask=mask, position_ids=pos.astype(np.int32), pixel_values=pixels,
              image_grid_thw=grid, example_mask=np.ones((n,), np.float32), lat=np.zeros(n), lon=np.zeros(n))


def time_calls(fn, repeats: int) -> list[float]:
  out = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn()
    out.append(time.perf_counter() - t0)
  return out


# ---------------------------------------------------------------------------------------------- transformers
def bench_transformers(arch, batch: dict, args) -> dict:
  import torch
  from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
  device = "cuda" if torch.cuda.is_available() else "cpu"
  dtype = torch.bfloat16 if device == "cuda" else torch.float32
  config = Qwen2_5_VLConfig(**arch.to_hf())
  torch.manual_seed(0)
  with torch.device(device):
    model = Qwen2_5_VLForConditionalGeneration._from_config(config, dtype=dtype, attn_implementation="sdpa").eval()
  ids = torch.from_numpy(batch["input_ids"].astype(np.int64)).to(device)
  inputs = dict(input_ids=ids, attention_mask=torch.from_numpy(batch["attention_mask"].astype(np.int64)).to(device),
                pixel_values=torch.from_numpy(batch["pixel_values"]).to(device, dtype),
                image_grid_thw=torch.from_numpy(batch["image_grid_thw"].astype(np.int64)).to(device),
                mm_token_type_ids=(ids == arch.image_token_id).to(torch.int64))

  def generate(n_new):
    with torch.no_grad():
      out = model.generate(**inputs, max_new_tokens=n_new, min_new_tokens=n_new, do_sample=True, temperature=1.0,
                           top_k=0, top_p=1.0, num_return_sequences=args.group, pad_token_id=0,
                           eos_token_id=arch.text.eos_token_id)
    if device == "cuda":
      torch.cuda.synchronize()
    return out

  log("transformers: warm-up generate (8 tokens)")
  generate(8)
  times = time_calls(lambda: generate(args.new_tokens), args.repeats)
  tokens = args.prompts * args.group * args.new_tokens
  result = {"seconds": times, "tokens_per_s": tokens / min(times)}
  log(f"transformers generate: {min(times):.2f} s best of {times} -> {result['tokens_per_s']:.0f} tokens/s")
  return result


def free_torch_memory() -> None:
  import torch
  gc.collect()
  if torch.cuda.is_available():
    torch.cuda.empty_cache()


# ---------------------------------------------------------------------------------------------- geojax
def grpo_config(args, workdir: str, preset: str):
  from geojax.config_schema import base_config
  c = base_config()
  c.workdir = workdir
  c.model.preset = preset
  c.model.dtype = "bfloat16"
  c.model.param_dtype = "float32"
  g = c.grpo
  g.batch_size, g.group_size, g.grad_accum = args.prompts, args.group, args.grad_accum
  g.max_new_tokens, g.beta = args.new_tokens, 0.04
  g.freeze_vision = args.freeze_vision
  c.log.progress = False
  return c


def count_params(tree) -> int:
  import jax
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))


def bench_geojax(arch, batch: dict, args, results: dict) -> None:
  import jax
  import jax.numpy as jnp
  from flax import nnx
  from geojax import runtime
  from geojax.learners.grpo import GRPOLearner
  from geojax.learners.rollout import PROMPT_KEYS, Sampled
  from geojax.data.batch import put_batch
  from geojax.models import QwenVL
  from geojax.models.sharding import param_shardings
  from geojax.sampling import Sampler

  device = jax.devices()[0]
  results["device"] = device.device_kind
  log(f"geojax on {device.device_kind} (jax {jax.__version__})")
  workdir = tempfile.mkdtemp(prefix="bench_gpu_grpo_")
  config = grpo_config(args, workdir, "tiny")
  mesh = runtime.make_mesh(dict(config.runtime.mesh))
  model = QwenVL(dataclasses.replace(arch, remat_policy="full"), dtype=jnp.bfloat16, param_dtype=jnp.float32,
                 rngs=nnx.Rngs(0))
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  params = runtime.place(params, param_shardings(params, mesh))
  model = nnx.merge(graphdef, params, rest)
  lm = params["language_model"]
  n_text = count_params(lm) - count_params(lm["embed_tokens"]) - (count_params(lm["lm_head"]) if "lm_head" in lm
                                                                  else 0)
  n_vision = count_params(params["visual"])
  results["params"] = {"text_non_embedding": n_text, "vision": n_vision, "all": count_params(params)}
  log(f"model: {results['params']['all'] / 1e9:.2f} B parameters")

  rows, n_new = args.prompts * args.group, args.new_tokens
  prompt = {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids", "pixel_values")}
  sampler = Sampler(model, max_new_tokens=n_new, temperature=1.0, eos_token_id=None, pad_token_id=0,
                    num_samples=args.group)

  def rollout(p, key):
    out = sampler(p, prompt["input_ids"], prompt["attention_mask"], prompt["pixel_values"], batch["image_grid_thw"],
                  position_ids=prompt["position_ids"], rng=key)
    jax.block_until_ready(out.tokens)
    return out

  def measure_rollout(name, p):
    t0 = time.perf_counter()
    out = rollout(p, jax.random.key(0))
    first = time.perf_counter() - t0
    times = time_calls(lambda: rollout(p, jax.random.key(1)), args.repeats)
    entry = {"first_call_s": first, "seconds": times, "tokens_per_s": rows * n_new / min(times)}
    results.setdefault("rollout", {})[name] = entry
    log(f"geojax rollout ({name}): first call {first:.1f} s (compile), best {min(times):.2f} s of {times} -> "
        f"{entry['tokens_per_s']:.0f} tokens/s")
    return out

  if budget_left() > 60:
    out = measure_rollout("float32 master weights, as the trainer calls it", params)
  else:
    log("skipped: rollout")
    return
  if budget_left() > args.update_estimate_s:
    learner = GRPOLearner(config, model, mesh, types.SimpleNamespace(loader=None), gaz=object())
    sampled = Sampled(batch, put_batch(batch, mesh, PROMPT_KEYS), out.tokens, out.lengths, out.logprobs)
    grid, prompt_len = sampled.shape(args.group)
    t0 = time.perf_counter()
    ref = learner.reference.logprobs(sampled)
    jax.block_until_ready(ref)
    ref_first = time.perf_counter() - t0
    ref_times = time_calls(lambda: jax.block_until_ready(learner.reference.logprobs(sampled)), args.repeats)
    results["reference"] = {"first_call_s": ref_first, "seconds": ref_times}
    log(f"reference pass: first call {ref_first:.1f} s, best {min(ref_times):.2f} s")
    advantages = runtime.put_global(np.random.default_rng(0).standard_normal(rows).astype(np.float32), mesh)
    call_args = (sampled.prompt, sampled.tokens, sampled.lengths, advantages, ref, sampled.logprobs)
    t0 = time.perf_counter()
    compiled = learner.update.lower(learner.state, *call_args, grid=grid, prompt_len=prompt_len).compile()
    compile_s = time.perf_counter() - t0
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    hw_flops = float(cost.get("flops", 0.0)) if cost else 0.0
    memory = compiled.memory_analysis()

    def update():
      learner.state, metrics = compiled(learner.state, *call_args)
      jax.block_until_ready(metrics)
    update()  # the first run allocates
    times = time_calls(update, args.repeats)
    step = min(times)
    trained_tokens = args.prompts * prompt_len + rows * n_new
    text_cfg = arch.text
    model_flops = (6 * n_text * trained_tokens + 6 * text_cfg.hidden_size * text_cfg.vocab_size * rows * n_new
                   + (2 if args.freeze_vision else 6) * n_vision * batch["pixel_values"].shape[0])
    peak = next((v for k, v in PEAK_BF16.items() if k in device.device_kind), None)
    entry = {"compile_s": compile_s, "seconds": times, "model_flops": model_flops, "xla_flops": hw_flops,
             "peak_flops": peak, "temp_gib": getattr(memory, "temp_size_in_bytes", 0) / 2 ** 30,
             "argument_gib": getattr(memory, "argument_size_in_bytes", 0) / 2 ** 30}
    if peak:
      entry["mfu"] = model_flops / step / peak
    results["update"] = entry
    mfu = f", MFU {entry['mfu']:.1%}" if peak else ""
    log(f"update step: compile {compile_s:.1f} s, best {step:.2f} s of {times}{mfu}; "
        f"{model_flops / 1e12:.0f} model TFLOPs, {hw_flops / 1e12:.0f} XLA TFLOPs (loop bodies once), "
        f"temp {entry['temp_gib']:.1f} GiB")
    params = learner.state["params"]  # the update donated the arrays it started from
    del learner, compiled
    gc.collect()
  else:
    log("skipped: reference pass and update (budget)")
  if budget_left() > 60:
    t0 = time.perf_counter()
    bf16 = jax.block_until_ready(jax.tree.map(lambda x: x.astype(jnp.bfloat16), params))
    log(f"cast to bf16 in {time.perf_counter() - t0:.2f} s")
    measure_rollout("weights cast to bf16 once per rollout", bf16)
  else:
    log("skipped: bf16 rollout (budget)")


def budget_left() -> float:
  return ARGS.budget_s - (time.perf_counter() - START)


def main(argv=None) -> None:
  global ARGS
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--size", default="3b", choices=["3b", "toy"])
  p.add_argument("--prompts", type=int, default=8)
  p.add_argument("--group", type=int, default=8)
  p.add_argument("--new_tokens", type=int, default=256)
  p.add_argument("--image", type=int, default=448, help="square photo side in pixels (a multiple of 28)")
  p.add_argument("--grad_accum", type=int, default=4)
  p.add_argument("--freeze_vision", action="store_true")
  p.add_argument("--repeats", type=int, default=2)
  p.add_argument("--budget_s", type=float, default=480.0)
  p.add_argument("--update_estimate_s", type=float, default=150.0)
  p.add_argument("--phases", default="transformers,geojax")
  p.add_argument("--json", default="", help="also write the results here")
  ARGS = args = p.parse_args(argv)
  arch = architecture(args.size)
  batch = prompts(arch, args.prompts, args.image)
  results = {"args": vars(args), "prompt_len": int(batch["input_ids"].shape[1])}
  log(f"{args.size}: {args.prompts} prompts x G={args.group}, prompt {results['prompt_len']} tokens "
      f"({batch['pixel_values'].shape[0]} patches), {args.new_tokens} new tokens")
  phases = args.phases.split(",")
  if "transformers" in phases:
    results["transformers"] = bench_transformers(arch, batch, args)
    free_torch_memory()  # the model went with the call
  if "geojax" in phases:
    bench_geojax(arch, batch, args, results)
  hf = results.get("transformers", {}).get("tokens_per_s")
  for name, entry in results.get("rollout", {}).items():
    if hf:
      entry["vs_transformers"] = entry["tokens_per_s"] / hf
      log(f"rollout ratio ({name}): {entry['vs_transformers']:.2f}x transformers' generate")
  line = json.dumps(results, default=float)
  if args.json:
    with open(args.json, "w") as f:
      f.write(line + "\n")
  print(line)


if __name__ == "__main__":
  main()
