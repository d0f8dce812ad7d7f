"""Hugging Face checkpoints <-> QwenVL: one name table plus small per-tensor hooks (MaxText style).

`load_hf(path, dtype, mesh)` reads a directory written by transformers' `save_pretrained` (config.json and
safetensors, one file or shards with model.safetensors.index.json), tensor by tensor, and places each one
directly with its sharding. Unknown or missing tensors fail with their names. Names are those of the
published checkpoints (`model.layers.*`, `visual.*`, `lm_head.weight`), which transformers 5 also writes;
its in-memory names (`model.language_model.*`, `model.visual.*`) are accepted too. `save_hf(model, path)` writes
config.json, generation_config.json and safetensors shards with an index that transformers'
`Qwen2VLForConditionalGeneration` / `Qwen2_5_VLForConditionalGeneration` load as is. The decoder layers and
vision blocks are stacked (`STACKS`): loading stacks the checkpoint's per-layer tensors, saving unstacks them.
"""
from __future__ import annotations

import json
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from geojax.models.config import QwenVLConfig
from geojax.models.qwen_vl import QwenVL
from geojax.models.safetensors_io import SafetensorsFile, write_file
from geojax.models.sharding import named_sharding

# Our parameter path prefix -> checkpoint name prefix (the names of the published checkpoints, which
# transformers 5 save_pretrained also writes); first match wins, then ".kernel"/".embedding" -> ".weight".
NAME_MAP: tuple[tuple[str, str], ...] = (
    ("visual.patch_embed.kernel", "visual.patch_embed.proj.weight"),
    ("visual.merger.fc1.", "visual.merger.mlp.0."),
    ("visual.merger.fc2.", "visual.merger.mlp.2."),
    ("visual.", "visual."),
    ("language_model.lm_head.", "lm_head."),
    ("language_model.", "model."),
)
# Dense layers whose kernel contracts two of our dims (heads, head_dim) instead of one.
TWO_INPUT_DIMS = re.compile(r"(self_attn\.o_proj|attn\.proj)\.kernel$")
# Our stacked layers (geojax.models.scan): slice i of `<stack>.<rest>` [N, ...] is the checkpoint's
# `<stack>.{i}.<rest>` (e.g. language_model.layers.mlp.up_proj.kernel[i] <-> model.layers.{i}.mlp.up_proj.weight).
STACKS = ("language_model.layers", "visual.blocks")


def hf_name(path: str) -> str:
  for ours, theirs in NAME_MAP:
    if path.startswith(ours):
      path = theirs + path[len(ours):]
      break
  return re.sub(r"\.(kernel|embedding)$", ".weight", path)


def canonical_hf_name(name: str) -> str:
  """transformers-5 in-memory names (model.visual.*, model.language_model.*) -> checkpoint names."""
  if name.startswith("model.visual."):
    return name[len("model."):]
  if name.startswith("model.language_model."):
    return "model." + name[len("model.language_model."):]
  return name


def to_ours(path: str, tensor: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
  """Hook: a Hugging Face tensor in our layout (Linear [out, in] -> kernel [*in, *out]; conv -> [patch, D])."""
  if path == "visual.patch_embed.kernel":
    return tensor.reshape(tensor.shape[0], -1).T.reshape(shape)
  if path.endswith(".kernel"):
    return tensor.T.reshape(shape)
  return tensor.reshape(shape)


def to_hf(path: str, value: np.ndarray, config: QwenVLConfig) -> np.ndarray:
  """Inverse hook of `to_ours`."""
  v = config.vision
  if path == "visual.patch_embed.kernel":
    return value.T.reshape(v.hidden_size, v.in_channels, v.temporal_patch_size, v.patch_size, v.patch_size)
  if path.endswith(".kernel"):
    n_in = 2 if TWO_INPUT_DIMS.search(path) else 1
    return value.reshape(int(np.prod(value.shape[:n_in])), -1).T
  if path.endswith(".bias"):
    return value.reshape(-1)
  return value


def _flat_params(model_or_state) -> list[tuple[str, nnx.Variable]]:
  state = model_or_state if isinstance(model_or_state, nnx.State) else nnx.state(model_or_state, nnx.Param)
  return [(".".join(str(p) for p in path), var) for path, var in nnx.to_flat_state(state)]


def layer_paths(path: str, n_layers: int) -> list[str] | None:
  """The per-layer paths (`<stack>.{i}.<rest>`, as unstacked modules would name them) of a stacked parameter's
  slices, or None for a parameter outside the stacks."""
  for stack in STACKS:
    if path.startswith(stack + "."):
      return [f"{stack}.{i}{path[len(stack):]}" for i in range(n_layers)]
  return None


def _place_stacked(shape: tuple[int, ...], dtype, sharding, layers) -> jax.Array:
  """A global array [N, ...] from the N per-layer host tensors that the iterable `layers` yields in order, each copied
  straight into the shards this process's devices hold: no whole stacked tensor on the host (multi-host safe)."""
  index_map = sharding.addressable_devices_indices_map(shape)
  spans = {device: tuple(range(*s.indices(n)) for s, n in zip(index, shape)) for device, index in index_map.items()}
  buffers = {}  # one host buffer per distinct shard: (slices, array)
  for device, index in index_map.items():
    buffers.setdefault(spans[device], (index, np.empty([len(r) for r in spans[device]], dtype)))
  for i, tensor in enumerate(layers):
    for span, (index, buffer) in buffers.items():
      if i in span[0]:
        buffer[span[0].index(i)] = tensor[index[1:]]
  return jax.make_array_from_single_device_arrays(
      shape, sharding, [jax.device_put(buffers[spans[device]][1], device) for device in index_map])


def _index(path: str) -> dict[str, str]:
  """HF tensor name (canonical) -> file holding it."""
  index_file = os.path.join(path, "model.safetensors.index.json")
  if os.path.exists(index_file):
    with open(index_file) as f:
      weight_map = json.load(f)["weight_map"]
    return {canonical_hf_name(k): os.path.join(path, v) for k, v in weight_map.items()}
  files = sorted(f for f in os.listdir(path) if f.endswith(".safetensors"))
  if not files:
    raise FileNotFoundError(f"no .safetensors files in {path} (pickle checkpoints are not read)")
  out = {}
  for name in files:
    for key in SafetensorsFile(os.path.join(path, name)).keys():
      out[canonical_hf_name(key)] = os.path.join(path, name)
  return out


def load_hf(path: str, dtype=jnp.float32, mesh: jax.sharding.Mesh | None = None, *, param_dtype=None,
            **config_overrides) -> QwenVL:
  """QwenVL from a transformers `save_pretrained` directory; params in `param_dtype` (default `dtype`).

  With a mesh, every tensor goes straight to its NamedSharding (logical axes -> mesh by the rules table).
  `config_overrides` replace QwenVLConfig fields (e.g. remat_policy="dots", sharding_rules=...).
  """
  param_dtype = param_dtype or dtype
  with open(os.path.join(path, "config.json")) as f:
    config = QwenVLConfig.from_hf(json.load(f)).replace(**config_overrides)
  abstract = nnx.eval_shape(lambda: QwenVL(config, dtype=dtype, param_dtype=param_dtype, rngs=nnx.Rngs(0)))
  graphdef, state = nnx.split(abstract)
  params = [(p, var, layer_paths(p, var.shape[0])) for p, var in _flat_params(nnx.state(abstract, nnx.Param))]
  files = _index(path)
  wanted = {hf_name(one): p for p, _, layers in params for one in (layers or [p])}
  missing = sorted(set(wanted) - set(files))
  unexpected = sorted(set(files) - set(wanted) - ({"lm_head.weight"} if config.text.tie_word_embeddings else set()))
  if missing or unexpected:
    raise ValueError(f"checkpoint {path} does not match the {config.version} model: missing tensors {missing}, "
                     f"unexpected tensors {unexpected}")
  opened: dict[str, SafetensorsFile] = {}

  def read(our_path: str, expected: tuple[int, ...]) -> np.ndarray:
    name = hf_name(our_path)
    file = opened.setdefault(files[name], SafetensorsFile(files[name]))
    raw = file.tensor(_stored_name(file, name))
    tensor = to_ours(our_path, np.asarray(raw), expected).astype(param_dtype)
    if tensor.shape != expected:
      raise ValueError(f"tensor {name}: shape {raw.shape} does not fit {our_path} {expected}")
    return tensor

  values = {}
  for our_path, var, layers in params:
    expected = tuple(var.shape)
    sharding = None if mesh is None else named_sharding(mesh, var.get_metadata().get("logical_axes"), expected,
                                                        config.sharding_rules)
    if layers is None and mesh is None:
      values[our_path] = jnp.asarray(read(our_path, expected))
    elif layers is None:  # each process hands over only the slices its devices hold (multi-host safe)
      tensor = read(our_path, expected)
      values[our_path] = jax.make_array_from_callback(expected, sharding, lambda index, t=tensor: t[index])
    elif mesh is None:
      values[our_path] = jnp.asarray(np.stack([read(one, expected[1:]) for one in layers]))
    else:
      values[our_path] = _place_stacked(expected, np.dtype(param_dtype), sharding,
                                        (read(one, expected[1:]) for one in layers))
  flat = nnx.to_flat_state(state)
  for path_tuple, var in flat:
    key = ".".join(str(p) for p in path_tuple)
    if key in values:
      var.set_value(values[key])
  return nnx.merge(graphdef, nnx.from_flat_state(flat))


def _stored_name(file: SafetensorsFile, canonical: str) -> str:
  if canonical in file.entries:
    return canonical
  for key in file.entries:
    if canonical_hf_name(key) == canonical:
      return key
  raise KeyError(canonical)


def hf_state_dict(model: QwenVL, dtype=None) -> dict[str, np.ndarray]:
  """All parameters as a Hugging Face state dict of host numpy arrays (gathered tensor by tensor, a stacked
  parameter layer by layer)."""
  out = {}

  def put(path: str, value) -> None:
    value = np.asarray(jax.device_get(value))
    if dtype is not None:
      value = value.astype(dtype)
    out[hf_name(path)] = np.ascontiguousarray(to_hf(path, value, model.config))

  for path, var in _flat_params(model):
    layers = layer_paths(path, var.shape[0])
    for i, one in enumerate(layers or [path]):
      put(one, var[...] if layers is None else var[...][i])
  return out


def save_hf(model: QwenVL, path: str, *, dtype=None, max_shard_bytes: int = 4 << 30) -> None:
  """Write config.json, generation_config.json and safetensors shards with model.safetensors.index.json."""
  os.makedirs(path, exist_ok=True)
  config = model.config
  tensors = hf_state_dict(model, dtype)
  shards: list[dict[str, np.ndarray]] = [{}]
  size = 0
  for name in sorted(tensors):
    if shards[-1] and size + tensors[name].nbytes > max_shard_bytes:
      shards.append({})
      size = 0
    shards[-1][name] = tensors[name]
    size += tensors[name].nbytes
  weight_map = {}
  for i, shard in enumerate(shards):
    filename = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
    write_file(os.path.join(path, filename), shard)
    weight_map.update({name: filename for name in shard})
  total = sum(t.nbytes for t in tensors.values())
  _write_json(os.path.join(path, "model.safetensors.index.json"),
              {"metadata": {"total_size": total}, "weight_map": weight_map})
  stored = next(iter(tensors.values())).dtype
  hf_config = config.to_hf()
  hf_config["dtype"] = "bfloat16" if stored.name == "bfloat16" else str(stored)
  _write_json(os.path.join(path, "config.json"), hf_config)
  generation = {"bos_token_id": config.text.bos_token_id, "eos_token_id": config.text.eos_token_id}
  _write_json(os.path.join(path, "generation_config.json"), {k: v for k, v in generation.items() if v is not None})


def _write_json(path: str, obj) -> None:
  with open(path, "w") as f:
    json.dump(obj, f, indent=2, sort_keys=True)
    f.write("\n")
