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
from typing import Any, Mapping

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
  """Save / restore `(named array pytrees, data-iterator state, JSON record)` per step in `directory`.

  items: named pytrees of jax arrays (e.g. "params", and "train" = optimizer state, step, RNG key data);
  restored with the shardings of the templates passed to `restore`. data_state: the iterator's `get_state()`
  (or None). record: JSON-able.
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

  def save(self, step: int, items: Mapping[str, Any], data_state: Any = None, record: dict | None = None) -> None:
    """Starts saving `step`: each entry of `items` (a pytree of arrays) is a separately restorable item.

    Returns once arrays are copied off the device; writing continues in the background.
    """
    args = {name: ocp.args.StandardSave(tree) for name, tree in items.items()}
    args["record"] = ocp.args.JsonSave(dict(record or {}, step=int(step)))
    if data_state is not None and _GrainSave is not None:
      args["data"] = _GrainSave(_IteratorState(encode_data_state(data_state)))
    self._manager.save(int(step), args=ocp.args.Composite(**args), force=True)

  def restore(self, templates: Mapping[str, Any], step: int | None = None,
              data: bool = True) -> tuple[dict, Any, dict]:
    """Returns `({name: tree}, data_state or None, record)` of `step` (default: latest).

    Only the items named in `templates` are read, each shaped and sharded like its template (arrays or
    jax.ShapeDtypeStruct with shardings), so evaluation can read the parameters without the optimizer state.
    """
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no complete checkpoint in {self.directory}")
    args = {name: ocp.args.StandardRestore(jax.tree.map(ocp.utils.to_shape_dtype_struct, tree))
            for name, tree in templates.items()}
    args["record"] = ocp.args.JsonRestore()
    has_data = data and _GrainRestore is not None and os.path.isdir(os.path.join(self.directory, str(step), "data"))
    if has_data:
      args["data"] = _GrainRestore(_IteratorState())
    restored = self._manager.restore(step, args=ocp.args.Composite(**args))
    data_state = decode_data_state(restored["data"].state) if has_data else None
    return {name: restored[name] for name in templates}, data_state, dict(restored["record"])

  def has_item(self, step: int, name: str) -> bool:
    """Whether complete checkpoint `step` holds the item `name`."""
    return os.path.isdir(os.path.join(self.directory, str(step), name))

  def wait(self) -> None:
    """Blocks until the background save (if any) is complete on disk."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()
