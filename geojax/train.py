"""Train a VLM to geolocate photos: the config's stages (SFT, GRPO) in order, with evaluations between them.

  python -m geojax.train --config=configs/default.py                 # tiny model, built-in data
  python -m geojax.train --config=configs/geo_r.py --config.model.hf_path=/models/Qwen2.5-VL-7B-Instruct
  python -m geojax.train --config=configs/default.py:ci --config.grpo.steps=8
  python -m geojax.train --config=configs/globe.py --print_config      # every key, its value and meaning

Each stage is a learner of `geojax.learners` and keeps its own Orbax checkpoints in <workdir>/<stage>/checkpoints
(params, optimizer state, step, RNG and the data-iterator state, saved asynchronously, atomically); it resumes
from the latest complete one, and a finished stage is skipped on rerun. The model is evaluated before the first
stage (when eval_before) and after each stage; the tables land in <workdir>/results.md. With mining.radius_km
set, GRPO trains on Geo-R's hard subset of the train split (`hard_samples`), chosen once and kept in
<workdir>/mining.json.
"""
from __future__ import annotations

import json
import os
import time

import jax
import ml_collections
import numpy as np
from absl import logging

from geojax import config as gconfig
from geojax.config_schema import validate
from geojax import evaluation, experiment, runtime
from geojax.data import mining
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
      records = train_records
      if name == "grpo" and config.mining.radius_km:
        records = hard_samples(config, model, tokenizer, train_records, writer)
      learner = LEARNERS[name].from_config(config, model, tokenizer, mesh, records, writer=writer, **roles)
      learner.restore()
      model = learner.fit(evaluate)
      if config.eval.at_stage_end:
        record(f"after {name.upper()}", model, name, learner.step)
  writer.close()
  if jax.process_index() == 0 and results:  # none when nothing is evaluated (a reward model's SFT)
    print(f"\n{config.eval.split} split, {results[next(iter(results))]['n']} examples, "
          f"wall time {time.time() - start:.0f}s\n{format_table(results)}", flush=True)
  return results


def hard_samples(config: ml_collections.ConfigDict, model, tokenizer, records, writer) -> mining.Subset:
  """Geo-R's hard subset of `records` for GRPO: the model predicts mining.num_examples of them (greedy); the
  true locations it gets within mining.radius_km are hotspots, and every record within that radius of a hotspot is
  dropped. mining.random keeps a random subset of the same size instead (Geo-R's control arm). The choice is saved
  in <workdir>/mining.json and reused while the mining keys and the split are unchanged (so a resumed GRPO reads
  the same records)."""
  mc = config.mining
  path = os.path.join(config.workdir, "mining.json")
  spec = {"radius_km": float(mc.radius_km), "num_examples": int(mc.num_examples), "random": bool(mc.random),
          "seed": int(config.seed), "n_train": len(records)}
  saved = None
  if os.path.exists(path):
    with open(path) as f:
      saved = json.load(f)
  if saved is None or saved.get("spec") != spec:
    t0 = time.time()
    rows: list[dict] = []
    n = min(mc.num_examples or len(records), len(records))
    evaluation.evaluate(model, tokenizer, records, config, None, "mining", num_examples=n, rows=rows)
    hot_lat, hot_lon = mining.hotspots(rows, mc.radius_km)
    lat = np.asarray([float(records[i]["lat"]) for i in range(len(records))])
    lon = np.asarray([float(records[i]["lon"]) for i in range(len(records))])
    kept = np.flatnonzero(mining.drop_near_hotspots(lat, lon, hot_lat, hot_lon, mc.radius_km))
    n_hard = len(kept)
    if mc.random:
      rng = np.random.default_rng([int(config.seed), 0x6d696e65])
      kept = np.sort(rng.choice(len(records), size=n_hard, replace=False))
    saved = {"spec": spec, "n_predicted": len(rows), "n_hotspots": len(hot_lat), "n_hard": n_hard,
             "seconds": round(time.time() - t0, 1), "kept": kept.tolist()}
    if jax.process_index() == 0:
      os.makedirs(config.workdir, exist_ok=True)
      with open(path, "w") as f:
        json.dump(saved, f)
  what = f"a random {len(saved['kept'])} (the hard subset's size)" if mc.random else f"{len(saved['kept'])}"
  writer.log(f"[mining] {saved['n_predicted']} train samples predicted, {saved['n_hotspots']} within "
             f"{mc.radius_km:g} km (hotspots); GRPO keeps {what} of {len(records)} train samples "
             f"({saved['n_hard']} farther than {mc.radius_km:g} km from every hotspot; {saved['seconds']:.0f}s)")
  if not saved["kept"]:
    raise gconfig.ConfigError(f"config key 'mining.radius_km' ({mc.radius_km:g}) drops every train sample")
  return mining.Subset(records, saved["kept"])


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
