"""What an entry point builds from a config: the runtime and mesh, the tokenizer, the records, the example
transforms and the model (fresh, loaded from Hugging Face, or restored from a stage checkpoint).

`geojax.train`, `geojax.eval` and `geojax.export` share these, and so can a notebook or a user's own script.
"""
from __future__ import annotations

import json
import os
from typing import Sequence

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from geojax import config as gconfig
from geojax import runtime
from geojax.data.batching import ExampleTransform
from geojax.data.tokenizer import load_tokenizer
from geojax.models import QwenVL, load_hf, lora, param_shardings
from geojax.models.attention import check_backend
from geojax.models.platform import device_platform
from geojax.models.presets import PRESETS, tiny_config

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def setup_runtime(config: ml_collections.ConfigDict) -> jax.sharding.Mesh:
  """jax.distributed (when configured), matmul precision, the host allocator (runtime.keep_freed_memory) and the
  device mesh of the config (the training devices: all but the last rollout.devices)."""
  rc = config.runtime
  runtime.initialize(rc.coordinator_address, rc.num_processes, rc.process_id, rc.distributed)
  if rc.matmul_precision != "default":
    jax.config.update("jax_default_matmul_precision", rc.matmul_precision)
  if rc.get("compilation_cache_dir"):
    enable_compilation_cache(rc.compilation_cache_dir)
  keep = rc.get("keep_freed_memory", "auto")
  # before the backend starts where it can: XLA's threads take their malloc arena when they start
  early = keep == "on" or (keep == "auto" and runtime.only_cpu_possible())
  if early:
    runtime.keep_freed_memory()
  mesh = runtime.make_mesh(dict(rc.mesh), device_split(config)[0])
  if not early and keep == "auto" and device_platform(mesh.devices.flat[0]) == "cpu":
    runtime.keep_freed_memory()  # the threads keep their own arenas; the mmap and trim settings still apply
  return mesh


def device_split(config: ml_collections.ConfigDict) -> tuple[list, list]:
  """(training devices, rollout devices) of config.rollout.devices (`runtime.split_devices`)."""
  n = config.rollout.devices
  if n and jax.process_count() > 1:
    raise gconfig.ConfigError(f"config key 'rollout.devices' is {n}: rollout devices of their own are single-process "
                              f"only ({jax.process_count()} processes here)")
  try:
    return runtime.split_devices(n)
  except ValueError as e:
    raise gconfig.ConfigError(f"config key 'rollout.devices' is {n}: {e}") from e


def enable_compilation_cache(directory: str) -> None:
  """JAX's persistent compilation cache in `directory`, every program cached (JAX's default skips those compiled
  in under a second, and a GRPO step has many small ones). A cache already set (JAX_COMPILATION_CACHE_DIR, or by the
  caller, as the tests do) is left as it is."""
  if jax.config.jax_compilation_cache_dir:
    return
  jax.config.update("jax_compilation_cache_dir", os.path.expanduser(directory))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def load_tokenizer_for(config: ml_collections.ConfigDict):
  return load_tokenizer(config.model.tokenizer or config.model.hf_path)


def model_config(config: ml_collections.ConfigDict, tokenizer):
  """The architecture of `model.preset` ("tiny": the small default model sized by model.tiny.*)."""
  mc = config.model
  if mc.preset == "tiny":
    t = mc.tiny
    return tiny_config(t.version, vocab_size=tokenizer.vocab_size, image_token_id=tokenizer.image_pad_id,
                       video_token_id=tokenizer.token_to_id("<|video_pad|>") or tokenizer.image_pad_id + 1,
                       vision_start_token_id=tokenizer.vision_start_id, vision_end_token_id=tokenizer.vision_end_id,
                       eos_token_id=tokenizer.eos_id, bos_token_id=None, hidden_size=t.hidden_size,
                       num_layers=t.num_layers, vision_depth=t.vision_depth)
  return PRESETS[mc.preset]


def architecture(config: ml_collections.ConfigDict, tokenizer):
  """The model architecture of the config: `model.hf_path`'s config.json, else `model.preset`'s."""
  if config.model.hf_path:
    from geojax.models import QwenVLConfig
    with open(os.path.join(config.model.hf_path, "config.json")) as f:
      return QwenVLConfig.from_hf(json.load(f))
  return model_config(config, tokenizer)


def build_model(config: ml_collections.ConfigDict, tokenizer, mesh, abstract: bool = False, arch=None,
                shapes_only: bool = False) -> QwenVL:
  """The starting model: `model.hf_path` loaded onto the mesh, else `model.preset` initialized from the seed;
  with model.lora.rank > 0, that base with adapters (`geojax.models.lora`), from model.lora.init_from if given.

  With abstract=True only shapes and shardings (for restoring a checkpoint into, or compiling: geojax.plan);
  `arch` (a QwenVLConfig) replaces the config's architecture there. A LoRA model is always built (its frozen base
  is not in its checkpoints), unless `shapes_only`: everything abstract, a LoRA model's adapters and (quantized)
  frozen base too, for compiling only (geojax.plan).
  """
  spec = lora.LoraSpec.from_config(config.model.lora)
  if spec.enabled and shapes_only:
    return _build_base(config, tokenizer, mesh, True, arch, spec)
  if spec.enabled:
    model = _build_base(config, tokenizer, mesh, False, arch)
    model = lora.apply_lora(model, spec, seed=config.seed)
    if config.model.lora.init_from:
      from geojax.models.peft_io import load_peft_adapter
      load_peft_adapter(model, config.model.lora.init_from)
    return model
  return _build_base(config, tokenizer, mesh, abstract or shapes_only, arch)


def _build_base(config: ml_collections.ConfigDict, tokenizer, mesh, abstract: bool, arch,
                spec: lora.LoraSpec | None = None) -> QwenVL:
  """The base model (abstract: with `spec`'s adapters and quantized kernels, all as placed ShapeDtypeStructs)."""
  mc = config.model
  dtype, param_dtype = DTYPES[mc.dtype], DTYPES[mc.param_dtype]
  try:  # here, not in validate: the runtime (jax.distributed) is up
    check_backend(mc.attention, device_platform(mesh.devices.flat[0] if mesh is not None else jax.devices()[0]))
  except ValueError as e:
    raise gconfig.ConfigError(f"config key {e}") from None
  if mc.hf_path and not abstract:
    return load_hf(mc.hf_path, dtype=dtype, mesh=mesh, param_dtype=param_dtype, attention=mc.attention)
  arch = (arch or architecture(config, tokenizer)).replace(attention=mc.attention)
  make = lambda: QwenVL(arch, dtype=dtype, param_dtype=param_dtype, rngs=nnx.Rngs(config.seed))
  if spec is not None and spec.enabled:
    base = make
    make = lambda: lora.apply_lora(base(), spec, seed=config.seed)
  model = nnx.eval_shape(make) if abstract else make()
  graphdef, params, rest = nnx.split(model, nnx.Any(nnx.Param, lora.Frozen), ...)  # Frozen: a QLoRA base
  shardings = param_shardings(params, mesh)  # like params, with NamedShardings from the logical axes
  if abstract:
    params = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), params, shardings)
  else:
    params = runtime.place(params, shardings)
  return nnx.merge(graphdef, params, rest)


def restore_params(model: QwenVL, stage_dir: str, step: int | None = None) -> tuple[QwenVL, int]:
  """`model` with the parameters of a `geojax.train` stage checkpoint (latest step unless given)."""
  graphdef, params, rest = lora.split_params(model)
  if not os.path.isdir(os.path.join(stage_dir, "checkpoints")):  # checked first: the Checkpointer would create it
    raise FileNotFoundError(f"{stage_dir!r} is not a geojax.train stage directory (no checkpoints/ inside)")
  manager = runtime.Checkpointer(os.path.join(stage_dir, "checkpoints"), async_save=False)
  try:
    step = manager.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no complete checkpoint under {stage_dir}/checkpoints")
    restored, _, record = manager.restore({"params": params}, step=step, data=False)
  finally:
    manager.close()
  return nnx.merge(graphdef, restored["params"], rest), int(record.get("step", step))


def load_records(config: ml_collections.ConfigDict, split: str) -> Sequence[dict]:
  """Records of `split`; the built-in dataset is built into data.dir on first use (by process 0)."""
  dc = config.data
  if dc.source == "builtin":
    from geojax.data import builtin
    if jax.process_index() == 0:  # a no-op when data.dir already holds this exact dataset
      builtin.build(dc.dir, seed=config.seed, n_train=dc.n_train, n_test=dc.n_test, image_size=dc.image_size,
                    sea_fraction=dc.sea_fraction)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      multihost_utils.sync_global_devices("built-in dataset ready")
    return builtin.load_split(dc.dir, split)
  if dc.source == "arrayrecord":
    from geojax.data.records import ArrayRecordSource
    return ArrayRecordSource(dc.dir, split)
  raise gconfig.ConfigError(f"config key 'data.source' is {dc.source!r}; expected 'builtin' or 'arrayrecord'")


def example_transform(config: ml_collections.ConfigDict, tokenizer, mode: str) -> ExampleTransform:
  """Record -> features with one static padded length per mode (so each step compiles once)."""
  dc = config.data
  length = dc.max_prompt_len + (config.sft.max_target_len if mode == "sft" else 0)
  return ExampleTransform(tokenizer, prompt=dc.prompt, mode=mode, answer=dc.answer, min_pixels=dc.min_pixels,
                          max_pixels=dc.max_pixels, max_prompt_len=dc.max_prompt_len,
                          max_answer_len=config.sft.max_target_len, seq_buckets=(length,), decimals=dc.decimals,
                          think=dc.think, grid_buckets=[tuple(b) for b in dc.grid_buckets] or None)
