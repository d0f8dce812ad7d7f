"""The one place that knows where each field of a collated batch keeps its examples.

Most fields are [B, ...] with one row per example. Two are not:

  position_ids  [3, B, L]   M-RoPE's three axes come first, so examples are on axis 1
  pixel_values  [B*P, D]    each example's P image patches are consecutive rows (one shared grid per batch)

Every operation that selects, joins, splits or repeats examples goes through this module, on host (numpy) or
device (jax) arrays alike, so no caller special-cases those two fields.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

EXAMPLE_AXIS = {"position_ids": 1}  # fields whose examples are not on axis 0
PER_PATCH = frozenset({"pixel_values"})  # fields with P rows per example


def example_axis(name: str) -> int:
  return EXAMPLE_AXIS.get(name, 0)


def num_examples(batch: Mapping[str, Any]) -> int:
  name = next((k for k in batch if k not in PER_PATCH), None)
  if name is None:
    raise ValueError(f"cannot tell the number of examples from per-patch fields alone: {sorted(batch)}")
  return int(np.shape(batch[name])[example_axis(name)])


def _xp(x):
  return jnp if isinstance(x, jax.Array) else np


def _by_example(name: str, x, n: int):
  """`x` with its examples on axis 0 ([n, ...]; per-patch fields [n, P, D])."""
  if name in PER_PATCH:
    return x.reshape(n, -1, x.shape[-1])
  return _xp(x).moveaxis(x, example_axis(name), 0) if example_axis(name) else x


def _from_examples(name: str, x):
  """Inverse of `_by_example`."""
  if name in PER_PATCH:
    return x.reshape(-1, x.shape[-1])
  return _xp(x).moveaxis(x, 0, example_axis(name)) if example_axis(name) else x


def batch_shape(batch: Mapping[str, Any]) -> tuple:
  """(image grid, padded length) of a collated batch: batches with equal shapes can be joined."""
  return tuple(int(v) for v in np.asarray(batch["image_grid_thw"])[0]), int(np.shape(batch["input_ids"])[1])


def take_examples(batch: Mapping[str, Any], index: Sequence[int]) -> dict:
  """The examples `index` of a collated host batch, in that order (its image grid and length are kept)."""
  index = np.asarray(index, np.int64)
  n = num_examples(batch)
  return {name: _from_examples(name, _by_example(name, np.asarray(x), n)[index]) for name, x in batch.items()}


def concat_examples(batches: Sequence[Mapping[str, Any]]) -> dict:
  """One host batch holding the examples of `batches` in order; they must share an image grid and a length."""
  keys = [batch_shape(b) for b in batches]
  if len(set(keys)) > 1:
    raise ValueError(f"batches of different shapes (grid, length) cannot be joined: {sorted(set(keys))}")
  return {name: np.concatenate([np.asarray(b[name]) for b in batches], axis=example_axis(name))
          for name in batches[0]}


def repeat_examples(batch: Mapping[str, Any], times: int, patches: Sequence[int] | None = None) -> dict:
  """Each example repeated `times` times in consecutive rows (a GRPO group's layout), on host or device.

  patches: each example's number of per-patch rows when they differ (prompts holding several images of other
  sizes); by default every example has the same number.
  """
  n = num_examples(batch)

  def one(name, x):
    if name in PER_PATCH and patches is not None:
      starts = np.cumsum([0, *patches[:-1]])
      return _xp(x).concatenate([x[s:s + p] for s, p in zip(starts, patches) for _ in range(times)], axis=0)
    return _from_examples(name, _xp(x).repeat(_by_example(name, x, n), times, axis=0))

  return {name: one(name, x) for name, x in batch.items()}


def split_microbatches(batch: Mapping[str, Any], n_micro: int) -> dict:
  """A leading micro-batch axis of size `n_micro` on every field (micro-batch i holds examples i*B/n.. in order)."""
  n = num_examples(batch)
  if n % n_micro:
    raise ValueError(f"{n} examples do not split into {n_micro} equal micro-batches")

  def one(name, x):
    if name in PER_PATCH:
      return x.reshape(n_micro, -1, x.shape[-1])
    x = _by_example(name, x, n)
    return _xp(x).moveaxis(x.reshape(n_micro, n // n_micro, *x.shape[1:]), 1, 1 + example_axis(name))

  return {name: one(name, x) for name, x in batch.items()}


def joined_grid(batch: Mapping[str, Any], shards: int = 1) -> np.ndarray:
  """image_grid_thw of the batch that `shards` processes' batches like `batch` join into (one grid per batch)."""
  grid = np.asarray(batch["image_grid_thw"])
  return grid if shards == 1 else np.repeat(grid[:1], len(grid) * shards, axis=0)


def put_batch(batch: Mapping[str, Any], mesh: jax.sharding.Mesh, keys: Sequence[str] | None = None,
              batch_axes: tuple[str, ...] = ("data", "fsdp"), shards: int = 1) -> dict:
  """Host fields placed on `mesh`, sharded over examples where they divide (per-patch fields by rows, which keeps
  each example's patches together), replicated otherwise.

  shards: 1 when every process holds the whole batch; the process count when each holds its own rows of it (a
  loader with shard_by="rows"): the global arrays are then built from each process's rows, in process order.
  """
  from jax.sharding import NamedSharding, PartitionSpec as P
  from geojax.runtime import from_process_rows
  if shards not in (1, jax.process_count()):
    raise ValueError(f"a batch split over {shards} processes, but {jax.process_count()} are running")
  axes = tuple(a for a in batch_axes if a in mesh.shape)
  size = int(np.prod([mesh.shape[a] for a in axes])) if axes else 1
  spec_axes = axes if len(axes) > 1 else axes[0] if axes else None

  def one(name, x):
    x = np.asarray(x)
    axis = example_axis(name)
    sharded = axes and x.ndim > axis and x.shape[axis] * shards % size == 0
    sharding = NamedSharding(mesh, P(*([None] * axis), spec_axes) if sharded else P())
    if shards > 1:
      return from_process_rows(x, sharding, axis)
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

  return {name: one(name, batch[name]) for name in (keys if keys is not None else batch)}
