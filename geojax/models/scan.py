"""Identical layers as one module with stacked parameters, run by `jax.lax.scan` (MaxText's `scan_layers`).

An unrolled loop puts every layer's ops into the program, so compile time and HLO size grow with depth; a scan
compiles one layer body. `stack(modules)` turns N modules of one structure into a single module of that structure
whose every variable has a leading axis of N (logical axis "layers", which the sharding rules map to no mesh axis,
so each layer's slice keeps its own sharding); `scan(stacked, body, carry, xs)` runs `body(layer_i, carry, x_i)`
for i = 0..N-1 with `layer_i` that module at slice i.

Parameter paths lose the layer index: `language_model.layers.0.self_attn.q_proj.kernel` [D, H, hd] becomes
`language_model.layers.self_attn.q_proj.kernel` [num_layers, D, H, hd] (geojax.models.hf_io maps slice i to the
checkpoint's `model.layers.{i}.*`).
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

LAYERS = "layers"  # logical name of the stacked axis

REMAT = {
    "full": None,  # jax.checkpoint's default: save nothing, recompute the whole layer
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def stack(modules: Sequence[nnx.Module]) -> nnx.Module:
  """One module shaped like each of `modules` whose variables are theirs stacked on a new leading axis. The
  modules are built one after another as a list of them would be (same random draws), then stacked."""
  graphdef, _ = nnx.split(modules[0])
  flats = [nnx.to_flat_state(nnx.state(m)) for m in modules]
  paths = [path for path, _ in flats[0]]
  if any([path for path, _ in flat] != paths for flat in flats[1:]):
    raise ValueError("stack needs modules of one structure")
  leaves = []
  for i, (path, var) in enumerate(flats[0]):
    value = jnp.stack([flat[i][1].get_value() for flat in flats])
    axes = var.get_metadata().get("logical_axes") or (None,) * var.get_value().ndim
    leaves.append((path, var.replace(value, logical_axes=(LAYERS, *axes))))
  return nnx.merge(graphdef, nnx.from_flat_state(leaves))


def depth(stacked: nnx.Module) -> int:
  """N, the number of layers of a `stack`ed module."""
  return jax.tree.leaves(nnx.state(stacked))[0].shape[0]


def layer(stacked: nnx.Module, i: int) -> nnx.Module:
  """Layer i of a `stack`ed module as a module of its own (a copy of the slices, for tests and tools)."""
  graphdef, state = nnx.split(stacked)
  return nnx.merge(graphdef, jax.tree.map(lambda a: a[i], state))


def scan(stacked: nnx.Module, body: Callable[[nnx.Module, Any, Any], tuple[Any, Any]], carry, xs=None, *,
         remat_policy: str = "none", unroll: int | bool = 1):
  """`jax.lax.scan` of `body(layer_i, carry, x_i) -> (carry, y_i)` over the layers of `stacked` and xs (a pytree
  with a leading axis of N, or None); returns (carry, ys). With a remat policy other than "none" each layer is a
  `jax.checkpoint` with that policy (`REMAT`): what it does not save is recomputed in the backward pass."""
  graphdef, state = nnx.split(stacked)

  def step(carry, sliced):
    layer_state, x = sliced
    return body(nnx.merge(graphdef, layer_state), carry, x)

  if remat_policy != "none":
    step = jax.checkpoint(step, policy=REMAT[remat_policy], prevent_cse=False)
  return jax.lax.scan(step, carry, (state, xs), unroll=unroll)
