"""Evaluate a model on a geolocation split: predictions JSONL, the metric table and a world map.

  python -m geojax.eval --config=configs/default.py --checkpoint=runs/default/grpo [--step=N] [--out=DIR]
  python -m geojax.eval --config=configs/geo_r.py --config.model.hf_path=/models/Qwen2.5-VL-7B-Instruct

The config names the data (dataset, prompt, answer format) and the model architecture; `--checkpoint` is a stage
directory written by `geojax.train` (its parameters are read, not the optimizer state), otherwise the model of
the config is evaluated (`model.hf_path`, or a random init of `model.preset`). Greedy decoding.

Outputs in --out (default <checkpoint or workdir>/eval_<split>): predictions.jsonl (one line per example:
id, true and predicted coordinate, distance, parsed names, the raw completion), metrics.json, table.md and
map.png (`geojax.evaluation`).
"""
from __future__ import annotations

import os

import jax
from absl import flags, logging

from geojax import config as gconfig
from geojax.config_schema import validate
from geojax import evaluation, experiment
from geojax.geo import format_table


def define_flags() -> None:
  """The CLI flags (defined only when this module is the program, so importing it defines none)."""
  gconfig.define_config_flag()
  flags.DEFINE_string("checkpoint", "", "A geojax.train stage directory (e.g. runs/default/grpo).")
  flags.DEFINE_integer("step", -1, "Checkpoint step (default: the latest).")
  flags.DEFINE_string("split", "", "Dataset split (default: config eval.split).")
  flags.DEFINE_string("out", "", "Output directory (default: <checkpoint or workdir>/eval_<split>).")
  flags.DEFINE_integer("num_examples", -1, "Examples to evaluate (default: config eval.num_examples).")


def main(argv: list[str]) -> None:
  del argv
  f = flags.FLAGS
  logging.set_verbosity(logging.WARNING)  # keep Orbax's per-save INFO lines off the console
  config = f.config
  validate(config)
  if f.checkpoint and not os.path.isdir(os.path.join(f.checkpoint, "checkpoints")):  # before anything is created
    raise SystemExit(f"error: --checkpoint={f.checkpoint}: not a geojax.train stage directory (no checkpoints/)")
  mesh = experiment.setup_runtime(config)
  tokenizer = experiment.load_tokenizer_for(config)
  split = f.split or config.eval.split
  records = experiment.load_records(config, split)
  with jax.set_mesh(mesh):
    if f.checkpoint:
      model = experiment.build_model(config, tokenizer, mesh, abstract=True)
      model, step = experiment.restore_params(model, f.checkpoint, None if f.step < 0 else f.step)
      label = f"{os.path.basename(os.path.normpath(f.checkpoint))} step {step}"
      base = f.checkpoint
    else:
      model = experiment.build_model(config, tokenizer, mesh)
      label = os.path.basename(os.path.normpath(config.model.hf_path)) or f"{config.model.preset} (init)"
      base = config.workdir
    out_dir = f.out or os.path.join(base, f"eval_{split}")
    result = evaluation.evaluate(model, tokenizer, records, config, out_dir, label,
                                 num_examples=None if f.num_examples < 0 else f.num_examples)
  if jax.process_index() == 0:
    print(format_table({label: result}))
    print(f"wrote {out_dir}/predictions.jsonl, metrics.json, table.md, map.png")


if __name__ == "__main__":
  define_flags()
  gconfig.run(main)
