"""Supervised fine-tuning on answer texts: next-token loss on the answer tokens only."""
from __future__ import annotations

import functools

import jax
import ml_collections

from geojax import runtime
from geojax.data.batch import joined_grid, put_batch
from geojax.data.pipeline import make_loader, rows_per_process
from geojax.learners.learner import Learner, host_metrics
from geojax.learners.optim import accumulate_grads, apply_update
from geojax.models import grid_tuple
from geojax.models.logprobs import token_logprobs
from geojax.sft import next_token_targets, sft_loss

SFT_KEYS = ("input_ids", "attention_mask", "position_ids", "pixel_values", "loss_mask", "example_mask")


class SFTLearner(Learner):
  """SFT of `model` on the batches of `loader` (collated in "sft" mode: prompt + answer, loss_mask on the answer).
  Each process loads and decodes only its rows of every global batch (shard_by="rows")."""

  def __init__(self, config: ml_collections.ConfigDict, model, mesh, loader,
               writer: runtime.MetricWriter | None = None):
    super().__init__("sft", config, model, mesh, loader, writer)
    # update(state, batch, grid) -> (state, metrics): one optimizer step on a batch on the mesh (jitted, donates state)
    self.update = jax.jit(self._update_fn, static_argnames=("grid",), donate_argnums=(0,))

  @classmethod
  def from_config(cls, config, model, tokenizer, mesh, records, writer=None) -> "SFTLearner":
    from geojax.experiment import example_transform
    sc = config.sft
    loader = make_loader(records, example_transform(config, tokenizer, "sft"), batch_size=sc.batch_size,
                         seed=config.seed, shuffle=True, num_epochs=None, worker_count=config.data.workers,
                         name="sft", **rows_per_process(sc.batch_size))
    return cls(config, model, mesh, loader, writer)

  def loss(self, params, batch: dict, grid: tuple, token_count=None, step=0):
    """Token-mean NLL of the answer tokens; with `token_count` (the whole batch's) a micro-batch's share of it."""
    targets, target_mask = next_token_targets(batch["input_ids"], batch["loss_mask"] * batch["example_mask"][:, None])
    lp = token_logprobs(self.train_model(params, step), batch["input_ids"], targets, batch["attention_mask"],
                        batch["pixel_values"], grid, batch["position_ids"])
    return sft_loss(lp, targets, target_mask, token_count=token_count)

  def _update_fn(self, state, batch, grid):
    n_micro = self.sc.grad_accum
    loss_fn = functools.partial(self.loss, grid=grid[:len(grid) // n_micro], step=state["step"])
    if n_micro > 1:  # each micro-batch's share of the whole batch's token mean, exact whatever the split
      _, target_mask = next_token_targets(batch["input_ids"], batch["loss_mask"] * batch["example_mask"][:, None])
      loss_fn = functools.partial(loss_fn, token_count=target_mask.sum())
    loss, metrics, grads = accumulate_grads(loss_fn, state["params"], batch, n_micro, shares=n_micro > 1)
    return apply_update(self.tx, state, grads, loss, metrics)

  def train_step(self) -> dict[str, float]:
    batch, shards = next(self.loader), getattr(self.loader, "row_shards", 1)
    self.state, metrics = self.update(self.state, put_batch(batch, self.mesh, SFT_KEYS, shards=shards),
                                       grid_tuple(joined_grid(batch, shards)))
    return host_metrics(metrics)
