"""Evaluate a model on a geolocation split: predictions JSONL, the metric table and a world map.

  python -m geojax.eval --config=configs/default.py --checkpoint=runs/default/grpo [--step=N] [--out=DIR]
  python -m geojax.eval --config=configs/geo_r.py --config.model.hf_path=/models/Qwen2.5-VL-7B-Instruct

The config names the data (dataset, prompt, answer format) and the model architecture; `--checkpoint` is a stage
directory written by `geojax.train` (its parameters are read, not the optimizer state), otherwise the model of
the config is evaluated (`model.hf_path`, or a random init of `model.preset`). Greedy decoding.

Outputs in --out (default <checkpoint or workdir>/eval_<split>): predictions.jsonl (one line per example:
id, true and predicted coordinate, distance, parsed names, the raw completion), metrics.json, table.md and
map.png. This module also holds the model / dataset set-up shared by `geojax.train` and `geojax.export`.
"""
from __future__ import annotations

import json
import os
import time
from typing import Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import flags, logging
from flax import nnx

from geojax import config as gconfig
from geojax import runtime
from geojax.data.batching import ExampleTransform
from geojax.data.pipeline import make_loader
from geojax.data.tokenizer import load_tokenizer
from geojax.geo import Gazetteer, GeoMetrics, format_table, haversine_km_np, level_matches, parse_answers
from geojax.models import QwenVL, load_hf, param_shardings
from geojax.models.presets import PRESETS, tiny_config
from geojax.sampling import generate

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


# ------------------------------------------------------------------------------------------------ set-up
def setup_runtime(config: ml_collections.ConfigDict) -> jax.sharding.Mesh:
  """jax.distributed (when configured), matmul precision and the device mesh of the config."""
  rc = config.runtime
  runtime.initialize(rc.coordinator_address, rc.num_processes, rc.process_id, rc.distributed)
  if rc.matmul_precision != "default":
    jax.config.update("jax_default_matmul_precision", rc.matmul_precision)
  return runtime.make_mesh(dict(rc.mesh))


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


def build_model(config: ml_collections.ConfigDict, tokenizer, mesh, abstract: bool = False) -> QwenVL:
  """The starting model: `model.hf_path` loaded onto the mesh, else `model.preset` initialized from the seed.

  With abstract=True only shapes and shardings (for restoring a checkpoint into).
  """
  mc = config.model
  dtype, param_dtype = DTYPES[mc.dtype], DTYPES[mc.param_dtype]
  if mc.hf_path and not abstract:
    return load_hf(mc.hf_path, dtype=dtype, mesh=mesh, param_dtype=param_dtype)
  if mc.hf_path:
    from geojax.models import QwenVLConfig
    with open(os.path.join(mc.hf_path, "config.json")) as f:
      arch = QwenVLConfig.from_hf(json.load(f))
  else:
    arch = model_config(config, tokenizer)
  make = lambda: QwenVL(arch, dtype=dtype, param_dtype=param_dtype, rngs=nnx.Rngs(config.seed))
  model = nnx.eval_shape(make) if abstract else make()
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  shardings = param_shardings(params, mesh)  # like params, with NamedShardings from the logical axes
  if abstract:
    params = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), params, shardings)
  else:
    params = runtime.place(params, shardings)
  return nnx.merge(graphdef, params, rest)


def restore_params(model: QwenVL, stage_dir: str, step: int | None = None) -> tuple[QwenVL, int]:
  """`model` with the parameters of a `geojax.train` stage checkpoint (latest step unless given)."""
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
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
                          max_answer_len=config.sft.max_target_len, seq_buckets=(length,), decimals=dc.decimals)


# ------------------------------------------------------------------------------------------------ evaluation
def decode_completions(tokenizer, tokens: np.ndarray, lengths: np.ndarray) -> list[str]:
  """Texts of generated rows, up to each row's length, without special tokens (EOS)."""
  return [tokenizer.decode([int(t) for t in row[:n]], skip_special_tokens=True) for row, n in zip(tokens, lengths)]


def evaluate(model: QwenVL, tokenizer, records, config: ml_collections.ConfigDict, out_dir: str | None = None,
             label: str = "", num_examples: int | None = None) -> dict[str, float]:
  """Greedy predictions on `records`; returns GeoMetrics' result (and writes files into out_dir if given)."""
  ec = config.eval
  n = num_examples if num_examples is not None else ec.num_examples
  if n and n < len(records):
    records = _Head(records, n)
  loader = make_loader(records, example_transform(config, tokenizer, "rl"), batch_size=ec.batch_size,
                       shuffle=False, num_epochs=1, shard_index=0, shard_count=1, name=f"eval {label}".strip())
  gaz = Gazetteer.load()
  metrics = GeoMetrics()
  rows = []
  start = time.time()
  for batch in loader:
    out = generate(model, batch["input_ids"], batch["attention_mask"], batch["pixel_values"], batch["image_grid_thw"],
                   position_ids=batch["position_ids"], max_new_tokens=ec.max_new_tokens, temperature=0.0,
                   eos_token_id=tokenizer.eos_id, pad_token_id=tokenizer.pad_id)
    keep = np.asarray(batch["example_mask"]) > 0
    tokens, lengths = runtime.to_host(out.tokens)[keep], runtime.to_host(out.lengths)[keep]
    texts = decode_completions(tokenizer, tokens, lengths)
    parsed = parse_answers(texts, config.data.answer, gaz)
    true_lat = np.asarray(batch["lat"], np.float64)[keep]
    true_lon = np.asarray(batch["lon"], np.float64)[keep]
    valid = parsed.coord_valid
    plat, plon = np.where(valid, parsed.lat, 0.0), np.where(valid, parsed.lon, 0.0)
    country_ok, state_ok, city_ok = level_matches(gaz, plat, plon, true_lat, true_lon)
    metrics.update(parsed.lat, parsed.lon, true_lat, true_lon, valid=valid, country_ok=country_ok & valid,
                   admin1_ok=state_ok & valid, city_ok=city_ok & valid)
    distance = np.where(valid, haversine_km_np(plat, plon, true_lat, true_lon), np.nan)
    ids = np.asarray(batch["id"])[keep]
    for i in range(len(texts)):
      rows.append({"id": str(ids[i]), "true_lat": float(true_lat[i]), "true_lon": float(true_lon[i]),
                   "pred_lat": _num(parsed.lat[i]), "pred_lon": _num(parsed.lon[i]), "valid": bool(valid[i]),
                   "distance_km": _num(distance[i]), "country": parsed.country[i], "state": parsed.admin1[i],
                   "city": parsed.city[i], "reasoning": parsed.think[i], "completion": texts[i]})
  result = metrics.result()
  result["seconds"] = time.time() - start
  if out_dir and jax.process_index() == 0:
    write_outputs(out_dir, rows, result, label or "model", plot=ec.plot)
  return result


class _Head:
  """The first n records of a source."""

  def __init__(self, source, n: int):
    self._source, self._n = source, n

  def __len__(self) -> int:
    return self._n

  def __getitem__(self, index: int):
    if not 0 <= index < self._n:
      raise IndexError(index)
    return self._source[index]


def _num(x) -> float | None:
  x = float(x)
  return x if np.isfinite(x) else None


def write_outputs(out_dir: str, rows: list[dict], result: dict, label: str, plot: bool = True) -> None:
  """predictions.jsonl, metrics.json, table.md and (optionally) map.png in out_dir."""
  os.makedirs(out_dir, exist_ok=True)
  with open(os.path.join(out_dir, "predictions.jsonl"), "w") as f:
    for row in rows:
      f.write(json.dumps(row, ensure_ascii=False) + "\n")
  with open(os.path.join(out_dir, "metrics.json"), "w") as f:
    json.dump(result, f, indent=2)
  with open(os.path.join(out_dir, "table.md"), "w") as f:
    f.write(format_table({label: result}) + "\n")
  if plot and rows:
    from geojax.plots import world_map
    nan = float("nan")
    world_map(os.path.join(out_dir, "map.png"), [r["true_lat"] for r in rows], [r["true_lon"] for r in rows],
              [nan if r["pred_lat"] is None else r["pred_lat"] for r in rows],
              [nan if r["pred_lon"] is None else r["pred_lon"] for r in rows],
              valid=[r["valid"] for r in rows],
              title=f"{label}: median {result['median_km']:.0f} km, acc@750km {result['acc_750km']:.1%} "
                    f"(n={result['n']})")


# ------------------------------------------------------------------------------------------------ CLI
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
  mesh = setup_runtime(config)
  tokenizer = load_tokenizer_for(config)
  split = f.split or config.eval.split
  records = load_records(config, split)
  with jax.set_mesh(mesh):
    if f.checkpoint:
      model = build_model(config, tokenizer, mesh, abstract=True)
      model, step = restore_params(model, f.checkpoint, None if f.step < 0 else f.step)
      label = f"{os.path.basename(os.path.normpath(f.checkpoint))} step {step}"
      base = f.checkpoint
    else:
      model = build_model(config, tokenizer, mesh)
      label = os.path.basename(os.path.normpath(config.model.hf_path)) or f"{config.model.preset} (init)"
      base = config.workdir
    out_dir = f.out or os.path.join(base, f"eval_{split}")
    result = evaluate(model, tokenizer, records, config, out_dir, label,
                      num_examples=None if f.num_examples < 0 else f.num_examples)
  if jax.process_index() == 0:
    print(format_table({label: result}))
    print(f"wrote {out_dir}/predictions.jsonl, metrics.json, table.md, map.png")


if __name__ == "__main__":
  define_flags()
  gconfig.run(main)
