"""The GRPO step at the main job's shape, as `geojax.train` runs it: wall time per `train_step` and its losses.

    HF_HUB_OFFLINE=1 python scripts/bench_grpo_step.py [--steps 12] [--warmup 2] [--data_dir runs/bench_grpo_data]
    # one-step off-policy, the rollout on a second CPU device of its own (each XLA:CPU device runs one program at
    # a time; two devices run two at once):
    XLA_FLAGS=--xla_force_host_platform_device_count=2 HF_HUB_OFFLINE=1 python scripts/bench_grpo_step.py \
        --override rollout.off_policy=True --override rollout.layout=decode --override rollout.devices=1

configs/default.py's settings (tiny model from the seed, built-in data, 8 prompts x G=8, 16 new tokens, beta 0.04)
except a smaller built-in dataset (data.n_train 512: the step reads 8 of them). Prints each step's seconds and
loss / kl / reward (the same for the same seed before and after a change that must not alter them), then the
median of the steps after --warmup. Run it from two trees (PYTHONPATH) to compare; it uses only the public API.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.environ.get("GEOJAX_TREE", ROOT))

import jax  # noqa: E402

from geojax import config as gconfig  # noqa: E402
from geojax import experiment  # noqa: E402
from geojax.config_schema import validate  # noqa: E402
from geojax.learners import GRPOLearner  # noqa: E402


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=12)
  parser.add_argument("--warmup", type=int, default=2)
  parser.add_argument("--data_dir", default=os.path.join(ROOT, "runs", "bench_grpo_data"))
  parser.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                      help="a config override (repeatable), e.g. grpo.beta=0 or rollout.off_policy=True")
  args = parser.parse_args()
  import geojax
  print(f"geojax from {os.path.dirname(geojax.__file__)}; jax {jax.__version__} on {jax.device_count()} "
        f"{jax.devices()[0].platform} devices; overrides {args.override}", flush=True)
  with tempfile.TemporaryDirectory() as workdir:
    config = gconfig.load(os.path.join(ROOT, "configs", "default.py"),
                          [f"workdir={workdir}", f"data.dir={args.data_dir}", "data.n_train=512", "data.n_test=16",
                           "log.progress=False", "log.tensorboard=False", "runtime.compilation_cache_dir=",
                           "grpo.beta=0.04", *args.override])  # BENCHMARKS.md's figures: with the reference
    validate(config)
    mesh = experiment.setup_runtime(config)
    tokenizer = experiment.load_tokenizer_for(config)
    with jax.set_mesh(mesh):
      model = experiment.build_model(config, tokenizer, mesh)
      records = experiment.load_records(config, "train")
      learner = GRPOLearner.from_config(config, model, tokenizer, mesh, records)
      times = []
      for step in range(args.steps):
        start = time.perf_counter()
        metrics = learner.train_step()
        times.append(time.perf_counter() - start)
        print(f"step {step + 1}: {times[-1]:.3f} s  loss {metrics['loss']:.9g}  kl {metrics.get('kl', 0.0):.9g}  "
              f"reward {metrics['reward']:.9g}", flush=True)
      learner.close()
  steady = times[args.warmup:]
  print(f"median step {statistics.median(steady):.3f} s (min {min(steady):.3f}) over {len(steady)} steps", flush=True)


if __name__ == "__main__":
  main()
