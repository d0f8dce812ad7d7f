"""Shared pieces of the train / eval tests: a very small run config over a small built-in dataset."""
from __future__ import annotations

import json
import os

from geojax import config as gconfig

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_CONFIG = os.path.join(ROOT, "configs", "default.py")
# A command line's environment as a user has it: one CPU device (the suite forces 8 for its sharding tests) and no
# XLA_FLAGS of ours, so the entry point pins XLA:CPU's numerics itself (geojax.runtime.numerics).
USER_ENV = {**{k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}, "JAX_PLATFORMS": "cpu"}


def tiny_overrides(workdir: str, data_dir: str, **extra) -> list[str]:
  """Overrides of configs/default.py:ci that make a run take seconds: 1-layer model, few short steps."""
  values = {
      "workdir": workdir, "data.dir": data_dir, "data.n_train": 64, "data.n_test": 16,
      "model.tiny.hidden_size": 32, "model.tiny.num_layers": 1, "model.tiny.vision_depth": 1,
      "sft.steps": 4, "sft.batch_size": 8, "sft.max_target_len": 16, "sft.warmup_steps": 1,
      "grpo.steps": 3, "grpo.batch_size": 2, "grpo.group_size": 4, "grpo.max_new_tokens": 8, "grpo.beta": 0.04,
      "eval.num_examples": 8, "eval.batch_size": 8, "eval.max_new_tokens": 8, "eval.plot": False,
      "eval_before": False, "eval.at_stage_end": False, "checkpoint.every": 1, "checkpoint.keep": 10,
      "log.progress": False, "log.tensorboard": False,
  }
  values.update(extra)
  return [f"{k}={v}" for k, v in values.items()]


def tiny_config(workdir: str, data_dir: str, **extra):
  return gconfig.load(f"{DEFAULT_CONFIG}:ci", tiny_overrides(workdir, data_dir, **extra))


def losses(workdir: str, stage: str, key: str = "loss") -> dict[int, float]:
  """step -> metric from a stage's metrics.jsonl (the last line of a step wins, as after a resume)."""
  out = {}
  with open(os.path.join(workdir, stage, "metrics.jsonl")) as f:
    for line in f:
      row = json.loads(line)
      out[row["step"]] = row.get(key)
  return out
