"""Orbax checkpoints of a training run: the array state, the data-iterator state and a small JSON record.

Saves are asynchronous (arrays are copied off the device, then written in the background) and atomic: Orbax
writes each step into a temporary directory and renames it only when every item and every process is done, so
a kill at any moment leaves the previous complete checkpoint as the latest one. Old steps beyond `max_to_keep`
are deleted after a newer one is complete.
"""
from __future__ import annotations

import base64
import json
import os
from typing import Any

import jax
import orbax.checkpoint as ocp

try:  # Grain's handler writes one iterator-state file per process.
  from grain.checkpoint import CheckpointRestore as _GrainRestore, CheckpointSave as _GrainSave
except ImportError:  # pragma: no cover
  _GrainSave = _GrainRestore = None


class _IteratorState:
  """What Grain's checkpoint handler expects of an iterator, holding a state captured earlier.

  The trainer snapshots the iterator state when it draws the batch of a step, so a checkpoint of step s
  restores the data stream exactly after batch s even when later batches were already prefetched.
  """

  def __init__(self, state: bytes = b""):
    self.state = state

  def get_state(self) -> bytes:
    return self.state

  def set_state(self, state: bytes) -> None:
    self.state = state

  def start_prefetch(self) -> None:
    pass


def encode_data_state(state: Any) -> bytes:
  """Iterator states come as bytes (Grain DataLoader) or JSON-able dicts (Grain datasets); store either."""
  if isinstance(state, (bytes, bytearray)):
    return json.dumps({"bytes": base64.b64encode(bytes(state)).decode()}).encode()
  return json.dumps({"json": state}).encode()


def decode_data_state(raw: bytes) -> Any:
  record = json.loads(raw.decode() if isinstance(raw, (bytes, bytearray)) else raw)
  if "bytes" in record:
    return base64.b64decode(record["bytes"])
  return record["json"]


class Checkpointer:
  """Save / restore `(state pytree, data-iterator state, JSON record)` per step in `directory`.

  state: a pytree of jax arrays (params, optimizer state, step, RNG key data, ...); restored with the shardings
  of the template passed to `restore`. data_state: the iterator's `get_state()` (or None). record: JSON-able.
  """

  def __init__(self, directory: str, max_to_keep: int = 3, async_save: bool = True):
    self.directory = os.path.abspath(directory)
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                           enable_async_checkpointing=async_save)
    self._manager = ocp.CheckpointManager(self.directory, options=options)

  def latest_step(self) -> int | None:
    """The newest complete step on disk (incomplete, interrupted saves are never listed)."""
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def save(self, step: int, state: Any, data_state: Any = None, record: dict | None = None) -> None:
    """Starts saving `step`; returns once arrays are copied off the device (writing continues in background)."""
    items = {"state": ocp.args.StandardSave(state),
             "record": ocp.args.JsonSave(dict(record or {}, step=int(step)))}
    if data_state is not None and _GrainSave is not None:
      items["data"] = _GrainSave(_IteratorState(encode_data_state(data_state)))
    self._manager.save(int(step), args=ocp.args.Composite(**items), force=True)

  def restore(self, template: Any, step: int | None = None) -> tuple[Any, Any, dict]:
    """Returns `(state, data_state or None, record)` of `step` (default: latest) shaped/sharded like template."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no complete checkpoint in {self.directory}")
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
    items = {"state": ocp.args.StandardRestore(abstract), "record": ocp.args.JsonRestore()}
    has_data = os.path.isdir(os.path.join(self.directory, str(step), "data"))
    if has_data and _GrainRestore is not None:
      items["data"] = _GrainRestore(_IteratorState())
    restored = self._manager.restore(step, args=ocp.args.Composite(**items))
    data_state = decode_data_state(restored["data"].state) if has_data and _GrainRestore is not None else None
    return restored["state"], data_state, dict(restored["record"])

  def wait(self) -> None:
    """Blocks until the background save (if any) is complete on disk."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()
