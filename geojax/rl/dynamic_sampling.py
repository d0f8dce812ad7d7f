"""DAPO's dynamic sampling: keep only groups whose rewards differ, so every group carries a learning signal.

A group whose completions all earn the same reward has zero advantage everywhere and adds nothing but
KL to the update. The rollout samples extra groups; these helpers pick the informative ones and refill a batch of
static size from them.
"""
from __future__ import annotations

from typing import Any, Mapping

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


def take_rows(batch: Mapping[str, Any], rows: Any) -> dict[str, Any]:
  """Gathers `rows` along the batch axis of every field: arrays (numpy or jax) and lists of Python objects.

  Fields laid out with the batch on axis 1, such as position_ids [3, B, L], are given by name in
  `AXIS1_FIELDS`.
  """
  out = {}
  rows_np = np.asarray(rows)
  for name, value in batch.items():
    if isinstance(value, (list, tuple)):
      out[name] = [value[i] for i in rows_np]
    else:
      out[name] = value[:, rows] if name in AXIS1_FIELDS else value[rows]
  return out


AXIS1_FIELDS = frozenset({"position_ids"})


class InformativeGroupPool:
  """Host-side buffer that collects informative groups over several rollouts until a batch is full.

  pool.add(rewards, batch) keeps the informative groups of a rollout (all fields of `batch` have the B rows of
  `rewards` on their batch axis); pool.take(n) returns a batch of n groups, oldest first, and drops them.
  """

  def __init__(self, group_size: int, *, tol: float = DEFAULT_TOL):
    self.group_size = group_size
    self.tol = tol
    self._chunks: list[dict[str, Any]] = []
    self._sizes: list[int] = []
    self.seen_groups = 0
    self.kept_groups = 0

  def __len__(self) -> int:
    return sum(self._sizes)

  def add(self, rewards: Any, batch: Mapping[str, Any]) -> int:
    """Keeps the informative groups of one rollout; returns how many were kept."""
    rewards = np.asarray(rewards)
    keep = informative_groups(rewards, self.group_size, tol=self.tol)
    self.seen_groups += int(keep.shape[0])
    index = np.flatnonzero(keep)
    if index.size:
      chunk = take_rows(dict(batch, rewards=rewards), group_rows(index, self.group_size))
      self._chunks.append(chunk)
      self._sizes.append(int(index.size))
      self.kept_groups += int(index.size)
    return int(index.size)

  def take(self, n_groups: int) -> dict[str, Any]:
    """Removes and returns the `n_groups` oldest groups (all fields, plus "rewards"), rows concatenated."""
    if n_groups > len(self):
      raise ValueError(f"pool holds {len(self)} groups, {n_groups} asked")
    parts, need = [], n_groups
    while need:
      chunk, size = self._chunks[0], self._sizes[0]
      if size <= need:
        parts.append(chunk)
        self._chunks.pop(0)
        self._sizes.pop(0)
        need -= size
      else:
        head = np.arange(need * self.group_size)
        tail = np.arange(need * self.group_size, size * self.group_size)
        parts.append(take_rows(chunk, head))
        self._chunks[0] = take_rows(chunk, tail)
        self._sizes[0] = size - need
        need = 0
    return {name: _concat([p[name] for p in parts], axis=1 if name in AXIS1_FIELDS else 0) for name in parts[0]}


def _concat(values: list[Any], axis: int) -> Any:
  if isinstance(values[0], list):
    return [item for value in values for item in value]
  return np.concatenate([np.asarray(v) for v in values], axis=axis)
