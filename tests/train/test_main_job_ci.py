"""The main job end to end in its CI size: `python -m geojax.train --config=configs/default.py:ci`."""
import json
import os
import subprocess
import sys

from tests.train.helpers import DEFAULT_CONFIG, ROOT


def test_ci_variant_of_the_main_job(tmp_path):
  workdir = str(tmp_path / "run")
  proc = subprocess.run([sys.executable, "-m", "geojax.train", f"--config={DEFAULT_CONFIG}:ci",
                         f"--config.workdir={workdir}", f"--config.data.dir={tmp_path / 'data'}",
                         "--config.log.progress=false"],
                        cwd=ROOT, env=dict(os.environ, JAX_PLATFORMS="cpu"), capture_output=True, text=True,
                        timeout=600)
  assert proc.returncode == 0, proc.stderr[-4000:]
  for row in ("| untrained |", "| after SFT |", "| after GRPO |"):
    assert row in proc.stdout, proc.stdout
  results = json.load(open(os.path.join(workdir, "results.json")))
  assert list(results) == ["untrained", "after SFT", "after GRPO"]
  assert all(r["n"] == 32 for r in results.values())
  assert results["after SFT"]["median_km"] < results["untrained"]["median_km"]  # the SFT row shows learning
  for stage in ("start", "sft", "grpo"):
    assert os.path.exists(os.path.join(workdir, f"eval_{stage}", "predictions.jsonl"))
  assert os.path.exists(os.path.join(workdir, "eval_grpo", "map.png"))
  assert os.listdir(os.path.join(workdir, "tb"))  # TensorBoard event files
  grpo_metrics = [json.loads(line) for line in open(os.path.join(workdir, "grpo", "metrics.jsonl"))]
  assert {"loss", "reward", "reward_exp_distance", "response_len", "grad_norm", "lr"} <= set(grpo_metrics[-1])
