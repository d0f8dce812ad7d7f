"""One GRPO iteration on a toy text decoder: geojax's GRPO learner vs Tunix's (google-tunix 0.1.7), same weights.

    make bench-tunix [ARGS="--rounds 3 --steps 5"]
    HF_HUB_OFFLINE=1 python scripts/bench_tunix.py --python .venv-tunix/bin/python [--rounds 3] [--steps 5]

Tunix is not a geojax dependency: the measured processes of both sides run under `--python`, a venv with geojax
and Tunix (`python -m venv .venv-tunix && .venv-tunix/bin/pip install -e ".[tunix]"`: google-tunix 0.1.7 under the
core's jax 0.10.2 / flax 0.12.8 pins), so both sides run the same jax. The driver (any interpreter with the bench
extra: torch and transformers) builds the model once: the random tiny Qwen2.5-VL of scripts/bench_grpo.py at vocab
2,048 (hidden 128, 4 layers, 4 heads, 2 KV heads, MLP 512, untied head), whose language model is also written as a
Qwen2 checkpoint (the same tensors under Qwen2's names) that Tunix's own Qwen2 (`tunix.models.qwen2`) loads. Text
prompts only: Qwen2.5-VL's M-RoPE on text positions is Qwen2's RoPE, so both sides compute the same function.

Both train on 1 prompt (the chat-templated question, 76 tokens, tokenized by the same tokenizer; the bos id
prepended where Tunix would) x G=8 completions x 64 new tokens, temperature 1, no top-k / top-p, beta 0.04, one
update per rollout, PPO clip 0.2, k3 KL (Tunix's low_var_kl), loss sequence-mean-token-mean, AdamW (lr 1e-4, b1 0.9,
b2 0.98, clip 1.0), float32, reward = completion length in characters / 100. Tunix: `GRPOLearner` on an `RLCluster`
(vanilla rollout engine; actor, reference and rollout on one mesh), the prompt padded to its own length, KV cache
prompt + 64. geojax: `GRPOLearner` with a `RolloutSource` of the token batch, the vision tower frozen (no text
reaches it).

Every measurement is a fresh process, the sides alternating (which goes first flips every round), pinned to the
same n CPUs (XLA:CPU sizes its thread pool from them; --xla_cpu_multi_thread_eigen=false at n=1); each side has
its own persistent compilation cache, empty in round 1. Step 1 (compilation) is reported apart, then the median of
--steps steady steps, in wall-clock seconds and in CPU seconds of the process (all its threads: on a loaded machine
the wall clock also counts the time other jobs hold the CPU, the CPU seconds do not). Tunix's step is the time
between the ends of its global steps (rollout, reference log-probs, rewards, advantages, update, metrics); its
phases are timed by wrapping RLCluster.generate, get_ref_per_token_logps and update_actor (each waited for, as Tunix
waits anyway); geojax's as in scripts/bench_grpo.py.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_grpo import (BETA, GROUP, NEW_TOKENS, QUESTION, ROOT, SIZE, add_driver_arguments, compile_clock,  # noqa: E402
                        measure, prepare, reward, thread_settings, time_learner)

VOCAB, LR = 2048, 1e-4


def prepare_tunix(directory: str) -> str:
  """The language model of `directory` as a Qwen2 checkpoint (same tensors, Qwen2 names) in directory/qwen2."""
  out = os.path.join(directory, "qwen2")
  if os.path.exists(os.path.join(out, "model.safetensors")):
    return out
  from safetensors.numpy import load_file, save_file
  os.makedirs(out, exist_ok=True)
  tensors = {}
  for name in sorted(f for f in os.listdir(directory) if f.endswith(".safetensors")):
    for key, value in load_file(os.path.join(directory, name)).items():
      key = key.replace("model.language_model.", "model.")  # transformers 5 names; older ones are Qwen2's already
      if key == "lm_head.weight" or key.startswith("model.") and not key.startswith("model.visual."):
        tensors[key] = value
  save_file(tensors, os.path.join(out, "model.safetensors"))
  return out


def prompt_ids(directory: str) -> list[int]:
  """The chat-templated question's ids, with the bos id first where Tunix's sampler would prepend it."""
  from transformers import AutoTokenizer
  tok = AutoTokenizer.from_pretrained(directory)
  text = tok.apply_chat_template([{"role": "user", "content": QUESTION}], add_generation_prompt=True, tokenize=False)
  ids = tok.encode(text, add_special_tokens=False)
  bos = tok.bos_token_id
  return ([bos] if bos is not None and ids[:1] != [bos] else []) + ids, text


# ------------------------------------------------------------------------------------------------ geojax side
def run_geojax(directory: str, steps: int, cache_dir: str) -> dict:
  import numpy as np
  from geojax import config as gconfig, experiment
  from geojax.data.tokenizer import load_tokenizer
  from geojax.models import load_hf

  compile_s = compile_clock()
  config = gconfig.load(os.path.join(ROOT, "configs", "default.py"), [
      f"workdir={tempfile.mkdtemp(prefix='bench_tunix_')}", "grpo.batch_size=1", f"grpo.group_size={GROUP}",
      f"grpo.max_new_tokens={NEW_TOKENS}", f"grpo.beta={BETA}", "grpo.temperature=1.0", "grpo.top_k=0",
      "grpo.top_p=1.0", f"grpo.lr={LR}", "grpo.warmup_steps=0", "grpo.freeze_vision=True",
      f"runtime.compilation_cache_dir={cache_dir}", "log.progress=False", "log.tensorboard=False"])
  mesh = experiment.setup_runtime(config)
  model = load_hf(directory, mesh=mesh)
  tokenizer = load_tokenizer(directory)
  ids, _ = prompt_ids(directory)
  n = len(ids)
  batch = {"input_ids": np.asarray([ids], np.int32), "attention_mask": np.ones((1, n), np.int32),
           "position_ids": np.broadcast_to(np.arange(n, dtype=np.int32), (3, 1, n)).copy(), "pixel_values": None,
           "image_grid_thw": np.zeros((0, 3), np.int32), "example_mask": np.ones((1,), np.int32),
           "lat": np.zeros((1,), np.float32), "lon": np.zeros((1,), np.float32)}
  return dict(time_learner(config, model, tokenizer, mesh, batch, steps, compile_s), prompt_len=n)


# ------------------------------------------------------------------------------------------------ Tunix side
def run_tunix(directory: str, steps: int, cache_dir: str) -> dict:
  import jax
  import numpy as np
  import optax
  from transformers import AutoTokenizer
  from tunix.models.qwen2 import model as qwen2, params as qwen2_params
  from tunix.rl import rl_cluster as rl_cluster_lib
  from tunix.rl.grpo import grpo_learner
  from tunix.rl.rollout import base_rollout

  if cache_dir:
    jax.config.update("jax_compilation_cache_dir", cache_dir)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  compile_s = compile_clock()
  ids, text = prompt_ids(directory)
  hidden, heads = SIZE["hidden_size"], SIZE["num_heads"]
  cfg = qwen2.ModelConfig(num_layers=SIZE["num_layers"], vocab_size=VOCAB, embed_dim=hidden,
                          hidden_dim=SIZE["intermediate_size"], num_heads=heads, head_dim=hidden // heads,
                          num_kv_heads=SIZE["num_kv_heads"], rope_theta=1_000_000, norm_eps=1e-6,
                          use_tied_embedding=False)
  mesh = jax.make_mesh((1, 1), ("fsdp", "tp"), axis_types=(jax.sharding.AxisType.Auto,) * 2)  # as Tunix expects
  weights = prepare_tunix(directory)
  actor = qwen2_params.create_model_from_safe_tensors(weights, cfg, mesh)
  reference = qwen2_params.create_model_from_safe_tensors(weights, cfg, mesh)
  tokenizer = AutoTokenizer.from_pretrained(directory)
  optimizer = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(LR, b1=0.9, b2=0.98, weight_decay=0.0))
  cluster = rl_cluster_lib.RLCluster(
      actor=actor, reference=reference, tokenizer=tokenizer,
      cluster_config=rl_cluster_lib.ClusterConfig(
          role_to_mesh={rl_cluster_lib.Role.ACTOR: mesh, rl_cluster_lib.Role.REFERENCE: mesh,
                        rl_cluster_lib.Role.ROLLOUT: mesh},
          rollout_engine="vanilla", offload_to_cpu=False,
          training_config=rl_cluster_lib.RLTrainingConfig(
              actor_optimizer=optimizer, eval_every_n_steps=10 ** 6, max_steps=steps + 1),
          rollout_config=base_rollout.RolloutConfig(
              max_tokens_to_generate=NEW_TOKENS, max_prompt_length=len(ids), kv_cache_size=len(ids) + NEW_TOKENS,
              temperature=1.0, top_p=1.0, top_k=None)))
  learner = grpo_learner.GRPOLearner(
      rl_cluster=cluster, reward_fns=lambda prompts, completions, **_: reward(completions),
      algo_config=grpo_learner.GRPOConfig(num_generations=GROUP, num_iterations=1, beta=BETA, epsilon=0.2,
                                          kl_loss_mode="low_var_kl"))  # k3: geojax's grpo.kl default
  ends, phases = [], {"rollout": [], "reference": [], "update": []}

  def timed(fn, phase=None):
    def wrapper(*args, **kwargs):
      start = time.perf_counter()
      out = fn(*args, **kwargs)
      jax.block_until_ready(nnx_params(actor) if phase in (None, "update") else out)  # Tunix's waits, not more
      if phase is None:
        ends.append((time.perf_counter(), compile_s[0], time.process_time()))
      elif ends:  # phases of the steady steps
        phases[phase].append(time.perf_counter() - start)
      return out
    return wrapper

  learner._run_global_step = timed(learner._run_global_step)
  cluster.generate = timed(cluster.generate, "rollout")
  cluster.get_ref_per_token_logps = timed(cluster.get_ref_per_token_logps, "reference")
  cluster.update_actor = timed(cluster.update_actor, "update")
  data = [{"prompts": np.asarray([text]), "answer": np.asarray([""])} for _ in range(steps + 1)]  # as grain batches
  start = time.perf_counter()
  learner.train(data)
  times = [b[0] - a[0] for a, b in zip(ends, ends[1:])]
  cpu = [b[2] - a[2] for a, b in zip(ends, ends[1:])]
  return {"first": ends[0][0] - start, "first_compile": ends[0][1], "steps": times, "cpu": cpu, "prompt_len": len(ids),
          "phases": {k: statistics.median(v) for k, v in phases.items() if v}}


def nnx_params(model):
  from flax import nnx
  return nnx.state(model, nnx.Param)


# ------------------------------------------------------------------------------------------------ driver
def child(args) -> None:
  os.sched_setaffinity(0, set(sorted(os.sched_getaffinity(0))[:args.threads]))
  run = run_tunix if args.child == "tunix" else run_geojax
  print("RESULT " + json.dumps(run(args.dir, args.steps, args.cache_dir)), flush=True)


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  venv = os.path.join(ROOT, ".venv-tunix", "bin", "python")  # make bench-tunix's
  p.add_argument("--python", default=venv if os.path.exists(venv) else sys.executable,
                 help="interpreter of the measured processes (geojax + Tunix)")
  add_driver_arguments(p, "tunix", "XLA threads (and CPUs pinned), both sides", "fresh processes per side, alternating")
  args = p.parse_args()
  if args.child:
    return child(args)
  directory = os.path.join(args.workdir, f"vocab{VOCAB}")
  prepare(directory, VOCAB)
  prepare_tunix(directory)
  settings = thread_settings(args.threads)
  print(f"threads: {args.threads} (XLA_FLAGS={settings['XLA_FLAGS']}; pinned to {args.threads} CPU(s)); "
        f"interpreter {args.python}; load {os.getloadavg()}", flush=True)
  sides = args.sides.split(",")
  caches = {side: tempfile.mkdtemp(prefix=f"jax_cache_{side}_", dir=args.workdir) for side in sides}
  results = {side: [] for side in sides}
  for r in range(args.rounds):
    for side in (sides if r % 2 == 0 else sides[::-1]):
      res = measure(side, directory, args, caches[side], script=__file__, python=args.python)
      results[side].append(res)
      print(f"round {r + 1} {side:6s} step 1 {res['first']:6.2f}s ({'cold' if r == 0 else 'warm'} cache, compile "
            f"{res['first_compile']:.1f}s)  steady median {statistics.median(res['steps']):6.3f}s "
            f"(min {min(res['steps']):.3f}; CPU {statistics.median(res['cpu']):.3f}s)  load {os.getloadavg()[0]:.2f}"
            + ("; phases " + ", ".join(f"{k} {v:.3f}s" for k, v in res["phases"].items()) if "phases" in res else ""),
            flush=True)
  print(f"\nsummary ({args.threads} thread(s) each side; load {os.getloadavg()})")
  median = {side: statistics.median([s for res in results[side] for s in res["steps"]]) for side in sides}
  cpu = {side: statistics.median([s for res in results[side] for s in res["cpu"]]) for side in sides}
  for side in sides:
    print(f"{side:6s} {median[side]:.3f}s/step, CPU {cpu[side]:.3f}s/step (prompt {results[side][0]['prompt_len']} "
          f"tokens; step 1 by round: {[round(res['first'], 2) for res in results[side]]})")
  if len(sides) == 2:
    print(f"Tunix / geojax = {median['tunix'] / median['geojax']:.2f}x wall, {cpu['tunix'] / cpu['geojax']:.2f}x CPU")


if __name__ == "__main__":
  main()
