"""Sharding in three layers (MaxText style): mesh axes, one table of logical-axis rules, annotations.

Parameters carry logical axis names in their `logical_axes` metadata and activations are annotated with
`shard(x, axes, rules)`. `DEFAULT_RULES` maps logical names to the mesh axes `data`, `fsdp`, `tensor`; a
config can override it (`QwenVLConfig.sharding_rules`). A dimension is left unsharded when its size is not
divisible by the mesh axes it maps to (e.g. 2 KV heads on a 4-way tensor axis), so every model runs on
every mesh.
"""
from __future__ import annotations

import contextlib
import contextvars
from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")

DEFAULT_RULES: tuple[tuple[str, Any], ...] = (
    # activations
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("act_embed", None),
    ("act_heads", "tensor"),
    ("act_mlp", "tensor"),
    ("act_vocab", "tensor"),
    ("cache_length", None),
    # parameters
    ("layers", None),  # the stacked axis of scanned layers (geojax.models.scan): every device holds all layers
    ("embed", "fsdp"),
    ("vocab", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("mlp", "tensor"),
    ("norm", None),
    ("vision_embed", "fsdp"),
    ("vision_heads", "tensor"),
    ("vision_mlp", "tensor"),
    ("patch", None),
    ("merge", "tensor"),
    ("lora_wide", ("tensor", "fsdp")),  # an adapter factor without an embed axis (geojax.models.lora)
)


_ACTIVE_RULES: contextvars.ContextVar = contextvars.ContextVar("geojax_sharding_rules", default=None)


@contextlib.contextmanager
def rules_context(rules):
  """Use `rules` (None = DEFAULT_RULES) for `shard` calls inside; the model sets its config's rules."""
  token = _ACTIVE_RULES.set(rules)
  try:
    yield
  finally:
    _ACTIVE_RULES.reset(token)


def make_mesh(shape: Sequence[int] = (1, -1, 1), axis_names: Sequence[str] = MESH_AXES,
              devices: Sequence[jax.Device] | None = None) -> jax.sharding.Mesh:
  """A mesh with Auto axis types (jax.make_mesh defaults to Explicit). One -1 in `shape` takes the rest."""
  devices = list(devices if devices is not None else jax.devices())
  shape = list(shape)
  if shape.count(-1) > 1:
    raise ValueError(f"at most one -1 in mesh shape {shape}")
  if -1 in shape:
    known = int(np.prod([s for s in shape if s != -1]))
    shape[shape.index(-1)] = len(devices) // known
  if int(np.prod(shape)) != len(devices):
    raise ValueError(f"mesh shape {tuple(shape)} needs {int(np.prod(shape))} devices, have {len(devices)}")
  return jax.make_mesh(tuple(shape), tuple(axis_names), axis_types=(jax.sharding.AxisType.Auto,) * len(shape),
                       devices=devices)


def logical_to_spec(axes: Sequence[str | None], rules=None, shape: Sequence[int] | None = None,
                    mesh_shape: dict[str, int] | None = None) -> PartitionSpec:
  """PartitionSpec for logical `axes`; with `shape` and `mesh_shape`, non-divisible dims stay unsharded."""
  rules = rules if rules is not None else _ACTIVE_RULES.get()
  table = dict(DEFAULT_RULES if rules is None else rules)
  used: set[str] = set()
  spec = []
  for i, name in enumerate(axes):
    target = table.get(name) if name is not None else None
    mesh_axes = (target,) if isinstance(target, str) else tuple(target or ())
    mesh_axes = tuple(a for a in mesh_axes if a not in used and (mesh_shape is None or a in mesh_shape))
    if mesh_axes and shape is not None and mesh_shape is not None:
      size = int(np.prod([mesh_shape[a] for a in mesh_axes]))
      if shape[i] % size:
        mesh_axes = ()
    used.update(mesh_axes)
    spec.append(None if not mesh_axes else mesh_axes[0] if len(mesh_axes) == 1 else mesh_axes)
  return PartitionSpec(*spec)


def named_sharding(mesh: jax.sharding.Mesh, axes: Sequence[str | None], shape: Sequence[int],
                   rules=None) -> NamedSharding:
  return NamedSharding(mesh, logical_to_spec(axes, rules, shape, dict(mesh.shape)))


def shard(x: jax.Array, axes: Sequence[str | None], rules=None) -> jax.Array:
  """Constrain an activation to its logical sharding under the current mesh (`jax.set_mesh`); no-op without one."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    return x
  spec = logical_to_spec(axes, rules, x.shape, dict(mesh.shape))
  return jax.lax.with_sharding_constraint(x, spec)


def param_shardings(state, mesh: jax.sharding.Mesh, rules=None):
  """NamedShardings (same tree as `state`, an nnx State of Variables with `logical_axes` metadata; a
  Variable without it is replicated). Use for optimizer states too: nnx.state(optimizer) keeps the metadata."""
  from flax import nnx

  def one(var):
    axes = var.get_metadata().get("logical_axes") or (None,) * len(var.shape)
    return var.replace(named_sharding(mesh, axes, var.shape, rules))

  return jax.tree.map(one, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def shard_model(model, mesh: jax.sharding.Mesh, rules=None):
  """Move every parameter of an nnx model onto `mesh` by its logical axes (in place); returns the model."""
  from flax import nnx
  if rules is None:
    rules = getattr(getattr(model, "config", None), "sharding_rules", None)
  state = nnx.state(model)
  shardings = param_shardings(state, mesh, rules)
  nnx.update(model, jax.device_put(state, shardings))
  return model
