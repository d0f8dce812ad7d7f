"""Train a VLM to geolocate photos: the config's stages (SFT, GRPO) in order, with evaluations between them.

  python -m geojax.train --config=configs/default.py                 # tiny model, built-in data
  python -m geojax.train --config=configs/geo_r.py --config.model.hf_path=/models/Qwen2.5-VL-7B-Instruct
  python -m geojax.train --config=configs/default.py:ci --config.grpo.steps=8
  python -m geojax.train --config=configs/globe.py --print_config      # every key, its value and meaning

Each stage is a learner of `geojax.learners` and keeps its own Orbax checkpoints in <workdir>/<stage>/checkpoints
(params, optimizer state, step, RNG and the data-iterator state, saved asynchronously, atomically); it resumes
from the latest complete one, and a finished stage is skipped on rerun. The model is evaluated before the first
stage (when eval_before) and after each stage; the tables land in <workdir>/results.md.
"""
from __future__ import annotations

import json
import os
import time

import jax
import ml_collections
from absl import logging

from geojax import config as gconfig
from geojax.config_schema import validate
from geojax import evaluation, experiment, runtime
from geojax.geo import format_table
from geojax.learners import LEARNERS


def train(config: ml_collections.ConfigDict, rewards=None) -> dict[str, dict]:
  """Runs the stages of `config` with evaluations; returns {row label: metrics} (also in workdir/results.*).

  rewards: replaces config.grpo's rewards in GRPO (a geojax.learners.RewardFunction, or a plain function
  (texts, batch, group) -> [B*G] rewards).
  """
  validate(config)
  mesh = experiment.setup_runtime(config)
  os.makedirs(config.workdir, exist_ok=True)
  writer = runtime.MetricWriter(os.path.join(config.workdir, "tb") if config.log.tensorboard else None)
  results: dict[str, dict] = {}
  start = time.time()
  with jax.set_mesh(mesh):
    tokenizer = experiment.load_tokenizer_for(config)
    train_records = experiment.load_records(config, "train")
    eval_records = experiment.load_records(config, config.eval.split)
    writer.log(f"data: {len(train_records)} train / {len(eval_records)} {config.eval.split} records; "
               f"devices: {jax.device_count()} ({jax.process_count()} processes), mesh {dict(mesh.shape)}")
    model = experiment.build_model(config, tokenizer, mesh)

    def evaluate(m, label, out_dir):
      t0 = time.time()
      result = evaluation.evaluate(m, tokenizer, eval_records, config, out_dir, label)
      writer.log(f"[eval] {label}: median {result['median_km']:.0f} km, acc@750km {result['acc_750km']:.1%} "
                 f"({time.time() - t0:.0f}s)")
      return result

    def record(label, m, slug, step):
      results[label] = evaluate(m, label, os.path.join(config.workdir, f"eval_{slug}"))
      writer.write(step, results[label], prefix=f"eval/{slug}/")  # at the step the model was trained to
      _write_results(config.workdir, results)

    if config.eval_before:
      record("untrained" if not config.model.hf_path else "base", model, "start", 0)
    for name in config.stages:
      roles = {"rewards": rewards} if name == "grpo" and rewards is not None else {}
      learner = LEARNERS[name].from_config(config, model, tokenizer, mesh, train_records, writer=writer, **roles)
      learner.restore()
      model = learner.fit(evaluate)
      if config.eval.at_stage_end:
        record(f"after {name.upper()}", model, name, learner.step)
  writer.close()
  if jax.process_index() == 0:
    print(f"\n{config.eval.split} split, {results[next(iter(results))]['n'] if results else 0} examples, "
          f"wall time {time.time() - start:.0f}s\n{format_table(results)}", flush=True)
  return results


def _write_results(workdir: str, results: dict) -> None:
  if jax.process_index() != 0:
    return
  with open(os.path.join(workdir, "results.json"), "w") as f:
    json.dump(results, f, indent=2)
  with open(os.path.join(workdir, "results.md"), "w") as f:
    f.write(format_table(results) + "\n")


def main(argv: list[str]) -> None:
  del argv
  from absl import flags
  logging.set_verbosity(logging.WARNING)  # keep Orbax's per-save INFO lines off the console
  try:
    train(flags.FLAGS.config)
  except runtime.NonFiniteError as e:
    raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
  gconfig.define_config_flag()
  gconfig.run(main)
