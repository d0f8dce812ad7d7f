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


def assert_same_first_adam_step(state, other, *, atol: float, grad_rtol: float = 1e-5, b1: float = 0.9,
                                eps: float = 1e-8):
  """Two learner states after one AdamW step from the same start, e.g. with different grad_accum: the gradients
  (Adam's first moment, g (1 - b1)) agree to float32 rounding of each tensor's largest entry, and the parameters to
  atol wherever |g| >= 10 eps. Below that, Adam's step lr g / (|g| + eps) turns the gradients' rounding into
  lr x rounding / eps (a GRPO entry with g = 4.0e-10 in one run and 4.7e-10 in the other moved 2.2e-7 apart at
  lr 3.3e-5, where the entries with |g| >= 1e-7 agree to 4e-9): those entries are held to their gradients only."""
  import jax
  import numpy as np
  import optax
  is_adam = lambda x: isinstance(x, optax.ScaleByAdamState)
  first_moment = lambda s: [x.mu for x in jax.tree.leaves(s["opt_state"], is_leaf=is_adam) if is_adam(x)]
  grads = [[np.asarray(g) / (1 - b1) for g in jax.tree.leaves(first_moment(s))] for s in (state, other)]
  params = [[np.asarray(p) for p in jax.tree.leaves(s["params"])] for s in (state, other)]
  assert len(grads[0]) == len(params[0]), "one Adam first moment per parameter"
  for g, h, p, q in zip(*grads, *params):
    np.testing.assert_allclose(h, g, rtol=0, atol=grad_rtol * np.abs(g).max())
    steady = np.minimum(np.abs(g), np.abs(h)) >= 10 * eps
    np.testing.assert_allclose(q[steady], p[steady], rtol=0, atol=atol)
