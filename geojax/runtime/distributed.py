"""Process start-up (`jax.distributed`) and the device mesh.

Multi-process runs are configured by config keys or, when those are empty, by the environment variables
`JAX_COORDINATOR_ADDRESS`, `JAX_NUM_PROCESSES`, `JAX_PROCESS_ID` (and on Cloud TPU / SLURM by jax's own cluster
detection). A run with none of these is a single process and needs no set-up.
"""
from __future__ import annotations

import contextlib
import os
from typing import Mapping

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

_initialized = False


def initialize(coordinator_address: str = "", num_processes: int = 0, process_id: int = -1,
               mode: str = "auto") -> None:
  """Starts `jax.distributed` when this run spans several processes.

  mode: "off" never initializes; "on" always does (cluster auto-detection fills what is unset);
  "auto" does when a coordinator address is known from the arguments or the environment.
  """
  global _initialized
  if _initialized or mode == "off":
    return
  address = coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS", "")
  count = num_processes or int(os.environ.get("JAX_NUM_PROCESSES", "0") or 0)
  index = process_id if process_id >= 0 else int(os.environ.get("JAX_PROCESS_ID", "-1") or -1)
  if mode == "auto" and not address:
    return
  kwargs = {}
  if address:
    kwargs["coordinator_address"] = address
  if count:
    kwargs["num_processes"] = count
  if index >= 0:
    kwargs["process_id"] = index
  jax.distributed.initialize(**kwargs)
  _initialized = True


def make_mesh(axes: Mapping[str, int], devices=None) -> Mesh:
  """A mesh over `devices` (default: all devices of all processes); one axis size may be -1 (takes the remaining
  devices).

  Axis order is the mapping's order, outermost first (put the data axis first so hosts split the batch).
  """
  names = tuple(axes)
  sizes = [int(axes[n]) for n in names]
  devices = jax.devices() if devices is None else list(devices)
  n_devices = len(devices)
  if sizes.count(-1) > 1:
    raise ValueError(f"mesh {dict(axes)}: at most one axis may be -1")
  known = int(np.prod([s for s in sizes if s != -1])) if sizes else 1
  if -1 in sizes:
    if n_devices % known:
      raise ValueError(f"mesh {dict(axes)} does not divide {n_devices} devices")
    sizes[sizes.index(-1)] = n_devices // known
  if int(np.prod(sizes)) != n_devices:
    raise ValueError(f"mesh {dict(zip(names, sizes))} needs {int(np.prod(sizes))} devices, found {n_devices}")
  return jax.make_mesh(tuple(sizes), names, axis_types=(jax.sharding.AxisType.Auto,) * len(names),
                       devices=devices)


def split_devices(rollout_devices: int, devices=None) -> tuple[list, list]:
  """(training devices, rollout devices): the last `rollout_devices` of `devices` (default all) sample rollouts
  beside the training mesh, which takes the rest; with 0 both are every device (rollouts take turns with training).
  """
  devices = jax.devices() if devices is None else list(devices)
  n = int(rollout_devices)
  if n == 0:
    return devices, devices
  if not 0 < n < len(devices):
    raise ValueError(f"{n} rollout devices leave none of the {len(devices)} devices to training")
  return devices[:-n], devices[-n:]


def put_global(tree, mesh: Mesh, batch_axes: tuple[str, ...] = ("data", "fsdp")):
  """Places host numpy arrays that every process holds in full onto `mesh`.

  Arrays are sharded on their leading axis over the mesh's `batch_axes` when that divides, else replicated.
  Works unchanged with one or many processes: each process supplies only the slices its own devices hold.
  """
  axes = tuple(a for a in batch_axes if a in mesh.shape)
  size = int(np.prod([mesh.shape[a] for a in axes])) if axes else 1

  def one(x):
    x = np.asarray(x)
    spec = P(axes if len(axes) > 1 else axes[0]) if axes and x.ndim and x.shape[0] % size == 0 else P()
    return jax.make_array_from_callback(x.shape, NamedSharding(mesh, spec), lambda index: x[index])

  return jax.tree.map(one, tree)


def place(tree, shardings):
  """Puts a pytree that every process holds in full (host or single-device arrays) onto `shardings` (a
  matching pytree of Shardings); each process copies only the slices of its own devices."""
  def one(x, sharding):
    host = np.asarray(x)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])
  return jax.tree.map(one, tree, shardings)


def process_mesh(mesh: Mesh) -> Mesh:
  """`mesh`'s devices as [processes, local devices] in process order: the layout of arrays whose rows are split
  over processes (each holding its own rows) before they move to their own sharding."""
  devices = sorted(mesh.devices.flat, key=lambda d: (d.process_index, d.id))
  return Mesh(np.array(devices).reshape(jax.process_count(), -1), ("processes", "local"))


def from_process_rows(x, sharding: NamedSharding, axis: int = 0) -> jax.Array:
  """A global array on `sharding` from this process's rows `x` along `axis`: the processes' rows, joined in
  process order, are the array (`jax.make_array_from_process_local_data`, then resharded on the devices)."""
  x = np.asarray(x)
  shape = list(x.shape)
  shape[axis] *= jax.process_count()
  split = NamedSharding(process_mesh(sharding.mesh), P(*([None] * axis), "processes"))
  return jax.device_put(jax.make_array_from_process_local_data(split, x, tuple(shape)), sharding)


def gather_rows(x) -> np.ndarray:
  """Every process's rows of a host array (numeric), joined in process order, on every process."""
  x = np.asarray(x)
  if jax.process_count() == 1:
    return x
  from jax.experimental import multihost_utils
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def gather_strings(values) -> list[str]:
  """Every process's strings, joined in process order, on every process (UTF-8 bytes through `gather_rows`)."""
  values = [str(v) for v in values]
  if jax.process_count() == 1:
    return values
  encoded = [v.encode() for v in values]
  width = int(gather_rows(np.array([max([len(e) for e in encoded] + [1])], np.int32)).max())
  table = np.zeros((len(encoded), width), np.uint8)
  for i, e in enumerate(encoded):
    table[i, :len(e)] = np.frombuffer(e, np.uint8)
  return [bytes(row).rstrip(b"\0").decode() for row in gather_rows(table)]


def process_rows(n: int) -> slice:
  """This process's rows of `n` rows split evenly over the processes in process order."""
  share = n // jax.process_count()
  return slice(jax.process_index() * share, (jax.process_index() + 1) * share)


def host_device():
  """A context that puts eager JAX work on this host's CPU device: small host-side math (advantages) then neither
  waits behind an accelerator's queued programs nor adds to them. Without a CPU backend (JAX_PLATFORMS lacking cpu)
  the default device; on a CPU-only host the two are the same."""
  try:
    return jax.default_device(jax.local_devices(backend="cpu")[0])
  except RuntimeError:
    return contextlib.nullcontext()


def to_host(x) -> np.ndarray:
  """A (possibly multi-process sharded) array gathered in full onto this host as numpy."""
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    from jax.experimental import multihost_utils
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(jax.device_get(x))
