"""Export a trained checkpoint as a Hugging Face directory that transformers loads.

  python -m geojax.export --config=configs/default.py --checkpoint=runs/default/grpo --out=runs/default/hf
  python -m geojax.export --config=configs/geo_r.py --config.model.hf_path=/models/Qwen2.5-VL-7B-Instruct \
      --checkpoint=runs/geo_r/grpo --out=/models/geo-r-7b --dtype=bfloat16

The config gives the architecture (the same config the run trained with); `--checkpoint` is a stage directory
of `geojax.train`, its latest step unless `--step`. Writes config.json and safetensors shards
(`geojax.models.save_hf`), then what transformers' processor needs (`geojax.models.save_hf_processor`): the image
processor config the model trained with, the tokenizer files, the chat template and generation_config.json. So
the standard recipe works offline on the directory: `AutoProcessor.from_pretrained(out)` and
`AutoModelForImageTextToText.from_pretrained(out)` (transformers' Qwen-VL processors need torchvision).

A LoRA run (model.lora.rank > 0) exports its merged weights the same way; `--adapter_out=DIR` also writes the
adapters as a PEFT directory (adapter_config.json, adapter_model.safetensors) for the base model.
"""
from __future__ import annotations

import os

import jax
import ml_collections
import numpy as np
from absl import flags, logging

from geojax import config as gconfig
from geojax import experiment
from geojax.config_schema import validate
from geojax.models import lora, save_hf, save_hf_processor
from geojax.models.peft_io import save_peft_adapter


def export(config: ml_collections.ConfigDict, checkpoint: str, out: str, step: int | None = None,
           dtype: str | None = None, adapter_out: str | None = None) -> str:
  """Writes the parameters of `checkpoint` (a stage directory) as a Hugging Face model in `out`.

  Under LoRA (model.lora.rank > 0: the checkpoint holds adapters) `out` gets the merged weights (base + adapters),
  and `adapter_out`, if given, the adapters as a PEFT directory for `peft.PeftModel.from_pretrained(base, dir)`."""
  if adapter_out and not config.model.lora.rank:
    raise gconfig.ConfigError("--adapter_out needs a LoRA run (config key 'model.lora.rank' is 0)")
  validate(config, reads_data=False)
  if not os.path.isdir(os.path.join(checkpoint, "checkpoints")):  # checked before anything is created
    raise FileNotFoundError(f"--checkpoint={checkpoint}: not a geojax.train stage directory (no checkpoints/)")
  mesh = experiment.setup_runtime(config)
  tokenizer = experiment.load_tokenizer_for(config)
  with jax.set_mesh(mesh):
    model = experiment.build_model(config, tokenizer, mesh, abstract=True)
    model, step = experiment.restore_params(model, checkpoint, step)
    stored = None if not dtype else np.dtype(dtype) if dtype != "bfloat16" else _bf16()
    if jax.process_index() == 0 and adapter_out:
      save_peft_adapter(model, adapter_out, config.model.hf_path or None, dtype=stored)
    model = lora.merged_model(model)  # the model itself without LoRA
    if jax.process_index() == 0:
      save_hf(model, out, dtype=stored)
      save_hf_processor(out, tokenizer, model.config, min_pixels=config.data.min_pixels,
                        max_pixels=config.data.max_pixels)
  return out


def _bf16():
  import ml_dtypes
  return ml_dtypes.bfloat16


def define_flags() -> None:
  gconfig.define_config_flag()
  flags.DEFINE_string("checkpoint", None, "A geojax.train stage directory (e.g. runs/default/grpo).", required=True)
  flags.DEFINE_string("out", None, "Output Hugging Face directory.", required=True)
  flags.DEFINE_integer("step", -1, "Checkpoint step (default: the latest).")
  flags.DEFINE_string("dtype", "", "Stored dtype (float32, bfloat16, float16); default: the parameters' own.")
  flags.DEFINE_string("adapter_out", "", "LoRA runs: also write the adapters here as a PEFT adapter directory.")


def main(argv: list[str]) -> None:
  del argv
  f = flags.FLAGS
  logging.set_verbosity(logging.WARNING)  # keep Orbax's per-save INFO lines off the console
  try:
    out = export(f.config, f.checkpoint, f.out, None if f.step < 0 else f.step, f.dtype or None,
                 f.adapter_out or None)
  except FileNotFoundError as e:
    raise SystemExit(f"error: {e}") from None
  if jax.process_index() == 0:
    print(f"wrote {out}")


if __name__ == "__main__":
  define_flags()
  gconfig.run(main)
