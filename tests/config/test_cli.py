"""The entry points' --config flag: a bad file, variant or key is one line on stderr and a non-zero exit, before
anything is written; --print_config prints every key and exits 0 without doing any work."""
import os
import subprocess
import sys

import pytest

from geojax import config as gconfig
from geojax.config_schema import flatten

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIGS = os.path.join(ROOT, "configs")
ENTRY_POINTS = ["geojax.train", "geojax.eval", "geojax.export"]


def run(module, args, cwd):
  """`python -m module args` in an empty directory; the program must leave it empty."""
  env = dict(os.environ, JAX_PLATFORMS="cpu", HF_HUB_OFFLINE="1",
             PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])))
  proc = subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env, capture_output=True, text=True,
                        timeout=300)
  assert os.listdir(cwd) == [], f"{module} wrote {os.listdir(cwd)}"
  return proc


@pytest.mark.parametrize("module, args, text", [
    *[(module, [f"--config={CONFIGS}/nope.py"], "no such config file") for module in ENTRY_POINTS],
    *[(module, [f"--config={CONFIGS}/default.py:nope"], "unknown variant 'nope'") for module in ENTRY_POINTS],
    ("geojax.train", [f"--config={CONFIGS}/nope.py", "--config.seed=1"], "no such config file"),
    ("geojax.train", [f"--config={CONFIGS}/default.py", "--config.grpo.temprature=1.0"], "temprature"),
])
def test_config_errors_are_one_line(module, args, text, tmp_path):
  if module == "geojax.export":
    args = [*args, "--checkpoint=ckpt", "--out=out"]  # its required flags, so that the config is what fails
  proc = run(module, args, tmp_path)
  assert proc.returncode != 0
  assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
  assert proc.stderr.startswith("error: ") and text in proc.stderr, proc.stderr


@pytest.mark.parametrize("overrides, key", [
    (["--config.grpo.group_size=1"], "grpo.group_size"),
    (["--config.data.source=arrayrecord", "--config.data.dir=/nonexistent/shards"], "data.dir"),
])
def test_bad_value_stops_train_before_any_work(overrides, key, tmp_path):
  proc = run("geojax.train", [f"--config={CONFIGS}/default.py", *overrides, f"--config.workdir={tmp_path}/run"],
             tmp_path)
  assert proc.returncode != 0
  assert len(proc.stderr.strip().splitlines()) == 1 and f"config key '{key}'" in proc.stderr, proc.stderr


@pytest.mark.parametrize("module", ENTRY_POINTS)
def test_print_config(module, tmp_path):
  spec = f"{CONFIGS}/geo_r.py:paper"  # invalid as it stands (no model directory): printing does not validate
  proc = run(module, [f"--config={spec}", "--config.grpo.steps=7", "--print_config"], tmp_path)
  assert proc.returncode == 0, proc.stderr
  lines = proc.stdout.strip().splitlines()
  assert len(lines) == len(list(flatten(gconfig.load(spec))))
  assert all(" = " in line and "  # " in line for line in lines)
  assert any(line.startswith("grpo.steps = 7 ") for line in lines)


@pytest.mark.parametrize("module", ["geojax.eval", "geojax.export"])
def test_missing_checkpoint_is_one_line_and_creates_nothing(module, tmp_path):
  """A --checkpoint that is not a stage directory: one line, and no <path>/checkpoints made as a side effect."""
  work = tmp_path / "cwd"
  work.mkdir()
  proc = run(module, [f"--config={CONFIGS}/default.py", f"--checkpoint={tmp_path}/nope", "--out=out"], work)
  assert proc.returncode != 0
  assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
  assert proc.stderr.startswith("error: --checkpoint=") and "nope" in proc.stderr, proc.stderr
  assert sorted(os.listdir(tmp_path)) == ["cwd"]
