"""LoRA and QLoRA adapters on a QwenVL through qwix (the library Tunix uses).

    model = apply_lora(model, LoraSpec(rank=16, alpha=32.0))                 # adapters on the decoder projections
    model = apply_lora(model, LoraSpec(rank=16, alpha=32.0, quantize="nf4")) # QLoRA: frozen base in nf4
    graphdef, adapters, base = split_params(model)       # adapters = the nnx.LoRAParam variables, the only trainable

qwix intercepts `jax.lax.dot_general` inside the model's methods: a Dense whose module path matches `targets`
(a regex over "/"-joined paths, e.g. language_model/layers/0/self_attn/q_proj) adds (x @ A) @ B * alpha / rank to
its output, A [in, rank] and B [rank, out] created as nnx.LoRAParam next to its kernel (B starts at zero: the
adapted model equals the base). With `quantize`, qwix replaces each targeted kernel by its int8 / nf4 QArray.

qwix wraps one method of a model; a QwenVL is entered through several (the forward, the log-prob passes, the
sampler's prefill and decode), so every entry point in `METHODS` is wrapped alike.
"""
from __future__ import annotations

import dataclasses
import re

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

# The decoder's attention and MLP projections; the vision tower's blocks (attention, MLP); both.
TARGETS = {
    "text": r"language_model/layers/\d+/(self_attn/(q|k|v|o)_proj|mlp/(gate|up|down)_proj)",
    "vision": r"visual/blocks/\d+/(attn/(qkv|proj)|mlp/(gate_proj|up_proj|down_proj|fc1|fc2))",
}
TARGETS["all"] = f"({TARGETS['text']})|({TARGETS['vision']})"
QUANTIZE = {"none": None, "int8": jnp.int8, "nf4": "nf4"}
# The QwenVL methods a caller enters the model by (nested calls run inside the outer one's interception).
METHODS = ("__call__", "hidden_states", "prefix_hidden_states", "embed", "image_features", "prefill", "decode_step",
           "decode_one")


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


def _provider(spec: LoraSpec):
  import qwix

  class Provider(qwix.LoraProvider):
    """qwix's LoRA, with dropout only where the model holds dropout rngs (`with_dropout`): the training losses, not
    the sampler, the reference or the old-log-prob passes."""

    def _get_current_rule_and_op_id(self, op_name, **kwargs):
      rule, op_id = super()._get_current_rule_and_op_id(op_name, **kwargs)
      if isinstance(rule, qwix.LoraRule) and rule.dropout > 0 and not _dropout_on():
        rule = dataclasses.replace(rule, dropout=0.0)
      return rule, op_id

  return Provider(module_path=spec.pattern, rank=spec.rank, alpha=spec.alpha, dropout=spec.dropout,
                  weight_qtype=QUANTIZE[spec.quantize])


def _dropout_on() -> bool:
  from qwix._src.utils import flax_util
  return isinstance(getattr(flax_util.get_current_module(), "qwix_rngs", None), nnx.Rngs)


def _init_inputs(config) -> tuple[tuple, dict]:
  """A one-image prompt (4 patches, one image token) that runs every text and vision projection once."""
  ids = np.array([[config.vision_start_token_id, config.image_token_id, config.vision_end_token_id, 0]], np.int32)
  v = config.vision
  pixels = jnp.zeros((4, v.in_channels * v.temporal_patch_size * v.patch_size ** 2), jnp.float32)
  return (jnp.asarray(ids),), dict(pixel_values=pixels, image_grid_thw=((1, 2, 2),))


def apply_lora(model, spec: LoraSpec, seed: int = 0):
  """A copy of `model` with adapters (and, with spec.quantize, a quantized base) on the modules `spec` targets.

  Runs the model once (jitted) on a tiny input: qwix creates the adapters (and quantizes) on first use. Raises
  ValueError when `targets` matches no module."""
  import qwix
  from qwix._src import model as qwix_model
  if has_lora(model):
    raise ValueError("the model already has LoRA adapters")
  provider = _provider(spec)
  args, kwargs = _init_inputs(model.config)
  graphdef, state = nnx.split(model)
  made = {}

  @jax.jit
  def init(state):  # one traced forward, not an eager one (op by op, ~30x slower on CPU)
    base = nnx.merge(graphdef, state)
    policies = _set_remat(base, None)  # adapters created inside a rematerialized layer would stay there
    adapted = qwix.apply_lora_to_model(base, provider, *args, rngs=nnx.Rngs(seed), **kwargs)
    _set_remat(adapted, policies)
    made["graphdef"], new_state = nnx.split(adapted)
    return new_state

  new_state = init(state)  # tracing sets made["graphdef"]
  model = nnx.merge(made["graphdef"], new_state)
  if provider.get_unused_rules():
    raise ValueError(f"LoRA targets {spec.targets!r} match no module of the model (paths look like "
                     "language_model/layers/0/self_attn/q_proj)")
  base = type(model)._unquantized_type  # the class qwix wrapped once; wrap every entry point
  wrapped = {name: qwix_model._apply_interceptors(getattr(base, name), provider, lambda out: out) for name in METHODS}
  model.__class__ = type(base.__name__, (base,), {"_unquantized_type": base, "lora_spec": spec, **wrapped})
  _fix_axes(model)
  return model


def _set_remat(model, policies: dict | None) -> dict:
  """Sets the towers' remat_policy attributes ("none" for all when `policies` is None); returns the old ones."""
  towers = {"language_model": model.language_model, "visual": model.visual}
  old = {k: m.remat_policy for k, m in towers.items()}
  for k, m in towers.items():
    m.remat_policy = "none" if policies is None else policies[k]
  return old


def _mesh_of(model):
  for leaf in jax.tree.leaves(nnx.state(model, nnx.Param)):
    sharding = getattr(leaf, "sharding", None)
    if isinstance(sharding, jax.sharding.NamedSharding) and sharding.mesh.size > 1:
      return sharding.mesh
  return None


def _fix_axes(model) -> None:
  """Logical axes of the adapters (qwix copies the kernel's): A [in, rank] sharded like the kernel's first input
  dim, B [rank, out] like its first output dim; the rank dim unsharded. Re-placed on the model's mesh."""
  from geojax.models.sharding import named_sharding
  mesh = _mesh_of(model)
  for _, module in nnx.iter_modules(model):
    for name in [k for k in vars(module) if k.endswith("_lora_a")]:
      kernel_axes = _kernel_axes(module, name[:-len("_lora_a")])
      n_in = len(getattr(module, "in_shape", (0,)))
      a, b = getattr(module, name), getattr(module, name[:-1] + "b")
      for var, axes in ((a, (kernel_axes[0], None)), (b, (None, kernel_axes[n_in]))):
        var.set_metadata("logical_axes", axes)
        if mesh is not None:
          var.set_value(jax.device_put(var[...], named_sharding(mesh, axes, var.shape,
                                                                model.config.sharding_rules)))


def _kernel_axes(module, name: str) -> tuple:
  kernel = getattr(module, name)
  if isinstance(kernel, nnx.Variable):
    return kernel.get_metadata()["logical_axes"]
  return kernel.array.qvalue.get_metadata()["logical_axes"]  # a quantized kernel (qwix WithAux of a QArray)


def has_lora(model) -> bool:
  return getattr(type(model), "lora_spec", None) is not None


def param_filter(model):
  """What trains: the adapters of a LoRA model, else every nnx.Param."""
  return nnx.LoRAParam if has_lora(model) else nnx.Param


def split_params(model):
  """(graphdef, trainable params, the rest): the adapters and the frozen base under LoRA."""
  return nnx.split(model, param_filter(model), ...)


def with_dropout(model, key: jax.Array):
  """`model` with LoRA dropout drawing from `key` (inside a jitted loss: the merged model is that trace's own)."""
  if has_lora(model) and type(model).lora_spec.dropout > 0:
    rngs = nnx.Rngs(dropout=key)
    for _, module in nnx.iter_modules(model):
      module.qwix_rngs = rngs
  return model


# ---------------------------------------------------------------- adapters as per-layer tensors, merged weights


def adapter_tensors(model) -> dict[str, tuple[jax.Array, jax.Array]]:
  """{kernel path ("language_model.layers.0.self_attn.q_proj.kernel"): (A [in, rank], B [rank, out])}: the one
  place that reads adapters by path (a scanned model with stacked layers would split its layer axis here)."""
  out = {}
  for path, module in nnx.iter_modules(model):
    for name in [k for k in vars(module) if k.endswith("_lora_a")]:
      kernel = name[:-len("_lora_a")]
      key = ".".join(str(p) for p in (*path, kernel))
      out[key] = (getattr(module, name)[...], getattr(module, kernel + "_lora_b")[...])
  return out


def set_adapter_tensors(model, tensors: dict[str, tuple]) -> None:
  """Inverse of `adapter_tensors` (in place; each given pair must exist in the model with the same shapes)."""
  modules = {".".join(str(p) for p in path): m for path, m in nnx.iter_modules(model)}
  for key, (a, b) in tensors.items():
    module_path, _, kernel = key.rpartition(".")
    module = modules[module_path]
    for suffix, value in (("_lora_a", a), ("_lora_b", b)):
      var = getattr(module, kernel + suffix)
      if tuple(value.shape) != tuple(var.shape):
        raise ValueError(f"adapter {key}{suffix}: shape {tuple(value.shape)} != {tuple(var.shape)}")
      sharding = getattr(var[...], "sharding", None)
      value = jnp.asarray(value, var.dtype)
      var.set_value(jax.device_put(value, sharding) if sharding is not None else value)


def scale(model) -> float:
  spec = type(model).lora_spec
  return spec.alpha / spec.rank


def merged_model(model):
  """A plain QwenVL (no adapters, float base) whose weights are the LoRA model's: W + A @ B * alpha / rank, a
  quantized base dequantized first. What the full-weight export writes."""
  from geojax.models.qwen_vl import QwenVL
  if not has_lora(model):
    return model
  import qwix
  adapters = adapter_tensors(model)
  s = scale(model)
  dtypes = {}

  def weight(path: str, module, name: str):
    var = getattr(module, name)
    if isinstance(var, nnx.Variable):
      w = var[...]
    else:  # quantized kernel
      w = qwix.dequantize(jax.tree.map(lambda v: v[...], var.array, is_leaf=lambda v: isinstance(v, nnx.Variable)))
    if path in adapters:
      a, b = adapters[path]
      w = w + (jnp.dot(a.astype(jnp.float32), b.astype(jnp.float32)) * s).reshape(w.shape).astype(w.dtype)
    dtypes[path] = w.dtype
    return w

  values = {}
  for path, module in nnx.iter_modules(model):
    for name, node in vars(module).items():
      if name.endswith(("_lora_a", "_lora_b")):
        continue
      key = ".".join(str(p) for p in (*path, name))
      if isinstance(node, nnx.Param) or type(node).__name__ == "WithAux":
        values[key] = weight(key, module, name)
  base_dtype = next(iter(dtypes.values()))
  plain = nnx.eval_shape(lambda: QwenVL(model.config, dtype=model.dtype, param_dtype=base_dtype, rngs=nnx.Rngs(0)))
  graphdef, params, rest = nnx.split(plain, nnx.Param, ...)
  flat = nnx.to_flat_state(params)
  for path, var in flat:
    var.set_value(values[".".join(str(p) for p in path)])
  return nnx.merge(graphdef, nnx.from_flat_state(flat), rest)


def count_trainable(model) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(model, param_filter(model))))


def target_regex_ok(pattern: str) -> bool:
  try:
    re.compile(pattern)
  except re.error:
    return False
  return True
