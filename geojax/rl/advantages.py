"""Group-relative advantage estimators, registered by name.

Rewards come as a flat batch of `n_groups * group_size` completions, the `group_size` completions of one prompt
in consecutive rows (the layout the rollout produces when each prompt is repeated `group_size` times). Every
estimator is a pure function of the grouped rewards, so it jits and runs the same on host arrays.
"""
from __future__ import annotations

from typing import Callable, Mapping, Protocol, Sequence

import jax.numpy as jnp

from geojax.rl.registry import add_to

# Geo-R's and GLOBE's code (TRL) add this to the group std before dividing.
DEFAULT_EPS = 1e-4


class AdvantageEstimator(Protocol):

  def __call__(self, grouped: jnp.ndarray, *, eps: float, weights: jnp.ndarray | None) -> jnp.ndarray:
    """Maps grouped rewards [N, G] (or [N, G, R] for multi-reward kinds) to advantages [N, G]."""


ADVANTAGE_ESTIMATORS: dict[str, AdvantageEstimator] = {}

# Kinds whose rewards are a [B, R] matrix (one column per reward function) rather than a [B] vector.
MULTI_REWARD_KINDS: set[str] = set()


def register_advantage(name: str, *, multi_reward: bool = False) -> Callable[[AdvantageEstimator], AdvantageEstimator]:
  """Decorator adding an estimator to `ADVANTAGE_ESTIMATORS` under `name`."""

  def wrap(fn: AdvantageEstimator) -> AdvantageEstimator:
    add_to(ADVANTAGE_ESTIMATORS, name, fn, "advantage estimator")
    if multi_reward:
      MULTI_REWARD_KINDS.add(name)
    return fn

  return wrap


def _centered(grouped: jnp.ndarray) -> jnp.ndarray:
  """r - mean_G along the group axis 1, exactly 0 for a group of equal rewards.

  The mean is taken of the rewards shifted by the group's first one: in float32 the mean of sixteen 0.7s is
  not 0.7, and divided by a std of ~1e-8 + eps that rounding would become an advantage of ~1e-3.
  """
  shifted = grouped - grouped[:, :1]
  return shifted - shifted.mean(axis=1, keepdims=True)


def _group_std(centered: jnp.ndarray) -> jnp.ndarray:
  """Unbiased (Bessel-corrected, as torch.std) standard deviation along the group axis 1."""
  return jnp.sqrt(jnp.sum(centered ** 2, axis=1, keepdims=True) / (centered.shape[1] - 1))


@register_advantage("grpo")
def grpo_advantages(grouped: jnp.ndarray, *, eps: float = DEFAULT_EPS, weights=None) -> jnp.ndarray:
  """(r - mean_G) / (std_G + eps), std unbiased: the GRPO advantage of Geo-R's and GLOBE's code."""
  del weights
  centered = _centered(grouped)
  return centered / (_group_std(centered) + eps)


@register_advantage("drgrpo")
def drgrpo_advantages(grouped: jnp.ndarray, *, eps: float = DEFAULT_EPS, weights=None) -> jnp.ndarray:
  """r - mean_G: Dr. GRPO drops the std division, which over-weights groups with nearly equal rewards."""
  del eps, weights
  return _centered(grouped)


@register_advantage("rloo")
def rloo_advantages(grouped: jnp.ndarray, *, eps: float = DEFAULT_EPS, weights=None) -> jnp.ndarray:
  """r_i - mean_{j != i} r_j: the leave-one-out baseline, equal to G / (G - 1) (r_i - mean_G)."""
  del eps, weights
  return _centered(grouped) * (grouped.shape[1] / (grouped.shape[1] - 1))


@register_advantage("multi", multi_reward=True)
def multi_reward_advantages(grouped: jnp.ndarray, *, eps: float = DEFAULT_EPS,
                            weights: jnp.ndarray | None = None) -> jnp.ndarray:
  """Each reward column normalized within its group as in GRPO, then the weighted sum over rewards.

  Normalizing before summing keeps a reward with a large range (distance) from drowning a 0/1 reward (format).
  """
  centered = _centered(grouped)  # [N, G, R]
  normalized = centered / (_group_std(centered) + eps)
  if weights is None:
    weights = jnp.ones(grouped.shape[-1], grouped.dtype)
  return jnp.einsum("ngr,r->ng", normalized, jnp.asarray(weights, normalized.dtype))


def group_advantages(rewards: jnp.ndarray, group_size: int, kind: str = "grpo", *,
                     weights: Sequence[float] | jnp.ndarray | None = None, eps: float = DEFAULT_EPS) -> jnp.ndarray:
  """Advantages of a batch of grouped completions.

  Args:
    rewards: [B] rewards, or [B, R] (one column per reward function) for multi-reward kinds such as "multi";
      B = n_groups * group_size with each group in consecutive rows.
    group_size: completions per prompt (G), a static Python int >= 2.
    kind: a name in `ADVANTAGE_ESTIMATORS`: "grpo", "drgrpo", "rloo" or "multi".
    weights: [R] reward weights for multi-reward kinds (default: all ones).
    eps: added to the group std by std-normalizing kinds.

  Returns:
    [B] advantages in the dtype of `rewards` (float32 at least).
  """
  if kind not in ADVANTAGE_ESTIMATORS:
    raise ValueError(f"unknown advantage kind {kind!r}; expected one of {sorted(ADVANTAGE_ESTIMATORS)}")
  if not isinstance(group_size, int) or group_size < 2:
    raise ValueError(f"group_size must be an int >= 2 (a group of one has no baseline), got {group_size!r}")
  rewards = jnp.asarray(rewards)
  rewards = rewards.astype(jnp.promote_types(rewards.dtype, jnp.float32))
  multi = kind in MULTI_REWARD_KINDS
  if rewards.ndim != (2 if multi else 1):
    shape = "[B, R]" if multi else "[B]"
    raise ValueError(f"advantage kind {kind!r} takes rewards of shape {shape}, got {rewards.shape}")
  if weights is not None and not multi:
    raise ValueError(f"advantage kind {kind!r} takes no reward weights; combine rewards first or use 'multi'")
  if weights is not None and len(weights) != rewards.shape[1]:
    raise ValueError(f"{len(weights)} reward weights for {rewards.shape[1]} reward columns")
  batch = rewards.shape[0]
  if batch % group_size:
    raise ValueError(f"batch of {batch} rewards is not a whole number of groups of {group_size}")
  grouped = rewards.reshape((batch // group_size, group_size) + rewards.shape[1:])
  advantages = ADVANTAGE_ESTIMATORS[kind](grouped, eps=eps, weights=weights)
  return advantages.reshape(batch)


def reward_advantages(rewards: jnp.ndarray, per_reward: Mapping[str, jnp.ndarray], weights: Mapping[str, float],
                      group_size: int, kind: str = "grpo", *, eps: float = DEFAULT_EPS) -> jnp.ndarray:
  """Advantages of a scored rollout: of its total reward, or for multi-reward kinds of each reward apart.

  Args:
    rewards: [B] total reward (what single-reward kinds such as "grpo" normalize).
    per_reward: {name: [B]} each reward as scored (what "multi" normalizes, one column per name).
    weights: {name: weight}, the config's grpo.rewards; "multi" sums the normalized columns with these weights.
    group_size, kind, eps: as in `group_advantages`.

  Returns:
    [B] advantages.
  """
  if kind not in MULTI_REWARD_KINDS:
    return group_advantages(rewards, group_size, kind, eps=eps)
  names = list(per_reward)
  missing = [name for name in names if name not in weights]
  if not names or missing:
    raise ValueError(f"advantage kind {kind!r} needs a weight for each scored reward {names}; missing {missing}")
  columns = jnp.stack([jnp.asarray(per_reward[name]) for name in names], axis=1)
  return group_advantages(columns, group_size, kind, weights=[float(weights[name]) for name in names], eps=eps)
