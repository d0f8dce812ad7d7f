"""The policy laid out for decoding: its parameters cast to the compute dtype and resharded by decode rules on a
rollout mesh, once per rollout (after each update), so that the decode loop never gathers a weight.

Training shards parameters over `fsdp` (gathered at every use: once per step in training, but once per TOKEN in a
decode loop a compiler does not hoist them out of). The decode rules (`DECODE_RULES`, the training table's
counterpart) keep every weight whole along `embed` and split heads, MLP and vocabulary over `tensor`: each chip
multiplies by its slices and the partial sums are all-reduced (activation-sized). Rows split over `data`. A
dimension the mesh axis does not divide stays whole (replicated), as in training.

    layout = RolloutLayout(model, mesh=rollout_mesh, dtype=jnp.bfloat16)
    sampler = Sampler(layout.model, ...)          # the policy's graph under the decode rules and dtype
    result = sampler(layout(params), ...)         # cast + reshard, then sample

Under LoRA the policy's parameters are its adapters and the decoding copy is the merged weights, W + A B * alpha /
rank (a QLoRA base dequantized first), in the compute dtype: `layout.model` is the plain model, and the decode loop
runs no adapter matmul and no dequantization. The frozen base is read from the policy given to the constructor.
"""
from __future__ import annotations

import re
import weakref

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from geojax.models import lora
from geojax.models.sharding import DEFAULT_RULES, logical_to_spec, named_sharding, param_shardings
from geojax.models.text import K_AXES

# The training rules without FSDP: parameters whole along the embedding, tensor-parallel over heads, MLP and
# vocabulary (so no step of the decode loop gathers a weight); activations as in training.
DECODE_RULES: tuple[tuple[str, object], ...] = tuple(
    (name, None if name in ("embed", "vision_embed") else axes) for name, axes in DEFAULT_RULES)


class RolloutLayout:
  """Casts and reshards a policy's parameters for sampling; `model` is the policy's graph (abstract: no arrays)
  with the decode rules and `dtype` as its compute and parameter dtype, for a `Sampler` (a LoRA policy's: the plain
  model, whose parameters are the merged weights)."""

  def __init__(self, policy, mesh: jax.sharding.Mesh, dtype=None, rules=DECODE_RULES):
    from geojax.models.qwen_vl import QwenVL
    self.dtype = jnp.dtype(dtype or policy.dtype)
    self.mesh, self.rules = mesh, tuple(rules)
    config = policy.config.replace(sharding_rules=self.rules)
    self.model = nnx.eval_shape(lambda: QwenVL(config, dtype=self.dtype, param_dtype=self.dtype,
                                               rngs=nnx.Rngs(0)))
    self.shardings = param_shardings(nnx.state(self.model, nnx.Param), mesh, self.rules)
    cast = lambda params: jax.tree.map(lambda x: x.astype(self.dtype), params)  # noqa: E731
    if lora.has_lora(policy):  # the adapters merged into the frozen base (`rest`), one program per rollout
      graphdef, _, self._rest = lora.split_params(policy)
      merged = lambda params, rest: nnx.state(lora.merged_model(nnx.merge(graphdef, params, rest)), nnx.Param)
      self._cast = jax.jit(lambda params, rest: cast(merged(params, rest)))
    else:
      self._rest = None
      self._cast = jax.jit(lambda params, rest: cast(params))
    self._last: tuple = ()  # (weak reference to the last input's first leaf, its layout)

  def __call__(self, params):
    """`params` (the policy's nnx.Param state, a LoRA policy's adapters; any sharding) cast (merged) and placed for
    decoding; the same input arrays give the same output without redoing it (dynamic sampling draws several batches
    per update)."""
    first = jax.tree.leaves(params)[0]
    if self._last and self._last[0]() is first:
      return self._last[1]
    out = jax.device_put(self._cast(params, self._rest), self.shardings)
    self._last = (weakref.ref(first), out)
    return out

  def abstract(self):
    """The decoding parameters as jax.ShapeDtypeStructs with their shardings (for `Sampler.lower`)."""
    return jax.tree.map(lambda v, s: v.replace(jax.ShapeDtypeStruct(v.shape, self.dtype, sharding=s.get_value())),
                        nnx.state(self.model, nnx.Param), self.shardings, is_leaf=lambda x: isinstance(x, nnx.Variable))

  def weight_bytes_per_chip(self) -> int:
    """Bytes of decoding parameters each chip holds."""
    total = 0
    for v, s in zip(jax.tree.leaves(nnx.state(self.model, nnx.Param)), jax.tree.leaves(self.shardings)):
      total += int(np.prod(s.shard_shape(v.shape))) * self.dtype.itemsize
    return total

  def kv_cache_bytes_per_chip(self, rows: int, length: int) -> int:
    """Bytes of the decode KV cache (keys and values of every layer, in the compute dtype) each chip holds for
    `rows` rows of `length` slots."""
    cfg = self.model.config.text
    shape = (rows, cfg.num_kv_heads, cfg.head_dim, length)
    spec = logical_to_spec(K_AXES, self.rules, shape, dict(self.mesh.shape))
    split = [int(np.prod([self.mesh.shape[a] for a in ((p,) if isinstance(p, str) else p or ())])) for p in spec]
    per_layer = int(np.prod([n // s for n, s in zip(shape, split + [1] * (len(shape) - len(split)))]))
    return 2 * cfg.num_layers * per_layer * self.dtype.itemsize


def rows_to_mesh(tree, mesh: jax.sharding.Mesh):
  """Arrays of rows (a sampler's results on the rollout mesh) moved onto `mesh` (training's), rows split over its
  batch axes where they divide."""
  return jax.tree.map(lambda x: jax.device_put(x, named_sharding(mesh, ("batch",) + (None,) * (x.ndim - 1),
                                                                 x.shape)), tree)


def loop_all_gathers(hlo: str) -> list[int]:
  """Element counts of the all-gathers inside the while-loop bodies of compiled HLO text (`compiled.as_text()`):
  what a decode loop gathers per token."""
  bodies = set(re.findall(r"body=%?([\w.\-]+)", hlo))
  sizes, inside = [], False
  for line in hlo.splitlines():
    head = re.match(r"^\s*%?([\w.\-]+) \(", line)
    if head and line.rstrip().endswith("{"):
      inside = head.group(1) in bodies
    if inside and re.search(r" all-gather(-start)?\(", line):
      shape = re.search(r"= \(?\w+\[([\d,]*)\]", line).group(1)
      sizes.append(int(np.prod([int(d) for d in shape.split(",") if d])))
  return sizes
