"""A seeded run is reproducible: the main job's path (configs/default.py:ci, shortened) run twice from scratch in
separate processes logs the same metrics and prints the same table, to the last bit."""
import json
import os
import subprocess
import sys

from tests.train.helpers import DEFAULT_CONFIG, ROOT, USER_ENV, tiny_overrides


def _run(workdir: str, data_dir: str) -> str:
  args = tiny_overrides(workdir, data_dir, **{"eval_before": True, "eval.at_stage_end": True, "grpo.steps": 4,
                                              "checkpoint.every": 2, "log.every": 1})
  proc = subprocess.run([sys.executable, "-m", "geojax.train", f"--config={DEFAULT_CONFIG}:ci",
                         *[f"--config.{a}" for a in args]],
                        cwd=ROOT, env=USER_ENV, capture_output=True, text=True,
                        timeout=600)
  assert proc.returncode == 0, proc.stderr[-4000:]
  return proc.stdout


def _logged(workdir: str) -> dict:
  """Every logged metric of both stages, and the evaluations without their timings."""
  out = {}
  for stage in ("sft", "grpo"):
    with open(os.path.join(workdir, stage, "metrics.jsonl")) as f:
      out[stage] = [json.loads(line) for line in f]
  with open(os.path.join(workdir, "results.json")) as f:
    out["results"] = {label: {k: v for k, v in r.items() if k != "seconds"} for label, r in json.load(f).items()}
  return out


def _table(stdout: str) -> list[str]:
  return [line for line in stdout.splitlines() if line.startswith("|")]


def test_two_fresh_runs_log_identical_metrics_and_tables(tmp_path, builtin_dir):
  first, second = str(tmp_path / "first"), str(tmp_path / "second")
  out1, out2 = _run(first, builtin_dir), _run(second, builtin_dir)
  assert len(_table(out1)) == 5  # header, rule, untrained, after SFT, after GRPO
  assert _table(out1) == _table(out2)
  a, b = _logged(first), _logged(second)
  assert [row["step"] for row in a["grpo"]] == [1, 2, 3, 4]
  assert a == b  # every key of every step, compared exactly (floats as JSON wrote them)
