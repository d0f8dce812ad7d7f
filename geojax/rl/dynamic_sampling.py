"""DAPO's dynamic sampling: keep only groups whose rewards differ, so every group carries a learning signal.

A group whose completions all earn the same reward has zero advantage everywhere and adds nothing but
KL to the update. The trainer rolls out extra batches; these helpers pick the informative groups and refill a batch of
static size from them (`geojax.train` joins rollouts of one batch shape and gathers their rows).
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

# Rewards are sums of a few floats; groups within this spread count as having zero variance.
DEFAULT_TOL = 1e-6


def _xp(x: Any):
  return jnp if isinstance(x, jax.Array) else np


def informative_groups(rewards: Any, group_size: int, *, tol: float = DEFAULT_TOL) -> Any:
  """[N] bools: True for groups whose rewards spread by more than `tol` (max - min).

  `rewards` is [N * G] with each group in consecutive rows, or [N * G, R] for several rewards (a group is
  informative when any reward varies). NumPy in, NumPy out; jax in, jax out (jit-able).
  """
  xp = _xp(rewards)
  rewards = xp.asarray(rewards)
  if rewards.shape[0] % group_size:
    raise ValueError(f"{rewards.shape[0]} rewards are not a whole number of groups of {group_size}")
  grouped = rewards.reshape((rewards.shape[0] // group_size, group_size, -1))
  spread = grouped.max(axis=1) - grouped.min(axis=1)
  return (spread > tol).any(axis=-1)


def select_groups(rewards: Any, group_size: int, n_groups: int, *, tol: float = DEFAULT_TOL) -> tuple[Any, Any]:
  """Picks `n_groups` of the candidate groups, informative ones first, in their original order.

  When fewer than `n_groups` are informative, the batch is refilled with uninformative groups so that its
  shape stays static (they get zero advantage, hence no policy gradient).

  Returns:
    group_index: [n_groups] int32 indices of the chosen candidate groups.
    is_informative: [n_groups] bools, False for refill groups.
  """
  xp = _xp(rewards)
  keep = informative_groups(rewards, group_size, tol=tol)
  if n_groups > keep.shape[0]:
    raise ValueError(f"asked for {n_groups} groups out of {keep.shape[0]} candidates")
  order = xp.argsort(xp.logical_not(keep).astype(xp.int32), stable=True)[:n_groups].astype(xp.int32)
  return order, keep[order]


def group_rows(group_index: Any, group_size: int) -> Any:
  """Row indices [len(group_index) * G] of the completions of the given groups."""
  xp = _xp(group_index)
  group_index = xp.asarray(group_index)
  return (group_index[:, None] * group_size + xp.arange(group_size)[None, :]).reshape(-1)
