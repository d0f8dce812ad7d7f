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
from geojax.models import save_hf, save_hf_processor


def export(config: ml_collections.ConfigDict, checkpoint: str, out: str, step: int | None = None,
           dtype: str | None = None) -> str:
  """Writes the parameters of `checkpoint` (a stage directory) as a Hugging Face model in `out`."""
  validate(config, reads_data=False)
  if not os.path.isdir(os.path.join(checkpoint, "checkpoints")):  # checked before anything is created
    raise FileNotFoundError(f"--checkpoint={checkpoint}: not a geojax.train stage directory (no checkpoints/)")
  mesh = experiment.setup_runtime(config)
  tokenizer = experiment.load_tokenizer_for(config)
  with jax.set_mesh(mesh):
    model = experiment.build_model(config, tokenizer, mesh, abstract=True)
    model, step = experiment.restore_params(model, checkpoint, step)
    if jax.process_index() == 0:
      save_hf(model, out, dtype=None if not dtype else np.dtype(dtype) if dtype != "bfloat16" else _bf16())
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


def main(argv: list[str]) -> None:
  del argv
  f = flags.FLAGS
  logging.set_verbosity(logging.WARNING)  # keep Orbax's per-save INFO lines off the console
  try:
    out = export(f.config, f.checkpoint, f.out, None if f.step < 0 else f.step, f.dtype or None)
  except FileNotFoundError as e:
    raise SystemExit(f"error: {e}") from None
  if jax.process_index() == 0:
    print(f"wrote {out}")


if __name__ == "__main__":
  define_flags()
  gconfig.run(main)
