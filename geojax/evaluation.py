"""Greedy evaluation of a model on a geolocation split: metrics, predictions JSONL, the metric table, a world map."""
from __future__ import annotations

import json
import os
import sys
import time

import jax
import ml_collections
import numpy as np

from geojax import experiment, runtime
from geojax.data.batch import joined_grid, put_batch
from geojax.data.pipeline import make_loader, rows_per_process
from geojax.geo import Gazetteer, GeoMetrics, format_table, haversine_km_np, level_matches, parse_answers
from geojax.models import QwenVL
from geojax.sampling import Sampler

PROMPT_KEYS = ("input_ids", "attention_mask", "position_ids", "pixel_values")


def decode_completions(tokenizer, tokens: np.ndarray, lengths: np.ndarray) -> list[str]:
  """Texts of generated rows, up to each row's length, without special tokens (EOS)."""
  return [tokenizer.decode([int(t) for t in row[:n]], skip_special_tokens=True) for row, n in zip(tokens, lengths)]


def evaluate(model: QwenVL, tokenizer, records, config: ml_collections.ConfigDict, out_dir: str | None = None,
             label: str = "", num_examples: int | None = None, rows: list | None = None) -> dict[str, float]:
  """Greedy predictions on `records`; returns GeoMetrics' result (and writes files into out_dir if given).

  rows: a list that receives one dict per prediction (predictions.jsonl's lines), on every process.
  Each process loads and decodes only its rows of every batch (when they divide); the completions are decoded
  and scored whole on every process.
  """
  ec = config.eval
  n = num_examples if num_examples is not None else ec.num_examples
  if n and n < len(records):
    records = _Head(records, n)
  mesh = _mesh(model)
  loader = make_loader(records, experiment.example_transform(config, tokenizer, "rl"), batch_size=ec.batch_size,
                       shuffle=False, num_epochs=1, name=f"eval {label}".strip(),
                       **rows_per_process(ec.batch_size, mesh is not None))
  gaz = Gazetteer.load()
  sampler = Sampler(model, max_new_tokens=ec.max_new_tokens, temperature=0.0, eos_token_id=tokenizer.eos_id,
                    pad_token_id=tokenizer.pad_id)
  metrics = GeoMetrics()
  rows = [] if rows is None else rows
  start = time.time()
  for batch in loader:
    if loader.row_shards > 1:  # this process's rows: the prompts placed from every process's, the truth gathered
      prompt = put_batch(batch, mesh, PROMPT_KEYS, shards=loader.row_shards)
      out = sampler(None, prompt["input_ids"], prompt["attention_mask"], prompt["pixel_values"],
                    joined_grid(batch, loader.row_shards), position_ids=prompt["position_ids"])
      batch = {"example_mask": runtime.gather_rows(batch["example_mask"]), "lat": runtime.gather_rows(batch["lat"]),
               "lon": runtime.gather_rows(batch["lon"]), "id": np.array(runtime.gather_strings(batch["id"]))}
    else:
      out = sampler(None, batch["input_ids"], batch["attention_mask"], batch["pixel_values"],
                    batch["image_grid_thw"], position_ids=batch["position_ids"])
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
  if loader.row_shards > 1:
    print(f"[eval {label}] process {jax.process_index()} of {jax.process_count()} decoded {loader.decoded} records",
          file=sys.stderr, flush=True)
  if out_dir and jax.process_index() == 0:
    write_outputs(out_dir, rows, result, label or "model", plot=ec.plot)
  return result


def _mesh(model: QwenVL):
  """The mesh the model's parameters live on, if they span several devices."""
  from flax import nnx
  leaf = jax.tree.leaves(nnx.state(model, nnx.Param), is_leaf=lambda x: isinstance(x, nnx.Variable))[0]
  sharding = getattr(leaf.get_raw_value() if isinstance(leaf, nnx.Variable) else leaf, "sharding", None)
  return sharding.mesh if isinstance(sharding, jax.sharding.NamedSharding) and sharding.mesh.size > 1 else None


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
