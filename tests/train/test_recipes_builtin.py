"""The Geo-R and GLOBE recipes on the built-in data (`configs/<recipe>.py:builtin`), end to end in a reduced form:
a 1-layer model, a few steps of each stage. The full form is measured in the README (Recipes on the built-in data)."""
import json
import os
import subprocess
import sys

from geojax import config as gconfig
from geojax import export, train
from tests.train.helpers import ROOT, USER_ENV

# Every stage runs, each for a few steps on the 64 / 16 tiles of the builtin_dir fixture.
REDUCED = {
    "data.n_train": 64, "data.n_test": 16, "model.tiny.hidden_size": 32, "model.tiny.num_layers": 1,
    "model.tiny.vision_depth": 1, "sft.steps": 3, "sft.batch_size": 8, "sft.warmup_steps": 1, "grpo.steps": 2,
    "grpo.batch_size": 2, "grpo.warmup_steps": 1, "grpo.max_new_tokens": 12, "eval.num_examples": 4,
    "eval.batch_size": 4, "eval.max_new_tokens": 12, "eval.plot": False, "checkpoint.every": 10,
    "log.progress": False, "log.tensorboard": False,
}


def _overrides(workdir, data_dir, **extra) -> list[str]:
  return [f"{k}={v}" for k, v in {**REDUCED, "workdir": workdir, "data.dir": data_dir, **extra}.items()]


def _metrics(workdir: str, stage: str) -> list[dict]:
  with open(os.path.join(workdir, stage, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def test_geo_r_builtin_runs_sft_mining_grpo_and_eval_from_the_command_line(tmp_path, builtin_dir):
  workdir = str(tmp_path / "geo_r")
  args = _overrides(workdir, builtin_dir, **{"mining.num_examples": 8})
  proc = subprocess.run([sys.executable, "-m", "geojax.train", f"--config={ROOT}/configs/geo_r.py:builtin",
                         *[f"--config.{a}" for a in args]],
                        cwd=ROOT, env=USER_ENV, capture_output=True, text=True,
                        timeout=600)
  assert proc.returncode == 0, proc.stderr[-4000:]
  for row in ("| untrained |", "| after SFT |", "| after GRPO |"):
    assert row in proc.stdout, proc.stdout
  assert "[mining] 8 train samples predicted" in proc.stdout + proc.stderr
  mined = json.load(open(os.path.join(workdir, "mining.json")))
  assert mined["n_predicted"] == 8 and 0 < len(mined["kept"]) <= 64
  last = _metrics(workdir, "grpo")[-1]
  assert last["step"] == 2 and {"reward_geo_r_distance", "reward_geo_r_format"} <= set(last)
  sft = gconfig.load(f"{ROOT}/configs/geo_r.py:builtin")
  assert (sft.data.answer, sft.mining.radius_km, sft.grpo.group_size) == ("chain", 200.0, 4)


def test_globe_builtin_with_a_locatability_model_made_here(tmp_path, builtin_dir):
  # the reward model: the tiny model fine-tuned to answer yes / no, exported as the reward reads it
  judge = str(tmp_path / "locatability")
  train.train(gconfig.load(f"{ROOT}/configs/globe.py:locatability", _overrides(judge, builtin_dir)))
  judge_dir = export.export(gconfig.load(f"{ROOT}/configs/globe.py:locatability", _overrides(judge, builtin_dir)),
                            os.path.join(judge, "sft"), os.path.join(judge, "hf"))

  workdir = str(tmp_path / "globe")
  results = train.train(gconfig.load(f"{ROOT}/configs/globe.py:builtin",
                                     _overrides(workdir, builtin_dir, **{"grpo.reward_model": judge_dir})))
  assert list(results) == ["untrained", "after SFT", "after GRPO"]
  assert all(r["n"] == 4 and r["median_km"] > 0 for r in results.values())  # names geocoded: distance columns
  last = _metrics(workdir, "grpo")[-1]
  assert {"reward_globe_accuracy", "reward_globe_visual", "reward_globe_format", "reward_locatability"} <= set(last)
  assert 0.0 <= last["reward_locatability"] <= 1.0
