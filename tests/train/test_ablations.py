"""scripts/ablations.py in its reduced form, at test size: every arm of both papers' ablations runs and the table
and chart are written."""
import json
import os
import subprocess
import sys

from tests.train.helpers import ROOT, USER_ENV

TINY = {"data.n_train": 64, "data.n_test": 16, "model.tiny.hidden_size": 32, "model.tiny.num_layers": 1,
        "model.tiny.vision_depth": 1, "sft.steps": 2, "sft.batch_size": 4, "sft.warmup_steps": 1, "grpo.steps": 1,
        "grpo.batch_size": 2, "grpo.group_size": 2, "grpo.warmup_steps": 1, "grpo.max_new_tokens": 8,
        "mining.num_examples": 4, "eval.num_examples": 2, "eval.batch_size": 2, "eval.max_new_tokens": 8,
        "eval.plot": False, "log.tensorboard": False}


def test_reduced_ablations_write_a_table_and_a_chart(tmp_path, builtin_dir):
  out = str(tmp_path / "ablations")
  overrides = [f"--override={k}={v}" for k, v in {**TINY, "data.dir": builtin_dir}.items()]
  proc = subprocess.run([sys.executable, "scripts/ablations.py", "--reduced", "--out", out, *overrides], cwd=ROOT,
                        env={**USER_ENV, "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"},  # arms share programs
                        capture_output=True, text=True, timeout=1200)
  assert proc.returncode == 0, proc.stderr[-4000:]
  table = open(os.path.join(out, "ablations.md")).read()
  for arm in ("coordinates-only SFT", "CoR SFT + GRPO, random samples", "CoR SFT + GRPO, hard samples", "CoT SFT",
              "+ GRPO, accuracy |", "+ GRPO, accuracy + visual clues", "+ GRPO, all rewards"):
    assert arm in table, table
  assert "seeds 0;" in table and "| valid |" in table
  rows = json.load(open(os.path.join(out, "ablations.json")))
  assert len(rows) == 8 and all(len(seeds) == 1 and seeds[0]["n"] == 2 for seeds in rows.values())
  assert os.path.getsize(os.path.join(out, "ablations.png")) > 1000
  all_rewards = [json.loads(line) for line in open(os.path.join(out, "seed0", "grpo__all_rewards", "grpo",
                                                                "metrics.jsonl"))]
  assert "reward_locatability" in all_rewards[-1]
