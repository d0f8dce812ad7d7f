"""`nnx.split(model)` once per model instead of once per call: the graph walk costs ~1.7 ms for a small
QwenVL, and hashing its graphdef as a static jit argument another ~0.3 ms, both on every generate call.

`split(model)` returns a hashable static part (graphdef + state structure, hashed once) and the model's
current parameter arrays, read afresh from its Variable objects on every call, so in-place updates
(optimizer steps, `nnx.update`, re-sharding) are always seen. The cached walk is reused only while the graph
is unchanged: every module's attributes must be the very objects seen when it was cached (an `is` check per
attribute, ~50 us); replacing a submodule, a Variable or any other attribute triggers a fresh split. Changing a
Variable's metadata in place (e.g. `set_metadata`) is not detected: the forward pass does not read it, but call
`nnx.split` yourself if you rely on it.
"""
from __future__ import annotations

import weakref

import jax
from flax import nnx


class StaticModel:
  """The static half of a split model (graphdef and the state's tree structure), hashed once."""

  def __init__(self, graphdef, treedef):
    self.graphdef, self.treedef = graphdef, treedef
    self._hash = hash((graphdef, treedef))

  def __hash__(self) -> int:
    return self._hash

  def __eq__(self, other) -> bool:
    return self is other or (isinstance(other, StaticModel) and self._hash == other._hash
                             and self.graphdef == other.graphdef and self.treedef == other.treedef)

  def merge(self, leaves):
    """The model rebuilt from parameter arrays (inside a traced function)."""
    return nnx.merge(self.graphdef, jax.tree.unflatten(self.treedef, leaves))


def _handle(obj):
  """A weak reference where possible (the cache must not keep a model alive), else the object itself."""
  try:
    return weakref.ref(obj)
  except TypeError:
    return obj


def _resolve(handle):
  return handle() if type(handle) is weakref.ReferenceType else handle


def _snapshot(node) -> tuple:
  return tuple(_handle(value) for value in vars(node).values())


def _unchanged(node, snapshot: tuple) -> bool:
  values = vars(node).values()
  return len(values) == len(snapshot) and all(_resolve(h) is v for h, v in zip(snapshot, values))


class _Entry:
  def __init__(self, model):
    graphdef, state = nnx.split(model)
    leaves, treedef = jax.tree.flatten(state)
    self.static = StaticModel(graphdef, treedef)
    nodes = [node for _, node in nnx.iter_graph(model) if isinstance(node, nnx.Pytree)]
    self.nodes = [(weakref.ref(node), _snapshot(node)) for node in nodes]
    # The model's own Variables in state-leaf order (the state holds copies of them).
    variables = [_lookup(model, path) for path, _ in nnx.to_flat_state(state)]
    current = [v.get_raw_value() for v in variables]
    self.valid = len(current) == len(leaves) and all(a is b for a, b in zip(current, leaves))
    self.variables = variables  # (not weak-referenceable; the entry is dropped when the model is freed)

  def fresh(self) -> bool:
    for ref, snapshot in self.nodes:
      node = ref()
      if node is None or not _unchanged(node, snapshot):
        return False
    return self.valid

  def leaves(self) -> list[jax.Array]:
    return [v.get_raw_value() for v in self.variables]


def _lookup(model, path):
  node = model
  for key in path:
    node = node[key] if isinstance(key, int) else getattr(node, key)
  return node


_CACHE: dict[int, tuple[weakref.ref, _Entry | None]] = {}


def _plain_split(model) -> tuple[StaticModel, list[jax.Array]]:
  graphdef, state = nnx.split(model)
  leaves, treedef = jax.tree.flatten(state)
  return StaticModel(graphdef, treedef), leaves


def split(model) -> tuple[StaticModel, list[jax.Array]]:
  """(static part, current parameter arrays) of `model`; the graph walk is cached while the graph is unchanged.

  A model seen for the first time gets a plain split (building the cache entry costs about two splits, a loss for
  callers such as a trainer that merges a new model object for every call); from its second call on, it is cached.
  """
  key = id(model)
  hit = _CACHE.get(key)
  if hit is None or hit[0]() is not model:
    _CACHE[key] = (weakref.ref(model, lambda _, key=key: _CACHE.pop(key, None)), None)
    return _plain_split(model)
  entry = hit[1]
  if entry is None or not entry.fresh():
    entry = _Entry(model)
    if not entry.valid:  # unexpected layout: plain split every call
      return _plain_split(model)
    _CACHE[key] = (hit[0], entry)
  return entry.static, entry.leaves()
