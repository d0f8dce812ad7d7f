"""LoRA adapters <-> PEFT adapter directories (adapter_config.json + adapter_model.safetensors).

`save_peft_adapter(model, dir)` writes what `peft.PeftModel.from_pretrained(base, dir)` loads onto the transformers
model of the same base; `load_peft_adapter(model, dir)` sets a geojax LoRA model's adapters from a directory peft
wrote. Layout: peft's lora_A.weight [r, in] is our A.T, lora_B.weight [out, r] our B.T, with in / out flattened
in the order of the HF Linear (`hf_io.to_hf`); both scale by lora_alpha / r. Per-layer names come from
`lora.adapter_tensors`, the one place that maps our parameter paths to per-layer adapters.
"""
from __future__ import annotations

import json
import os

import jax
import numpy as np

from geojax.models import lora
from geojax.models.hf_io import canonical_hf_name, hf_module_name, hf_name
from geojax.models.safetensors_io import SafetensorsFile, write_file

CONFIG_FILE, WEIGHTS_FILE = "adapter_config.json", "adapter_model.safetensors"
PREFIX = "base_model.model."
# adapter_config.json settings geojax's LoRA (x A B alpha / r on Dense layers) cannot honour, and their
# neutral values
UNSUPPORTED = {"use_dora": False, "use_rslora": False, "fan_in_fan_out": False, "rank_pattern": {}, "alpha_pattern": {},
               "modules_to_save": None, "layers_to_transform": None, "trainable_token_indices": None,
               "target_parameters": None, "lora_bias": False, "use_qalora": False, "alora_invocation_tokens": None}


def adapter_config(model, base_model_name_or_path: str | None = None) -> dict:
  """The adapter_config.json of `model`'s adapters (target_modules: the full names of the adapted modules)."""
  spec = model.lora_spec
  return {"peft_type": "LORA", "task_type": None, "r": spec.rank, "lora_alpha": spec.alpha,
          "lora_dropout": spec.dropout, "bias": "none", "init_lora_weights": True, "inference_mode": True,
          "base_model_name_or_path": base_model_name_or_path,
          "target_modules": sorted(hf_module_name(p) for p in lora.adapter_tensors(model)), **UNSUPPORTED}


def save_peft_adapter(model, path: str, base_model_name_or_path: str | None = None, dtype=None) -> str:
  """Write `model`'s adapters as a PEFT adapter directory; returns `path`."""
  if not lora.has_lora(model):
    raise ValueError("the model has no LoRA adapters (model.lora.rank is 0)")
  tensors = {}
  for kernel, (a, b) in lora.adapter_tensors(model).items():
    name = PREFIX + hf_module_name(kernel)
    for part, value in (("lora_A", a), ("lora_B", b)):
      value = np.asarray(jax.device_get(value)).T
      tensors[f"{name}.{part}.weight"] = np.ascontiguousarray(value if dtype is None else value.astype(dtype))
  os.makedirs(path, exist_ok=True)
  write_file(os.path.join(path, WEIGHTS_FILE), tensors)
  with open(os.path.join(path, CONFIG_FILE), "w") as f:
    json.dump(adapter_config(model, base_model_name_or_path), f, indent=2, sort_keys=True)
    f.write("\n")
  return path


def load_peft_adapter(model, path: str) -> None:
  """Set `model`'s adapters (in place) from a PEFT LoRA directory. Its r and lora_alpha must equal the model's;
  settings geojax's LoRA cannot honour (DoRA, rsLoRA, per-module ranks, biases, ...) and adapters on modules the model
  has none on are refused (ValueError naming them); modules the adapter does not cover keep B = 0 (no change)."""
  with open(os.path.join(path, CONFIG_FILE)) as f:
    cfg = json.load(f)
  spec = model.lora_spec
  problems = [f"peft_type {cfg.get('peft_type')!r} (expected 'LORA')"] if cfg.get("peft_type") != "LORA" else []
  problems += [f"{key} {cfg[key]!r}" for key in UNSUPPORTED if cfg.get(key)]  # every neutral value is falsy
  if cfg.get("bias", "none") != "none":
    problems.append(f"bias {cfg['bias']!r}")
  if cfg.get("r") != spec.rank or float(cfg.get("lora_alpha", -1)) != spec.alpha:
    problems.append(f"r={cfg.get('r')}, lora_alpha={cfg.get('lora_alpha')} (model.lora.rank={spec.rank}, "
                    f"model.lora.alpha={spec.alpha})")
  if problems:
    raise ValueError(f"PEFT adapter {path}: cannot load {', '.join(problems)}")
  ours = lora.adapter_tensors(model)
  by_hf = {hf_name(p): p for p in ours}
  file = SafetensorsFile(os.path.join(path, WEIGHTS_FILE))
  pairs: dict[str, dict] = {}
  for key in file.keys():
    module, part = _split_key(key)
    kernel = by_hf.get(canonical_hf_name(module + ".weight"))
    if kernel is None or part is None:
      raise ValueError(f"PEFT adapter {path}: tensor {key} has no LoRA module in the model (model.lora.targets "
                       f"{spec.targets!r})")
    pairs.setdefault(kernel, {})[part] = np.asarray(file.tensor(key)).T
  lora.set_adapter_tensors(model, {k: (p["lora_A"], p["lora_B"]) for k, p in pairs.items()})


def _split_key(key: str) -> tuple[str, str | None]:
  """'base_model.model.<module>.lora_A[.default].weight' -> (<module>, 'lora_A')."""
  name = key.removeprefix(PREFIX).removesuffix(".weight").removesuffix(".default")
  for part in ("lora_A", "lora_B"):
    if name.endswith("." + part):
      return name[:-len(part) - 1], part
  return name, None
