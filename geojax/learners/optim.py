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


def make_optimizer(sc: ml_collections.ConfigDict, trainable) -> optax.GradientTransformation:
  """AdamW with global-norm clipping and the schedule above; frozen parameters (mask False) never change."""
  tx = optax.chain(optax.clip_by_global_norm(sc.grad_clip) if sc.grad_clip > 0 else optax.identity(),
                   optax.adamw(learning_rate_schedule(sc), b1=sc.b1, b2=sc.b2, weight_decay=sc.weight_decay))
  labels = jax.tree.map(lambda t: "train" if t else "frozen", trainable)
  return optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)


def accumulate_grads(loss_fn: Callable, params, batch: dict, n_micro: int):
  """Mean loss, metrics and gradients over n_micro equal micro-batches (a scan, so memory is one micro-batch)."""
  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  if n_micro == 1:
    (loss, metrics), grads = grad_fn(params, batch)
    return loss, metrics, grads
  micro = split_microbatches(batch, n_micro)

  def body(carry, mb):
    (loss, metrics), grads = grad_fn(params, mb)
    return jax.tree.map(jnp.add, carry, (loss, metrics, grads)), None

  first = jax.tree.map(lambda x: x[0], micro)
  zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(grad_fn, params, first))
  (loss, metrics), grads = zeros
  (loss, metrics, grads), _ = jax.lax.scan(body, (loss, metrics, grads), micro)
  scale = 1.0 / n_micro
  return loss * scale, jax.tree.map(lambda m: m * scale, metrics), jax.tree.map(lambda g: g * scale, grads)


def apply_update(tx, state: dict, grads, loss, metrics) -> tuple[dict, dict]:
  """One optimizer step on the functional state {params, opt_state, step}; the metrics gain loss and grad_norm."""
  updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
  params = optax.apply_updates(state["params"], updates)
  metrics = dict(metrics, loss=loss, grad_norm=optax.tree.norm(grads))
  return {"params": params, "opt_state": opt_state, "step": state["step"] + 1}, metrics
