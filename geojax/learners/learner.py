"""What every learner shares: the functional train state, optimizer, checkpoints and exact resume, the training
loop with its NaN guard, metric logging and periodic evaluation.

A learner owns its data loader (the only reader of it), so the position saved with a checkpoint always comes
after every batch a step consumed. Subclasses implement `train_step()`: read data, update `self.state`, return
host metrics.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from geojax import runtime
from geojax.learners.optim import learning_rate_schedule, make_optimizer
from geojax.models import lora
from geojax.runtime.metrics import summary
from geojax.sft import trainable_mask

# (model, label, out_dir or None) -> metrics; how a learner evaluates every `eval.every` steps
EvaluateFn = Callable[..., dict]

LOG_KEYS = ("loss", "grad_norm", "reward", "kl", "clip_frac", "response_len", "nll", "median_km", "lr")


class Learner:
  """Train state {params, opt_state, step} of a model, trained by `fit()` for `config[name].steps` steps.

  Checkpoints (params, optimizer state, step, data position) go to <workdir>/<name>/checkpoints, one JSON line
  of metrics per step to <workdir>/<name>/metrics.jsonl, scalars to `writer` under "<name>/".
  """

  def __init__(self, name: str, config: ml_collections.ConfigDict, model, mesh, loader,
               writer: runtime.MetricWriter | None = None):
    self.name, self.config, self.sc, self.mesh, self.loader = name, config, config[name], mesh, loader
    self.writer = writer or runtime.MetricWriter(None)
    self.dir = os.path.join(config.workdir, name)
    os.makedirs(self.dir, exist_ok=True)
    # under LoRA the params are the adapters only (optimizer state and checkpoints too); the base stays in `rest`
    self.graphdef, params, self.rest = lora.split_params(model)
    self.trainable = trainable_mask(params, freeze_vision=self.sc.freeze_vision)
    self.tx = make_optimizer(self.sc, self.trainable)
    self.state = {"params": params, "opt_state": self.tx.init(params), "step": jnp.zeros((), jnp.int32)}
    self.checkpoints = runtime.Checkpointer(os.path.join(self.dir, "checkpoints"), config.checkpoint.keep,
                                            config.checkpoint.async_save)
    self.schedule = learning_rate_schedule(self.sc)
    self.history = os.path.join(self.dir, "metrics.jsonl")  # one JSON line per step (process 0)

  # ---------------------------------------------------------------- state
  def model(self, params=None):
    """The policy as a model object (the current parameters unless `params` is given)."""
    return nnx.merge(self.graphdef, self.state["params"] if params is None else params, self.rest)

  def train_model(self, params, step):
    """The policy in a training loss: `model(params)`, with LoRA dropout (if any) keyed by the seed and step."""
    return lora.with_dropout(self.model(params), jax.random.fold_in(jax.random.key(self.config.seed), step))

  @property
  def step(self) -> int:
    return int(self.state["step"])

  @property
  def done(self) -> bool:
    return self.step >= self.sc.steps

  def restore(self) -> bool:
    """Loads the latest complete checkpoint (state and data position); False if there is none."""
    latest = self.checkpoints.latest_step()
    if latest is None:
      return False
    restored, data_state, _ = self.checkpoints.restore(
        {"params": self.state["params"], "train": {"opt_state": self.state["opt_state"], "step": self.state["step"]}})
    self.state = {"params": restored["params"], **restored["train"]}
    if data_state is not None and self.loader is not None:
      self.loader.set_state(data_state)
    self.writer.log(f"[{self.name}] resumed from step {latest}")
    return True

  def save(self, record: dict) -> None:
    items = {"params": self.state["params"],
             "train": {"opt_state": self.state["opt_state"], "step": self.state["step"]}, **self.extra_state()}
    self.checkpoints.save(self.step, items, data_state=self.data_state(), record=record)

  def extra_state(self) -> dict:
    """Named array trees a learner saves beside its train state (restored by its own `restore`)."""
    return {}

  def data_state(self):
    """The loader position a checkpoint resumes from."""
    return self.loader.get_state()

  # ---------------------------------------------------------------- training
  def train_step(self) -> dict[str, float]:
    """One optimizer step on freshly read data; returns host metrics."""
    raise NotImplementedError

  def fit(self, evaluate: EvaluateFn | None = None):
    """Steps until `steps`: NaN guard, metrics, periodic checkpoints and evaluation. Returns the trained model."""
    sc, cc = self.sc, self.config.checkpoint
    start_step, start_time = self.step, time.time()
    bar = runtime.progress(sc.steps, initial=start_step, desc=self.name, enabled=self.config.log.progress)
    try:
      while not self.done:
        metrics = self.train_step()
        runtime.check_finite(self.step, metrics)
        self.log(metrics, start_time, start_step)
        bar.update(1)
        if self.step % cc.every == 0 or self.step == sc.steps:
          self.save({k: v for k, v in metrics.items() if math.isfinite(v)})
        every = self.config.eval.every
        if evaluate is not None and every and self.step % every == 0 and self.step < sc.steps:
          result = evaluate(self.model(), f"{self.name} step {self.step}", None)
          self.writer.write(self.step, result, prefix=f"eval_{self.name}/")
    finally:
      bar.close()
      self.log_decoded()
      self.close()
    return self.model()

  def log_decoded(self) -> None:
    """Each process's count of the records its loader decoded (with per-process rows, its share only)."""
    decoded = getattr(self.loader, "decoded", None)
    if decoded is not None:
      print(f"[{self.name}] process {jax.process_index()} of {jax.process_count()} decoded {decoded} records "
            f"({getattr(self.loader, 'row_shards', 1)} row shards)", file=sys.stderr, flush=True)

  def log(self, metrics: dict, start_time: float, start_step: int) -> None:
    step = self.step
    metrics = dict(metrics, lr=float(self.schedule(step - 1)))
    self.writer.write(step, metrics, prefix=f"{self.name}/")
    if jax.process_index() == 0:
      with open(self.history, "a") as f:
        f.write(json.dumps({"step": step, **{k: v for k, v in metrics.items() if math.isfinite(v)}}) + "\n")
    if step % self.config.log.every == 0 or step == self.sc.steps:
      rate = (step - start_step) / max(time.time() - start_time, 1e-9)
      self.writer.log(f"[{self.name}] step {step}/{self.sc.steps} {summary(metrics, LOG_KEYS)} ({rate:.2f} steps/s)")

  def close(self) -> None:
    """Waits for pending checkpoint writes and releases the loader's workers; safe to call twice."""
    self.checkpoints.close()
    self.writer.flush()
    if hasattr(self.loader, "close"):
      self.loader.close()


def host_metrics(metrics: dict) -> dict[str, float]:
  return {k: float(runtime.to_host(v)) for k, v in metrics.items()}
