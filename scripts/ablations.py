"""The two papers' ablations on the built-in data, over seeds: a Markdown table (mean and spread) and a PNG chart.

Geo-R's shape (configs/geo_r.py:builtin): coordinates-only SFT vs Chain-of-Region SFT; then CoR SFT + GRPO on a
random subset vs on the hard-mined subset (the same size). GLOBE's shape (configs/globe.py:builtin): CoT SFT only;
+ GRPO with the accuracy reward; + accuracy and visual clues; + all rewards (format, and locatability from a reward
model this script trains first: configs/globe.py:locatability, exported).

  python scripts/ablations.py                       # seeds 0 1 2, the recipes as they are (hours on 2 cores)
  python scripts/ablations.py --reduced             # seed 0, SFT 300 steps of 16 / GRPO 30 steps, 100 test tiles
  python scripts/ablations.py --seeds 0 1 --override grpo.steps=50 --out runs/ablations_50

Arms that share an SFT stage train it once per seed (its checkpoint is copied into their work directories, where
a finished stage is skipped). A seed sets the model init, the data order, the sampling and the built-in dataset
(each seed has its own, in runs/builtin_data_seed<k>; seed 0's is the main job's runs/builtin_data). Results go to
<out>/ablations.md, .json and .png; a rerun reuses the arms already finished.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

from geojax.runtime.numerics import pin_cpu_numerics  # noqa: E402

pin_cpu_numerics()  # before JAX starts a backend, as the entry points do

import ml_collections  # noqa: E402
import numpy as np  # noqa: E402

from geojax import config as gconfig  # noqa: E402
from geojax import export, train  # noqa: E402

GEO_R, GLOBE = f"{ROOT}/configs/geo_r.py:builtin", f"{ROOT}/configs/globe.py:builtin"
LOCATABILITY = f"{ROOT}/configs/globe.py:locatability"
GLOBE_REWARDS = {"globe_accuracy": 1.0, "globe_visual": 0.5, "globe_format": 1.0, "locatability": 0.5}
REDUCED = {"sft.steps": 300, "sft.batch_size": 16, "grpo.steps": 30, "mining.num_examples": 300,
           "eval.num_examples": 100}
REDUCED_LOCATABILITY = {"sft.steps": 100}
# (column title, metric key, format); the valid-answer rate is 1 - n_invalid / n
COLUMNS = [("25 km", "acc_25km", "{:.1%}"), ("200 km", "acc_200km", "{:.1%}"), ("750 km", "acc_750km", "{:.1%}"),
           ("2500 km", "acc_2500km", "{:.1%}"), ("median km", "median_km", "{:.0f}"),
           ("GeoScore", "geoscore", "{:.0f}"), ("country", "country_acc", "{:.1%}"),
           ("state", "state_acc", "{:.1%}"), ("city", "city_acc", "{:.1%}"), ("valid", "valid_rate", "{:.1%}")]


def arms(locatability_dir: str) -> list[dict]:
  """Each arm: name, recipe, the SFT it shares (its slug), overrides and replaced GRPO rewards."""
  sft_only = {"stages": ("sft",), "mining.radius_km": 0.0}  # mining only selects GRPO samples
  coords = {"data.prompt": "coords", "data.answer": "latlon", "data.max_prompt_len": 96, "sft.max_target_len": 16,
            "eval.max_new_tokens": 16}
  return [
      {"recipe": "Geo-R", "name": "coordinates-only SFT", "spec": GEO_R, "sft": "geo_r_coords",
       "set": {**sft_only, **coords}},
      {"recipe": "Geo-R", "name": "CoR SFT", "spec": GEO_R, "sft": "geo_r_cor", "set": sft_only},
      {"recipe": "Geo-R", "name": "CoR SFT + GRPO, random samples", "spec": GEO_R, "sft": "geo_r_cor",
       "set": {"mining.random": True}},
      {"recipe": "Geo-R", "name": "CoR SFT + GRPO, hard samples", "spec": GEO_R, "sft": "geo_r_cor", "set": {}},
      {"recipe": "GLOBE", "name": "CoT SFT", "spec": GLOBE, "sft": "globe", "set": sft_only},
      {"recipe": "GLOBE", "name": "+ GRPO, accuracy", "spec": GLOBE, "sft": "globe", "set": {},
       "rewards": {"globe_accuracy": 1.0}},
      {"recipe": "GLOBE", "name": "+ GRPO, accuracy + visual clues", "spec": GLOBE, "sft": "globe", "set": {},
       "rewards": {"globe_accuracy": 1.0, "globe_visual": 0.5}},
      {"recipe": "GLOBE", "name": "+ GRPO, all rewards", "spec": GLOBE, "sft": "globe",
       "set": {"grpo.reward_model": locatability_dir}, "rewards": GLOBE_REWARDS},
  ]


def _slug(name: str) -> str:
  return "".join(c if c.isalnum() else "_" for c in name.lower()).strip("_")


def _data_dir(seed: int) -> str:
  return "runs/builtin_data" if seed == 0 else f"runs/builtin_data_seed{seed}"


def _config(spec: str, workdir: str, seed: int, settings: dict, overrides: list[str]) -> ml_collections.ConfigDict:
  values = {"seed": seed, "workdir": workdir, "data.dir": _data_dir(seed), "log.progress": False, **settings}
  return gconfig.load(spec, [f"{k}={v}" for k, v in values.items()] + list(overrides))


def locatability_model(out: str, overrides: list[str], reduced: bool) -> str:
  """The reward model of GLOBE's all-rewards arm (seed 0), trained and exported once."""
  workdir = os.path.join(out, "locatability")
  hf = os.path.join(workdir, "hf")
  if not os.path.exists(os.path.join(hf, "config.json")):
    config = _config(LOCATABILITY, workdir, 0, REDUCED_LOCATABILITY if reduced else {}, overrides)
    train.train(config)
    export.export(config, os.path.join(workdir, "sft"), hf)
  return hf


def run_arm(arm: dict, seed: int, out: str, overrides: list[str], reduced: bool) -> dict:
  """The arm's evaluation of its last stage (cached in <workdir>/results.json)."""
  workdir = os.path.join(out, f"seed{seed}", _slug(arm["name"]))
  settings = {**(REDUCED if reduced else {}), **arm["set"], "eval_before": False}
  config = _config(arm["spec"], workdir, seed, settings, overrides)
  if "rewards" in arm:
    config.grpo.rewards = ml_collections.ConfigDict(arm["rewards"])
  done = os.path.join(workdir, "results.json")
  last = f"after {config.stages[-1].upper()}"
  if not _has_row(done, last):
    shared = os.path.join(out, f"seed{seed}", f"sft_{arm['sft']}")
    if os.path.isdir(shared) and not os.path.isdir(os.path.join(workdir, "sft")):
      shutil.copytree(shared, os.path.join(workdir, "sft"))
    train.train(config)
    if not os.path.isdir(shared):
      shutil.copytree(os.path.join(workdir, "sft"), shared)
  with open(done) as f:
    result = json.load(f)[last]
  return dict(result, valid_rate=1.0 - result["n_invalid"] / max(result["n"], 1))


def _has_row(path: str, label: str) -> bool:
  """Whether a results.json holds the row of a finished arm (a run killed after SFT has only that row)."""
  if not os.path.exists(path):
    return False
  with open(path) as f:
    return label in json.load(f)


def summarize(results: dict[tuple[str, str], list[dict]], seeds: list[int], split_note: str) -> str:
  """Markdown: one row per arm, each cell mean ± standard deviation over the seeds (the value with one seed)."""
  lines = [f"Built-in data, {split_note}; seeds {', '.join(map(str, seeds))}; mean ± standard deviation over seeds.",
           "", "| recipe | arm | " + " | ".join(t for t, _, _ in COLUMNS) + " |",
           "|---|---|" + "---|" * len(COLUMNS)]
  for (recipe, name), rows in results.items():
    cells = []
    for _, key, fmt in COLUMNS:
      values = np.asarray([r[key] for r in rows], np.float64)
      cell = fmt.format(values.mean())
      if len(values) > 1:
        cell += " ± " + fmt.format(values.std(ddof=1)).rstrip("%") + ("%" if "%" in fmt else "")
      cells.append(cell)
    lines.append(f"| {recipe} | {name} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def chart(results: dict[tuple[str, str], list[dict]], path: str) -> str | None:
  """Accuracy at 25 / 200 / 750 / 2500 km of each arm (mean, with the seeds' standard deviation as error bars)."""
  try:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
  except ImportError:
    return None
  recipes = list(dict.fromkeys(recipe for recipe, _ in results))
  keys = [c for c in COLUMNS if c[1].startswith("acc_")]
  fig, axes = plt.subplots(1, len(recipes), figsize=(6.5 * len(recipes), 4.2), squeeze=False)
  for ax, recipe in zip(axes[0], recipes):
    names = [name for r, name in results if r == recipe]
    width = 0.8 / len(names)
    for i, name in enumerate(names):
      values = np.asarray([[row[key] for _, key, _ in keys] for row in results[(recipe, name)]]) * 100
      err = values.std(axis=0, ddof=1) if len(values) > 1 else None
      ax.bar(np.arange(len(keys)) + (i - (len(names) - 1) / 2) * width, values.mean(axis=0), width, yerr=err,
             capsize=2, label=name)
    ax.set_xticks(np.arange(len(keys)), [title for title, _, _ in keys])
    ax.set_ylabel("accuracy within (%)")
    ax.set_title(f"{recipe} on the built-in data")
    ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--seeds", type=int, nargs="+", default=None, help="default: 0 1 2 (--reduced: 0)")
  parser.add_argument("--reduced", action="store_true", help=f"one seed and fewer steps: {REDUCED}")
  parser.add_argument("--override", action="append", default=[], help="a config override for every arm, a.b=value")
  parser.add_argument("--recipes", nargs="+", default=["Geo-R", "GLOBE"])
  parser.add_argument("--out", default=None, help="default: runs/ablations (--reduced: runs/ablations_reduced)")
  args = parser.parse_args(argv)
  seeds = args.seeds or ([0] if args.reduced else [0, 1, 2])
  out = args.out or ("runs/ablations_reduced" if args.reduced else "runs/ablations")
  os.makedirs(out, exist_ok=True)
  chosen = [a for a in arms("") if a["recipe"] in args.recipes]
  needs_judge = any(a.get("rewards", {}).get("locatability") for a in chosen)
  judge = locatability_model(out, args.override, args.reduced) if needs_judge else ""
  results: dict[tuple[str, str], list[dict]] = {}
  for seed in seeds:
    for arm in arms(judge):
      if arm["recipe"] in args.recipes:
        results.setdefault((arm["recipe"], arm["name"]), []).append(run_arm(arm, seed, out, args.override,
                                                                            args.reduced))
  n = next(iter(results.values()))[0]["n"]
  table = summarize(results, seeds, f"test split, {n} tiles")
  with open(os.path.join(out, "ablations.md"), "w") as f:
    f.write(table + "\n")
  with open(os.path.join(out, "ablations.json"), "w") as f:
    json.dump({f"{recipe} | {name}": rows for (recipe, name), rows in results.items()}, f, indent=1)
  png = chart(results, os.path.join(out, "ablations.png"))
  print(table)
  print(f"\nwrote {out}/ablations.md, .json" + (f" and {png}" if png else " (no chart: matplotlib is not installed)"))


if __name__ == "__main__":
  main()
