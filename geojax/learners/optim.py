"""Optimizer, learning-rate schedule, gradient accumulation and the update: what every learner's step shares."""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax

from geojax.data.batch import split_microbatches


def learning_rate_schedule(sc: ml_collections.ConfigDict) -> optax.Schedule:
  """Linear warmup (warmup_ratio of the steps when > 0, else warmup_steps), then cosine / linear / constant."""
  steps = max(int(sc.steps), 1)
  warmup = int(round(sc.warmup_ratio * steps)) if sc.warmup_ratio > 0 else int(sc.warmup_steps)
  warmup = min(warmup, steps)
  peak, end = float(sc.lr), float(sc.lr) * float(sc.min_lr_ratio)
  decay_steps = max(steps - warmup, 1)
  if sc.schedule == "cosine":
    after = optax.cosine_decay_schedule(peak, decay_steps, alpha=sc.min_lr_ratio)
  elif sc.schedule == "linear":
    after = optax.linear_schedule(peak, end, decay_steps)
  else:
    after = optax.constant_schedule(peak)
  if warmup == 0:
    return after
  return optax.join_schedules([optax.linear_schedule(peak / warmup, peak, warmup - 1) if warmup > 1
                               else optax.constant_schedule(peak), after], [warmup])


def updates_per_step(sc: ml_collections.ConfigDict) -> int:
  """Optimizer updates in one learner step: GRPO's updates_per_rollout x minibatches (1 for SFT)."""
  return int(sc.get("updates_per_rollout", 1)) * int(sc.get("minibatches", 1))


def make_optimizer(sc: ml_collections.ConfigDict, trainable) -> optax.GradientTransformation:
  """AdamW with global-norm clipping and the schedule above; frozen parameters (mask False) never change.

  The schedule counts learner steps: the several updates of one step (`updates_per_step`) share its rate.
  """
  schedule = learning_rate_schedule(sc)
  per_step = updates_per_step(sc)
  if per_step > 1:
    schedule = lambda count, by_step=schedule: by_step(count // per_step)  # noqa: E731
  tx = optax.chain(optax.clip_by_global_norm(sc.grad_clip) if sc.grad_clip > 0 else optax.identity(),
                   optax.adamw(schedule, b1=sc.b1, b2=sc.b2, weight_decay=sc.weight_decay))
  labels = jax.tree.map(lambda t: "train" if t else "frozen", trainable)
  return optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)


def combine_metrics(a: dict, b: dict) -> dict:
  """Metrics of two parts of a batch as the batch's: *_max / *_min by max / min, the others (shares) summed."""
  return {k: jnp.maximum(a[k], b[k]) if k.endswith("_max") else jnp.minimum(a[k], b[k]) if k.endswith("_min")
          else a[k] + b[k] for k in a}


def accumulate_grads(loss_fn: Callable, params, batch: dict, n_micro: int, *, shares: bool = False):
  """Loss, metrics and gradients of a batch from its n_micro equal micro-batches (a scan, so memory is one
  micro-batch).

  shares=True: loss_fn(params, micro_batch) -> (loss, metrics) returns the micro-batch's share of the batch's loss,
    its own sum divided by the whole batch's count (`geojax.rl.batch_counts`; `geojax.sft.sft_loss`'s
    token_count), and the shares are summed: the batch's loss and gradient whatever n_micro is. Metrics add up the
    same way, except *_max / *_min, which take the max / min.
  shares=False: each micro-batch's loss is a mean of its own and they are averaged (as are metrics and gradients),
    which is the batch's loss only when every micro-batch has the same denominator.
  """
  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  if n_micro == 1:
    (loss, metrics), grads = grad_fn(params, batch)
    return loss, metrics, grads
  micro = split_microbatches(batch, n_micro)
  merge = combine_metrics if shares else lambda a, b: jax.tree.map(jnp.add, a, b)

  def body(carry, mb):
    (loss, metrics), grads = grad_fn(params, mb)
    c_loss, c_metrics, c_grads = carry
    return (c_loss + loss, merge(c_metrics, metrics), jax.tree.map(jnp.add, c_grads, grads)), None

  first = jax.tree.map(lambda x: x[0], micro)
  (loss, metrics), grads = jax.eval_shape(grad_fn, params, first)
  extreme = {"_max": -jnp.inf, "_min": jnp.inf} if shares else {}
  init = (jnp.zeros(loss.shape, loss.dtype), {k: jnp.full(s.shape, extreme.get(k[-4:], 0.0), s.dtype)
                                              for k, s in metrics.items()},
          jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), grads))
  (loss, metrics, grads), _ = jax.lax.scan(body, init, micro)
  if shares:
    return loss, metrics, grads
  scale = 1.0 / n_micro
  return loss * scale, jax.tree.map(lambda m: m * scale, metrics), jax.tree.map(lambda g: g * scale, grads)


def apply_update(tx, state: dict, grads, loss, metrics) -> tuple[dict, dict]:
  """One optimizer step on the functional state {params, opt_state, step}; the metrics gain loss and grad_norm."""
  updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
  params = optax.apply_updates(state["params"], updates)
  metrics = dict(metrics, loss=loss, grad_norm=optax.tree.norm(grads))
  return {"params": params, "opt_state": opt_state, "step": state["step"] + 1}, metrics
