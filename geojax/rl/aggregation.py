"""Ways to reduce a [B, T] per-token loss to a scalar, registered by name.

Each takes the per-token values, a {0, 1} mask of the same shape and `max_len` (the constant of Dr. GRPO's
normalization; the others ignore it). Sequences without any valid token (padding rows) contribute nothing and do
not count in batch means; an all-empty batch gives 0, never NaN.
"""
from __future__ import annotations

from typing import Callable

import jax.numpy as jnp

from geojax.rl.registry import add_to

Aggregation = Callable[..., jnp.ndarray]

AGGREGATIONS: dict[str, Aggregation] = {}


def register_aggregation(name: str) -> Callable[[Aggregation], Aggregation]:
  """Decorator adding `fn(values, mask, *, max_len) -> scalar` to `AGGREGATIONS` under `name`."""

  return lambda fn: add_to(AGGREGATIONS, name, fn, "loss aggregation")


def _mean_over_nonempty_sequences(per_sequence: jnp.ndarray, tokens_per_sequence: jnp.ndarray) -> jnp.ndarray:
  nonempty = tokens_per_sequence > 0
  total = jnp.sum(jnp.where(nonempty, per_sequence, 0.0))
  return total / jnp.maximum(jnp.sum(nonempty), 1).astype(per_sequence.dtype)


@register_aggregation("token-mean")
def token_mean(values: jnp.ndarray, mask: jnp.ndarray, *, max_len: int | None = None) -> jnp.ndarray:
  """Mean over every valid token of the batch: long completions weigh more (DAPO)."""
  del max_len
  return jnp.sum(values * mask) / jnp.maximum(jnp.sum(mask), 1.0)


@register_aggregation("sequence-mean-token-mean")
def sequence_mean_token_mean(values: jnp.ndarray, mask: jnp.ndarray, *, max_len: int | None = None) -> jnp.ndarray:
  """Mean over the tokens of each sequence, then over sequences: GRPO as in Geo-R's and GLOBE's code."""
  del max_len
  tokens = jnp.sum(mask, axis=-1)
  per_sequence = jnp.sum(values * mask, axis=-1) / jnp.maximum(tokens, 1.0)
  return _mean_over_nonempty_sequences(per_sequence, tokens)


@register_aggregation("sequence-mean-token-sum-norm")
def sequence_mean_token_sum_norm(values: jnp.ndarray, mask: jnp.ndarray, *, max_len: int | None = None) -> jnp.ndarray:
  """Token sum of each sequence divided by a constant `max_len` (default T), then the mean over sequences.

  Dr. GRPO: a constant divisor removes the length bias of per-sequence means.
  """
  if max_len is None:
    max_len = values.shape[-1]
  if max_len <= 0:
    raise ValueError(f"max_len must be positive, got {max_len}")
  tokens = jnp.sum(mask, axis=-1)
  per_sequence = jnp.sum(values * mask, axis=-1) / max_len
  return _mean_over_nonempty_sequences(per_sequence, tokens)
