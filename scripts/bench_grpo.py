"""One GRPO iteration: geojax's GRPO learner vs TRL's GRPOTrainer, same model, tokenizer, prompt, image and settings.

    HF_HUB_OFFLINE=1 python scripts/bench_grpo.py [--vocabs 2048,151936] [--threads 1] [--rounds 3] [--steps 5]

Needs the bench extra (`pip install -e ".[test,bench]"`: torch, transformers, TRL). For each vocabulary size a random
tiny Qwen2.5-VL is built in transformers and saved with save_pretrained, with the processor files of a geojax
tokenizer (tiny for 2,048, qwen2 for 151,936): TRL reads the directory, geojax `load_hf`s it. Both sides train on
1 image prompt x G=8 completions x 64 new tokens (temperature 1, no top-k / top-p), beta 0.04, one update per
rollout, float32, a trivial reward (completion length in characters / 100). geojax's prompt batch is the processor's
output for the same chat messages and image that TRL's dataset row holds.

Every measurement is a fresh process, the two sides alternating (which goes first flips every round), pinned to the
same CPUs with the same thread count: torch.set_num_threads(n), and for XLA the n CPUs the process is pinned to
(XLA:CPU sizes its thread pool from the CPU affinity; --xla_cpu_multi_thread_eigen=false at n=1). Per process:
step 1 (compilation in geojax, warm-up in torch) is reported apart, then --steps steady steps; geojax's phases
(rollout, reference, host scoring, update) are timed on --steps more steps by blocking on each phase's outputs (here
only: the learner itself never blocks between them).
geojax's persistent compilation cache starts empty in round 1 (cold) and is reused after (warm).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE = dict(hidden_size=128, num_layers=4, num_heads=4, num_kv_heads=2, intermediate_size=512, vision_hidden=64,
            vision_depth=2, vision_heads=2, tie_word_embeddings=False)
GROUP, NEW_TOKENS, BETA, IMAGE_SIZE = 8, 64, 0.04, 112
QUESTION = "Where was this photo taken? Answer with the latitude and longitude."


def thread_settings(n: int) -> dict:
  """Environment of a measured process: n threads for torch (OpenMP); XLA takes its n from the affinity `child`
  sets (XLA_FLAGS has no thread-count flag: an `intra_op_parallelism_threads=n` there is read as no flag at all,
  and XLA stops reading the flags at it)."""
  eigen = "false" if n == 1 else "true"
  return {"OMP_NUM_THREADS": str(n), "MKL_NUM_THREADS": str(n), "TOKENIZERS_PARALLELISM": "false",
          "XLA_FLAGS": f"--xla_cpu_multi_thread_eigen={eigen}",
          "JAX_PLATFORMS": "cpu", "HF_HUB_OFFLINE": "1"}


# ------------------------------------------------------------------------------------------------ shared inputs
def messages():
  return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}]


def image():
  import numpy as np
  from PIL import Image
  pixels = np.random.default_rng(0).integers(0, 256, (IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
  return Image.fromarray(pixels)


def reward(texts) -> list[float]:
  return [len(t) / 100.0 for t in texts]


def prepare(directory: str, vocab: int) -> None:
  """The random model, its processor files and the tokenizer in `directory` (skipped when already there)."""
  if os.path.exists(os.path.join(directory, "ready")):
    return
  from geojax.data.tokenizer import load_tokenizer
  from geojax.models import load_hf, testing
  from geojax.models.hf_processor import save_hf_processor
  tokenizer = load_tokenizer("qwen2" if vocab > 151656 else "tiny")
  config = testing.hf_config("qwen2_5_vl", vocab_size=vocab, **SIZE)
  config.image_token_id, config.vision_start_token_id = tokenizer.image_pad_id, tokenizer.vision_start_id
  config.vision_end_token_id, config.video_token_id = tokenizer.vision_end_id, tokenizer.token_to_id("<|video_pad|>")
  config.text_config.eos_token_id = config.text_config.bos_token_id = tokenizer.eos_id
  testing.build_hf_model(config, directory)
  save_hf_processor(directory, tokenizer, load_hf(directory).config, min_pixels=56 * 56, max_pixels=448 * 448)
  open(os.path.join(directory, "ready"), "w").close()


def load_processor(directory: str):
  """AutoProcessor.from_pretrained(directory) with Pillow's resize for images (geojax's).

  transformers 5 gives every Qwen-VL processor a video processor, which needs torchvision (not installed: the CPU
  torch pin has no matching build here); a bare VideoProcessorMixin stands in, which an image prompt never calls.
  """
  import importlib.util
  from transformers import AutoProcessor
  if importlib.util.find_spec("torchvision") is None:
    from transformers.models.auto import video_processing_auto
    from transformers.processing_utils import ProcessorMixin
    from transformers.video_processing_utils import VideoProcessorMixin
    check = ProcessorMixin.check_argument_for_proper_class

    def check_or_stand_in(self, name, arg):
      return VideoProcessorMixin if type(arg) is VideoProcessorMixin else check(self, name, arg)
    video_processing_auto.AutoVideoProcessor.from_pretrained = classmethod(lambda cls, *a, **k: VideoProcessorMixin())
    ProcessorMixin.check_argument_for_proper_class = check_or_stand_in
    return AutoProcessor.from_pretrained(directory)
  from transformers import AutoImageProcessor
  processor = AutoProcessor.from_pretrained(directory)
  processor.image_processor = AutoImageProcessor.from_pretrained(directory, backend="pil")
  return processor


def processor_batch(directory: str):
  """The processor's tensors for the prompt, as TRL computes them."""
  processor = load_processor(directory)
  text = processor.apply_chat_template(messages(), add_generation_prompt=True, tokenize=False)
  return processor, processor(text=[text], images=[image()], return_tensors="np")


# ------------------------------------------------------------------------------------------------ geojax side
def run_geojax(directory: str, steps: int, cache_dir: str) -> dict:
  import numpy as np
  from geojax import config as gconfig, experiment
  from geojax.data.mrope import rope_index
  from geojax.data.tokenizer import load_tokenizer
  from geojax.models import load_hf

  compile_s = compile_clock()
  workdir = tempfile.mkdtemp(prefix="bench_grpo_")
  config = gconfig.load(os.path.join(ROOT, "configs", "default.py"), [
      f"workdir={workdir}", "grpo.batch_size=1", f"grpo.group_size={GROUP}", f"grpo.max_new_tokens={NEW_TOKENS}",
      f"grpo.beta={BETA}", "grpo.temperature=1.0", "grpo.top_k=0", "grpo.top_p=1.0",
      f"runtime.compilation_cache_dir={cache_dir}", "log.progress=False", "log.tensorboard=False"])
  mesh = experiment.setup_runtime(config)
  _, inputs = processor_batch(directory)
  model = load_hf(directory, mesh=mesh)  # on the mesh, as geojax.train loads it
  tokenizer = load_tokenizer(directory)
  ids, mask = inputs["input_ids"].astype(np.int32), inputs["attention_mask"].astype(np.int32)
  grid = inputs["image_grid_thw"].astype(np.int32)
  pos, _ = rope_index(ids, mask, grid, spatial_merge_size=2, image_token_id=model.config.image_token_id)
  batch = {"input_ids": ids, "attention_mask": mask, "position_ids": pos.astype(np.int32),
           "pixel_values": inputs["pixel_values"].astype(np.float32), "image_grid_thw": grid,
           "example_mask": np.ones((1,), np.int32), "lat": np.zeros((1,), np.float32),
           "lon": np.zeros((1,), np.float32)}
  return dict(time_learner(config, model, tokenizer, mesh, batch, steps, compile_s), prompt_len=int(ids.shape[1]))


def compile_clock() -> list:
  """[seconds]: JAX's compile time so far in this process, kept up to date by a monitoring listener."""
  import jax
  total = [0.0]
  jax.monitoring.register_event_duration_secs_listener(
      lambda event, secs, **_: total.__setitem__(0, total[0] + secs)
      if event.startswith("/jax/core/compile/") else None)
  return total


def time_learner(config, model, tokenizer, mesh, batch: dict, steps: int, compile_s: list) -> dict:
  """geojax's GRPO learner on `batch` (one prompt, repeated) as a user runs it: step 1 (and the compile time in it),
  then `steps` steady steps (wall and CPU seconds) and their phases (`phase_times`)."""
  import itertools
  import jax
  from geojax.learners import GRPOLearner, RolloutSource, as_reward, policy_sampler
  with jax.set_mesh(mesh):
    source = RolloutSource(itertools.repeat(batch), policy_sampler(model, config.grpo, tokenizer),
                           as_reward(lambda texts, batch, group: reward(texts)), tokenizer, GROUP,
                           jax.random.key(config.seed), mesh)
    learner = GRPOLearner(config, model, mesh, source)
    start = time.perf_counter()
    learner.train_step()
    first, first_compile = time.perf_counter() - start, compile_s[0]
    times, cpu = [], []
    for _ in range(steps):
      start, start_cpu = time.perf_counter(), time.process_time()
      learner.train_step()
      times.append(time.perf_counter() - start)
      cpu.append(time.process_time() - start_cpu)
    phases = phase_times(learner, steps, config, mesh)
  return {"first": first, "first_compile": first_compile, "steps": times, "cpu": cpu, "phases": phases}


def phase_times(learner, steps: int, config, mesh) -> dict:
  """Median seconds of train_step's phases over `steps` steps, each phase waited for (here only: the learner
  itself never blocks between them)."""
  import jax
  import numpy as np
  from geojax import runtime
  from geojax.learners.rollout import rollout_metrics
  group = learner.group
  phases = {k: [] for k in ("rollout", "reference", "host scoring", "update")}
  for _ in range(steps):
    t0 = time.perf_counter()
    sampled = learner.rollout.sample(learner.state["params"], learner.step)
    jax.block_until_ready(sampled.tokens)
    t1 = time.perf_counter()
    ref = jax.block_until_ready(learner.reference.logprobs(sampled))
    t2 = time.perf_counter()
    rollout = learner.rollout.score(sampled)
    advantages = np.where(rollout.example_rows(group), learner.advantage(rollout, group), 0.0).astype(np.float32)
    rollout_metrics(rollout, group, config.data.answer, learner.gaz)
    t3 = time.perf_counter()
    learner.state, metrics = learner.update(learner.state, sampled.prompt, sampled.tokens, sampled.lengths,
                                            runtime.put_global(advantages, mesh), ref, sampled.logprobs,
                                            *sampled.shape(group))
    jax.block_until_ready(metrics)
    t4 = time.perf_counter()
    for name, a, b in (("rollout", t0, t1), ("reference", t1, t2), ("host scoring", t2, t3), ("update", t3, t4)):
      phases[name].append(b - a)
  return {k: statistics.median(v) for k, v in phases.items()}


# ------------------------------------------------------------------------------------------------ TRL side
def run_trl(directory: str, steps: int) -> dict:
  import datasets
  import torch
  import transformers
  from trl import GRPOConfig, GRPOTrainer

  torch.manual_seed(0)
  processor, inputs = processor_batch(directory)
  model = transformers.AutoModelForImageTextToText.from_pretrained(directory, dtype=torch.float32)
  data = datasets.Dataset.from_dict({"prompt": [messages()], "image": [image()]})
  ends = []

  class Clock(transformers.TrainerCallback):
    def on_train_begin(self, args, state, control, **kwargs):
      ends.append(time.perf_counter())

    def on_step_end(self, args, state, control, **kwargs):
      ends.append(time.perf_counter())

  args = GRPOConfig(output_dir=tempfile.mkdtemp(prefix="bench_trl_"), per_device_train_batch_size=GROUP,
                    num_generations=GROUP, max_completion_length=NEW_TOKENS, beta=BETA, temperature=1.0, top_k=0,
                    top_p=1.0, max_steps=steps + 1, use_vllm=False, bf16=False, fp16=False, use_cpu=True,
                    report_to="none", save_strategy="no", eval_strategy="no", logging_steps=10 ** 6,
                    push_to_hub=False, dataloader_num_workers=0, gradient_checkpointing=False, seed=0)
  trainer = GRPOTrainer(model=model, reward_funcs=lambda completions, **_: reward(
      [c if isinstance(c, str) else c[-1]["content"] for c in completions]), args=args, train_dataset=data,
      processing_class=processor, callbacks=[Clock()])
  trainer.train()
  times = [b - a for a, b in zip(ends, ends[1:])]
  return {"first": times[0], "steps": times[1:], "prompt_len": int(inputs["input_ids"].shape[1])}


def child(args) -> None:
  n = args.threads
  os.sched_setaffinity(0, set(sorted(os.sched_getaffinity(0))[:n]))
  if args.child == "trl":
    import torch
    torch.set_num_threads(n)
    result = run_trl(args.dir, args.steps)
  else:
    result = run_geojax(args.dir, args.steps, args.cache_dir)
  print("RESULT " + json.dumps(result), flush=True)


# ------------------------------------------------------------------------------------------------ driver
def measure(side: str, directory: str, args, cache_dir: str, script: str = __file__,
            python: str = sys.executable) -> dict:
  """One side's figures from a fresh process (`python script --child side ...`, this bench's or bench_tunix's),
  with the stated thread settings: its last RESULT line."""
  env = dict(os.environ, **thread_settings(args.threads), PYTHONPATH=ROOT)
  cmd = [python, os.path.abspath(script), "--child", side, "--dir", directory, "--threads", str(args.threads),
         "--steps", str(args.steps), "--cache-dir", cache_dir]
  out = subprocess.run(cmd, env=env, capture_output=True, text=True)
  lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
  if out.returncode or not lines:
    raise RuntimeError(f"{side} failed ({out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-6000:]}")
  return json.loads(lines[-1][len("RESULT "):])


def add_driver_arguments(p: argparse.ArgumentParser, peer: str, threads_help: str, rounds_help: str) -> None:
  """The flags of an alternating geojax-against-`peer` bench (this one's and bench_tunix's), with the hidden ones
  its child processes take."""
  p.add_argument("--threads", type=int, default=1, help=threads_help)
  p.add_argument("--rounds", type=int, default=3, help=rounds_help)
  p.add_argument("--steps", type=int, default=5, help="steady steps per process (after step 1)")
  p.add_argument("--sides", default=f"geojax,{peer}")
  p.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "geojax_bench_grpo"))
  p.add_argument("--child", choices=("geojax", peer), help=argparse.SUPPRESS)
  p.add_argument("--dir", help=argparse.SUPPRESS)
  p.add_argument("--cache-dir", default="", help=argparse.SUPPRESS)


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--vocabs", default="2048,151936")
  add_driver_arguments(p, "trl", "torch and XLA threads (and CPUs pinned), both sides",
                       "fresh processes per side and vocabulary, alternating")
  args = p.parse_args()
  if args.child:
    return child(args)
  settings = thread_settings(args.threads)
  print(f"threads: {args.threads} (torch.set_num_threads({args.threads}); XLA_FLAGS={settings['XLA_FLAGS']}; "
        f"OMP_NUM_THREADS={args.threads}; pinned to {args.threads} CPU(s)); load {os.getloadavg()}", flush=True)
  sides = args.sides.split(",")
  summary = []
  for vocab in [int(v) for v in args.vocabs.split(",")]:
    directory = os.path.join(args.workdir, f"vocab{vocab}")
    prepare(directory, vocab)
    cache_dir = tempfile.mkdtemp(prefix="jax_cache_", dir=args.workdir)  # empty: round 1 compiles cold
    results = {side: [] for side in sides}
    for r in range(args.rounds):
      for side in (sides if r % 2 == 0 else sides[::-1]):
        res = measure(side, directory, args, cache_dir)
        results[side].append(res)
        extra = ""
        if side == "geojax":
          extra = (f" ({'cold' if r == 0 else 'warm'} cache, compile {res['first_compile']:.1f}s); phases "
                   + ", ".join(f"{k} {v:.3f}s" for k, v in res["phases"].items()))
        print(f"vocab {vocab:6d} round {r + 1} {side:6s} step 1 {res['first']:6.2f}s  steady median "
              f"{statistics.median(res['steps']):6.3f}s (min {min(res['steps']):.3f}){extra}", flush=True)
    row = {"vocab": vocab, "prompt_len": results[sides[0]][0]["prompt_len"]}
    for side in sides:
      row[side] = statistics.median([s for res in results[side] for s in res["steps"]])
      row[side + "_first"] = [round(res["first"], 2) for res in results[side]]
    if "geojax" in sides:
      row["phases"] = {k: statistics.median([res["phases"][k] for res in results["geojax"]])
                       for k in results["geojax"][0]["phases"]}
    summary.append(row)
  print(f"\nsummary ({args.threads} thread(s) each side; load {os.getloadavg()})")
  for row in summary:
    line = f"vocab {row['vocab']:6d} (prompt {row['prompt_len']} tokens):"
    for side in sides:
      line += f" {side} {row[side]:.3f}s/step (step 1 by round: {row[side + '_first']})"
    if len(sides) == 2:
      line += f"  TRL / geojax = {row['trl'] / row['geojax']:.2f}x"
    print(line)
    if "phases" in row:
      print("    geojax phases: " + ", ".join(f"{k} {v:.3f}s" for k, v in row["phases"].items()))


if __name__ == "__main__":
  main()
