"""Ways to reduce a [B, T] per-token loss to a scalar, registered by name.

Each mode is a (total, count) pair, both sums over rows: loss = total / max(count, 1). Because both add up over
rows, a batch split into micro-batches (gradient accumulation) gets exactly the loss of the whole batch when each
micro-batch divides its own total by the count of the whole batch (`batch_count`), and the shares are summed.

Each takes the per-token values, a {0, 1} mask of the same shape and `max_len` (the constant of
"sequence-mean-token-scale"; the others ignore it). Sequences without any valid token (padding rows) contribute
nothing and do not count in sequence means; an all-empty batch gives 0, never NaN.

Names follow Tunix (`tunix/rl/common.py` aggregate_loss) and verl (`agg_loss`), so that a name means the same here:
  token-mean                 sum / valid tokens (DAPO; TRL "dapo")
  sequence-mean-token-mean   mean over sequences of each one's token mean (GRPO paper; TRL "grpo")
  sequence-mean-token-scale  mean over sequences of each one's token sum / max_len (Dr. GRPO; TRL "dr_grpo")
  seq-mean-token-sum         mean over sequences of each one's token sum (Tunix, verl)
"""
from __future__ import annotations

from typing import Callable

import jax.numpy as jnp

from geojax.rl.registry import add_to

# fn(values, mask, *, max_len) -> (total, count)
Aggregation = Callable[..., tuple[jnp.ndarray, jnp.ndarray]]

AGGREGATIONS: dict[str, Aggregation] = {}

# Names geojax used with another meaning than Tunix's or verl's: refused with what to write instead.
RENAMED_AGGREGATIONS = {
    "sequence-mean-token-sum-norm": (
        "geojax's former 'sequence-mean-token-sum-norm' (token sum / max_len, mean over sequences; Dr. GRPO, TRL "
        "'dr_grpo') is now 'sequence-mean-token-scale', Tunix's name for it; Tunix's 'sequence-mean-token-sum-norm' "
        "(token sum / batch size) is 'seq-mean-token-sum' here, verl's 'seq-mean-token-sum-norm' (token sum / T, "
        "not divided by the sequences) has no mode here"),
}


def register_aggregation(name: str) -> Callable[[Aggregation], Aggregation]:
  """Decorator adding `fn(values, mask, *, max_len) -> (total, count)` to `AGGREGATIONS` under `name`; both must be
  sums over rows."""

  return lambda fn: add_to(AGGREGATIONS, name, fn, "loss aggregation")


def aggregation(name: str) -> Aggregation:
  """The registered mode `name`; a renamed or unknown name is a ValueError saying what to use."""
  if name in RENAMED_AGGREGATIONS:
    raise ValueError(f"loss aggregation {name!r} was renamed: {RENAMED_AGGREGATIONS[name]}")
  if name not in AGGREGATIONS:
    raise ValueError(f"unknown loss aggregation {name!r}; expected one of {sorted(AGGREGATIONS)}")
  return AGGREGATIONS[name]


def aggregate(name: str, values: jnp.ndarray, mask: jnp.ndarray, *, max_len: int | None = None,
              count: jnp.ndarray | None = None) -> jnp.ndarray:
  """The scalar loss of mode `name`: total / max(count, 1).

  count: the whole batch's `batch_count` when `values` is one micro-batch of it (the result is then that
    micro-batch's share, and the shares sum to the batch's loss); None for the count of `mask` itself.
  """
  total, own = aggregation(name)(values, mask, max_len=max_len)
  return total / jnp.maximum(own if count is None else count, 1.0)


def batch_count(name: str, mask: jnp.ndarray, *, max_len: int | None = None) -> jnp.ndarray:
  """The denominator of mode `name` over a whole batch (valid tokens, or non-empty sequences)."""
  mask = jnp.asarray(mask).astype(jnp.promote_types(jnp.result_type(mask), jnp.float32))
  return aggregation(name)(jnp.zeros_like(mask), mask, max_len=max_len)[1]


def _nonempty_sum(per_sequence: jnp.ndarray, tokens_per_sequence: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
  nonempty = tokens_per_sequence > 0
  return jnp.sum(jnp.where(nonempty, per_sequence, 0.0)), jnp.sum(nonempty).astype(per_sequence.dtype)


def _max_len(values: jnp.ndarray, max_len: int | None) -> int:
  max_len = values.shape[-1] if max_len is None else max_len
  if max_len <= 0:
    raise ValueError(f"max_len must be positive, got {max_len}")
  return max_len


@register_aggregation("token-mean")
def token_mean(values: jnp.ndarray, mask: jnp.ndarray, *, max_len: int | None = None):
  """Mean over every valid token of the batch: long completions weigh more (DAPO; TRL "dapo")."""
  del max_len
  return jnp.sum(values * mask), jnp.sum(mask)


@register_aggregation("sequence-mean-token-mean")
def sequence_mean_token_mean(values: jnp.ndarray, mask: jnp.ndarray, *, max_len: int | None = None):
  """Mean over the tokens of each sequence, then over sequences: GRPO as in Geo-R's and GLOBE's code (TRL "grpo")."""
  del max_len
  tokens = jnp.sum(mask, axis=-1)
  per_sequence = jnp.sum(values * mask, axis=-1) / jnp.maximum(tokens, 1.0)
  return _nonempty_sum(per_sequence, tokens)


@register_aggregation("sequence-mean-token-scale")
def sequence_mean_token_scale(values: jnp.ndarray, mask: jnp.ndarray, *, max_len: int | None = None):
  """Token sum of each sequence divided by a constant `max_len` (default T), then the mean over sequences.

  Dr. GRPO: a constant divisor removes the length bias of per-sequence means. Tunix's "sequence-mean-token-scale"
  and TRL's "dr_grpo" (sum / (B * max_completion_length)); geojax called it "sequence-mean-token-sum-norm" before,
  which is another mode in Tunix (see RENAMED_AGGREGATIONS).
  """
  max_len = _max_len(values, max_len)
  tokens = jnp.sum(mask, axis=-1)
  per_sequence = jnp.sum(values * mask, axis=-1) / max_len
  return _nonempty_sum(per_sequence, tokens)


@register_aggregation("seq-mean-token-sum")
def seq_mean_token_sum(values: jnp.ndarray, mask: jnp.ndarray, *, max_len: int | None = None):
  """Token sum of each sequence, then the mean over sequences (Tunix and verl "seq-mean-token-sum"; Tunix's
  "sequence-mean-token-sum-norm" with its default norm, the batch size, when no row is empty)."""
  del max_len
  tokens = jnp.sum(mask, axis=-1)
  return _nonempty_sum(jnp.sum(values * mask, axis=-1), tokens)
