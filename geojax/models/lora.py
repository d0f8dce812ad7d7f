"""LoRA and QLoRA on a QwenVL: low-rank adapters inside geojax's `Dense`, the frozen base quantized by qwix.

    model = apply_lora(model, LoraSpec(rank=16, alpha=32.0))                 # adapters on the decoder projections
    model = apply_lora(model, LoraSpec(rank=16, alpha=32.0, quantize="nf4")) # QLoRA: frozen base in nf4
    graphdef, adapters, base = split_params(model)       # adapters = the nnx.LoRAParam variables, the only trainable

A Dense whose module path matches `targets` (a regex, full match, over "/"-joined per-layer paths such as
language_model/layers/0/self_attn/q_proj) gets an `Adapter`: y = x W + dropout(x) A B * alpha / rank, with A
[*in, rank] (he-uniform) and B [rank, *out] (zeros: the adapted model starts equal to the base) as nnx.LoRAParam.
With `quantize`, its kernel becomes a `QuantizedKernel`: qwix's QArray of the frozen weight (int8 per output
channel; nf4 in blocks of 64 inputs where they divide), multiplied by `qwix.dot_general`.

Why the adapter is geojax's and not qwix's `LoraProvider` (which the issue named): the decoder layers and vision
blocks are stacked and run by a `jax.lax.scan` (geojax.models.scan), and qwix 0.1.8 creates its adapters lazily
inside the call it intercepts, which cannot happen inside the scan; adapters made stacked beforehand gave exact
forwards, but their gradients failed ("Cannot extract graph node from different trace level"). An adapter that
is a plain variable of its layer is stacked with the layer, sliced per layer by the scan and rematerialized with
it, like every other weight. qwix keeps what it does without intercepting the model: the quantized arrays
(`qwix.quantize`, `qwix.dequantize`) and their matmul.
"""
from __future__ import annotations

import dataclasses
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from geojax.models.hf_io import STACKS, layer_paths
from geojax.models.layers import Dense

# The decoder's attention and MLP projections; the vision tower's blocks (attention, MLP); both.
TARGETS = {
    "text": r"language_model/layers/\d+/(self_attn/(q|k|v|o)_proj|mlp/(gate|up|down)_proj)",
    "vision": r"visual/blocks/\d+/(attn/(qkv|proj)|mlp/(gate_proj|up_proj|down_proj|fc1|fc2))",
}
TARGETS["all"] = f"({TARGETS['text']})|({TARGETS['vision']})"
QUANTIZE = {"none": None, "int8": jnp.int8, "nf4": "nf4"}
NF4_BLOCK = 64  # QLoRA's block size: one nf4 scale per 64 inputs
FSDP_AXES = ("embed", "vision_embed")  # the logical axes the sharding rules split over fsdp
WIDE = "lora_wide"  # see `_factor_axes`


@dataclasses.dataclass(frozen=True)
class LoraSpec:
  """rank 0 = no LoRA. targets: a TARGETS name or a regex. quantize: a QUANTIZE name."""
  rank: int = 0
  alpha: float = 16.0
  dropout: float = 0.0
  targets: str = "text"
  quantize: str = "none"

  @property
  def enabled(self) -> bool:
    return self.rank > 0

  @property
  def pattern(self) -> str:
    return TARGETS.get(self.targets, self.targets)

  @classmethod
  def from_config(cls, lc) -> "LoraSpec":
    return cls(int(lc.rank), float(lc.alpha), float(lc.dropout), str(lc.targets), str(lc.quantize))


class DropoutKey(nnx.Variable):
  """The PRNG key of an adapter's dropout (one per layer in a stack), set only inside a training loss."""


class Frozen(nnx.Variable):
  """A frozen, non-parameter array of the base (a quantized kernel's values and scales)."""


def _factor_axes(axes: tuple, shape: tuple, rank_first: bool) -> tuple:
  """The logical axes of an adapter factor: its kernel side's `axes` (of `shape`) and the rank's (None). A factor
  with no FSDP axis (A of down_proj and o_proj, B of q/k/v/gate/up: the kernel's embed side is the other factor's)
  would be whole on every chip of an FSDP mesh, 70% of the 7B adapters and of their optimizer state (BENCHMARKS.md,
  LoRA); its largest kernel-side dimension is named WIDE instead, which the sharding rules split over tensor and
  fsdp where that divides."""
  axes = tuple(axes)
  if axes and not any(a in FSDP_AXES for a in axes):
    wide = max(range(len(shape)), key=lambda i: shape[i])
    axes = tuple(WIDE if i == wide else a for i, a in enumerate(axes))
  return (None, *axes) if rank_first else (*axes, None)


class Adapter(nnx.Module):
  """dropout(x) A B * alpha / rank for a Dense contracting its input's last `len(in_shape)` dims; A and B float32,
  multiplied in the Dense's compute dtype."""

  def __init__(self, in_shape, out_shape, axes, spec: LoraSpec, *, dtype, rngs: nnx.Rngs):
    n_in, r = len(in_shape), spec.rank
    a = jax.nn.initializers.he_uniform()(rngs.params(), (math.prod(in_shape), r), jnp.float32)
    self.a = nnx.LoRAParam(a.reshape(*in_shape, r), logical_axes=_factor_axes(axes[:n_in], in_shape, rank_first=False))
    self.b = nnx.LoRAParam(jnp.zeros((r, *out_shape), jnp.float32),
                           logical_axes=_factor_axes(axes[n_in:], out_shape, rank_first=True))
    self.n_in, self.scale, self.rate, self.dtype = n_in, spec.alpha / r, spec.dropout, dtype
    self.key = nnx.data(None)  # a DropoutKey while a training loss runs (`with_dropout`)

  def __call__(self, x: jax.Array) -> jax.Array:
    if self.key is not None and self.rate > 0:
      keep = jax.random.bernoulli(self.key[...], 1.0 - self.rate, x.shape)
      x = jnp.where(keep, x / (1.0 - self.rate), 0).astype(x.dtype)
    contract = (tuple(range(x.ndim - self.n_in, x.ndim)), tuple(range(self.n_in)))
    h = jax.lax.dot_general(x.astype(self.dtype), self.a[...].astype(self.dtype), (contract, ((), ())))
    y = jax.lax.dot_general(h, self.b[...].astype(self.dtype), (((h.ndim - 1,), (0,)), ((), ())))
    return y * jnp.asarray(self.scale, self.dtype)


class QuantizedKernel(nnx.Module):
  """A frozen kernel as qwix's QArray (values and scales as `Frozen` variables with the kernel's logical axes);
  `stacked`: the kernel has a leading layer axis (each layer gets its own scales)."""

  def __init__(self, kernel: nnx.Variable, n_in: int, quantize: str, stacked: bool):
    import qwix
    w, axes = kernel[...], kernel.get_metadata()["logical_axes"]
    lead = int(stacked)
    contract = range(lead, lead + n_in)
    last = lead + n_in - 1
    tiled = {last: NF4_BLOCK} if quantize == "nf4" and w.shape[last] % NF4_BLOCK == 0 else {}
    q = qwix.quantize(w, QUANTIZE[quantize], channelwise_axes=[i for i in range(w.ndim) if i not in contract],
                      tiled_axes=tiled)
    self.qvalue = Frozen(q.qvalue, logical_axes=axes)
    self.scales = Frozen(q.scale, logical_axes=axes)
    self.quantize = quantize

  def qarray(self):
    import qwix
    return qwix.QArray(self.qvalue[...], self.scales[...], None, QUANTIZE[self.quantize])

  def dot_general(self, x: jax.Array, dimension_numbers) -> jax.Array:
    import qwix
    return qwix.dot_general(x, self.qarray(), dimension_numbers)

  def dequantized(self) -> jax.Array:
    import qwix
    return qwix.dequantize(self.qarray())


# ---------------------------------------------------------------- making a LoRA model


def _stack_of(path: str) -> str | None:
  return next((s for s in STACKS if path.startswith(s + ".")), None)


def _targeted(model, pattern: str) -> list[tuple[str, Dense, bool]]:
  """(dotted path, module, stacked) of the Dense modules `pattern` matches. A stacked Dense is matched on its
  per-layer paths: all its layers or none (a scan runs one layer body for all)."""
  regex = re.compile(pattern)
  out = []
  for path, module in nnx.iter_modules(model):
    if not isinstance(module, Dense):
      continue
    dotted = ".".join(str(p) for p in path)
    stacked = _stack_of(dotted) is not None
    names = layer_paths(dotted, module.kernel.shape[0]) if stacked else [dotted]
    hits = [bool(regex.fullmatch(n.replace(".", "/"))) for n in names]
    if any(hits) and not all(hits):
      raise ValueError(f"LoRA targets {pattern!r} match some layers of {dotted} but not all: the layers are one "
                       "scanned stack, so its adapters are on every layer or none")
    if all(hits):
      out.append((dotted, module, stacked))
  return out


def apply_lora(model, spec: LoraSpec, seed: int = 0):
  """`model` (in place) with adapters, and with spec.quantize a quantized frozen kernel, on the Dense modules
  `spec` targets; adapters are placed on the model's mesh by their logical axes. Raises ValueError when `targets`
  matches no module."""
  from geojax.models import scan
  if has_lora(model):
    raise ValueError("the model already has LoRA adapters")
  targets = _targeted(model, spec.pattern)
  if not targets:
    raise ValueError(f"LoRA targets {spec.targets!r} match no module of the model (paths look like "
                     "language_model/layers/0/self_attn/q_proj)")
  rngs = nnx.Rngs(seed)
  for _, dense, stacked in targets:
    axes = dense.kernel.get_metadata()["logical_axes"][int(stacked):]
    make = lambda: Adapter(dense.in_shape, dense.out_shape, axes, spec, dtype=dense.dtype, rngs=rngs)
    dense.lora = scan.stack([make() for _ in range(dense.kernel.shape[0])]) if stacked else make()
    if spec.quantize != "none":
      dense.kernel = QuantizedKernel(dense.kernel, len(dense.in_shape), spec.quantize, stacked)
  model.lora_spec = spec
  _place(model)
  return model


def _mesh_of(model):
  for leaf in jax.tree.leaves(nnx.state(model, nnx.Param)):
    sharding = getattr(leaf, "sharding", None)
    if isinstance(sharding, jax.sharding.NamedSharding) and sharding.mesh.size > 1:
      return sharding.mesh
  return None


def _place(model) -> None:
  """The adapters and quantized kernels onto the model's mesh (if it has one) by their logical axes."""
  from geojax.models.sharding import named_sharding
  mesh = _mesh_of(model)
  if mesh is None:
    return
  for _, var in nnx.to_flat_state(nnx.state(model, nnx.Any(nnx.LoRAParam, Frozen))):
    axes = var.get_metadata()["logical_axes"]
    var.set_value(jax.device_put(var[...], named_sharding(mesh, axes, var.shape, model.config.sharding_rules)))


def has_lora(model) -> bool:
  return getattr(model, "lora_spec", None) is not None


def param_filter(model):
  """What trains: the adapters of a LoRA model, else every nnx.Param."""
  return nnx.LoRAParam if has_lora(model) else nnx.Param


def split_params(model):
  """(graphdef, trainable params, the rest): the adapters and the frozen base under LoRA."""
  return nnx.split(model, param_filter(model), ...)


def _adapters(model) -> list[tuple[str, Adapter]]:
  """(dotted path of the adapted kernel, adapter) for every adapter of `model`."""
  return [(".".join(str(p) for p in path[:-1]) + ".kernel", m) for path, m in nnx.iter_modules(model)
          if isinstance(m, Adapter)]


def with_dropout(model, key: jax.Array):
  """`model` with LoRA dropout drawing from `key` (inside a jitted loss: the merged model is that trace's own);
  each adapter, and each layer of a stacked one, gets its own key."""
  if has_lora(model) and model.lora_spec.dropout > 0:
    for i, (_, adapter) in enumerate(_adapters(model)):
      k = jax.random.fold_in(key, i)
      layers = adapter.a.shape[0] if adapter.a.ndim == adapter.n_in + 2 else None
      adapter.key = DropoutKey(k if layers is None else jax.random.split(k, layers))
  return model


# ---------------------------------------------------------------- adapters as per-layer tensors, merged weights


def _per_layer(kernel: str, adapter: Adapter) -> list[tuple[str, int | None]]:
  """(per-layer kernel path, slice index or None) of an adapter: a stacked one has one per layer."""
  if adapter.a.ndim == adapter.n_in + 2:
    return [(p, i) for i, p in enumerate(layer_paths(kernel, adapter.a.shape[0]))]
  return [(kernel, None)]


def adapter_tensors(model) -> dict[str, tuple[jax.Array, jax.Array]]:
  """{per-layer kernel path ("language_model.layers.0.self_attn.q_proj.kernel"): (A [in, rank], B [rank, out])},
  in and out flattened: the one place that reads adapters by path (it splits a stack's layer axis)."""
  out = {}
  for kernel, adapter in _adapters(model):
    a, b = adapter.a[...], adapter.b[...]
    for path, i in _per_layer(kernel, adapter):
      ai, bi = (a, b) if i is None else (a[i], b[i])
      out[path] = (ai.reshape(-1, ai.shape[-1]), bi.reshape(bi.shape[0], -1))
  return out


def set_adapter_tensors(model, tensors: dict[str, tuple]) -> None:
  """Inverse of `adapter_tensors` (in place; each given pair must exist in the model with the same shapes)."""
  where = {path: (adapter, i) for kernel, adapter in _adapters(model) for path, i in _per_layer(kernel, adapter)}
  for key, pair in tensors.items():
    if key not in where:
      raise ValueError(f"adapter {key}: the model has no LoRA adapter there")
    adapter, i = where[key]
    for var, value, flat in ((adapter.a, pair[0], lambda s: (math.prod(s[:-1]), s[-1])),
                             (adapter.b, pair[1], lambda s: (s[0], math.prod(s[1:])))):
      full = var[...]
      shape = full.shape if i is None else full.shape[1:]
      if tuple(np.shape(value)) != flat(shape):
        raise ValueError(f"adapter {key}: shape {tuple(np.shape(value))} != {flat(shape)}")
      value = jnp.asarray(value, var.dtype).reshape(shape)
      new = value if i is None else full.at[i].set(value)
      sharding = getattr(full, "sharding", None)
      var.set_value(jax.device_put(new, sharding) if sharding is not None else new)


def scale(model) -> float:
  spec = model.lora_spec
  return spec.alpha / spec.rank


def _merged_kernel(dense: Dense) -> jax.Array:
  """W (dequantized if quantized) + A B * alpha / rank, per layer for a stacked Dense, in the kernel's dtype."""
  kernel = dense.kernel
  w = kernel.dequantized() if isinstance(kernel, QuantizedKernel) else kernel[...]
  adapter = dense.lora
  if adapter is None:
    return w
  a, b = adapter.a[...].astype(jnp.float32), adapter.b[...].astype(jnp.float32)
  delta = jnp.tensordot(a, b, axes=1) if a.ndim == adapter.n_in + 1 else jax.vmap(
      lambda a, b: jnp.tensordot(a, b, axes=1))(a, b)
  return (w.astype(jnp.float32) + delta * adapter.scale).astype(w.dtype)


def merged_model(model):
  """A plain QwenVL (no adapters, float base) whose weights are the LoRA model's: W + A B * alpha / rank, a
  quantized base dequantized first. What the full-weight export writes."""
  from geojax.models.qwen_vl import QwenVL
  if not has_lora(model):
    return model
  values = {path: var[...] for path, var in nnx.to_flat_state(nnx.state(model, nnx.All(nnx.Param,
                                                                                       nnx.Not(nnx.LoRAParam))))}
  for path, module in nnx.iter_modules(model):
    if isinstance(module, Dense) and (module.lora is not None or isinstance(module.kernel, QuantizedKernel)):
      values[(*path, "kernel")] = _merged_kernel(module)
  base_dtype = model.language_model.embed_tokens.embedding.dtype
  plain = nnx.eval_shape(lambda: QwenVL(model.config, dtype=model.dtype, param_dtype=base_dtype, rngs=nnx.Rngs(0)))
  graphdef, params, rest = nnx.split(plain, nnx.Param, ...)
  flat = nnx.to_flat_state(params)
  for path, var in flat:
    var.set_value(values[tuple(path)])
  return nnx.merge(graphdef, nnx.from_flat_state(flat), rest)


def count_trainable(model) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(model, param_filter(model))))
