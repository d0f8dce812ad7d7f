"""Export a trained checkpoint as a Hugging Face directory that transformers loads.

  python -m geojax.export --config=configs/default.py --checkpoint=runs/default/grpo --out=runs/default/hf
  python -m geojax.export --config=configs/geo_r.py --config.model.hf_path=/models/Qwen2.5-VL-7B-Instruct \
      --checkpoint=runs/geo_r/grpo --out=/models/geo-r-7b --dtype=bfloat16

The config gives the architecture (the same config the run trained with); `--checkpoint` is a stage directory
of `geojax.train`, its latest step unless `--step`. Writes config.json, generation_config.json, safetensors
shards (geojax.models.save_hf) and, when the tokenizer came from a directory or is the tiny one, its
tokenizer.json, so `transformers.AutoModelForImageTextToText.from_pretrained(out)` works offline.
"""
from __future__ import annotations

import os
import shutil

import jax
import ml_collections
import numpy as np
from absl import flags, logging

from geojax import config as gconfig
from geojax import eval as geval
from geojax.models import save_hf, save_hf_processor

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "chat_template.json",
                    "preprocessor_config.json", "special_tokens_map.json", "added_tokens.json")


def export(config: ml_collections.ConfigDict, checkpoint: str, out: str, step: int | None = None,
           dtype: str | None = None) -> str:
  """Writes the parameters of `checkpoint` (a stage directory) as a Hugging Face model in `out`."""
  mesh = geval.setup_runtime(config)
  tokenizer = geval.load_tokenizer_for(config)
  with jax.set_mesh(mesh):
    model = geval.build_model(config, tokenizer, mesh, abstract=True)
    model, step = geval.restore_params(model, checkpoint, step)
    if jax.process_index() == 0:
      save_hf(model, out, dtype=None if not dtype else np.dtype(dtype) if dtype != "bfloat16" else _bf16())
      copy_tokenizer(config, out)
      save_hf_processor(out, tokenizer, model.config, min_pixels=config.data.min_pixels,
                        max_pixels=config.data.max_pixels)
  return out


def _bf16():
  import ml_dtypes
  return ml_dtypes.bfloat16


def copy_tokenizer(config: ml_collections.ConfigDict, out: str) -> None:
  """Copies the tokenizer files next to the weights (from model.hf_path / model.tokenizer dir, or the tiny one)."""
  source = config.model.tokenizer or config.model.hf_path
  if source and os.path.isdir(source):
    for name in _TOKENIZER_FILES:
      if os.path.exists(os.path.join(source, name)):
        shutil.copy(os.path.join(source, name), os.path.join(out, name))
  elif source == "tiny":
    from geojax.data.tokenizer import TINY_TOKENIZER_PATH
    shutil.copy(TINY_TOKENIZER_PATH, os.path.join(out, "tokenizer.json"))


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
  out = export(f.config, f.checkpoint, f.out, None if f.step < 0 else f.step, f.dtype or None)
  if jax.process_index() == 0:
    print(f"wrote {out}")


if __name__ == "__main__":
  define_flags()
  gconfig.run(main)
