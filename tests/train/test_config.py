"""Bad configs fail at start with the offending key named (before any data or model work)."""
import os
import subprocess
import sys

import pytest

from geojax import config as gconfig
from geojax import train
from tests.train.helpers import DEFAULT_CONFIG, ROOT


@pytest.mark.parametrize("override, key", [
    ("grpo.group_size=1", "grpo.group_size"),
    ("grpo.top_p=1.5", "grpo.top_p"),
    ("grpo.kl=k9", "grpo.kl"),
    ("grpo.advantage=best", "grpo.advantage"),
    ("grpo.temperature=0.0", "grpo.temperature"),
    ("sft.lr=-1.0", "sft.lr"),
    ("sft.grad_accum=3", "sft.grad_accum"),
    ("sft.schedule=exp", "sft.schedule"),
    ("data.prompt=haiku", "data.prompt"),
    ("data.answer=wkt", "data.answer"),
    ("model.preset=gpt5", "model.preset"),
    ("model.preset=qwen2.5-vl-7b", "model.hf_path"),
    ("model.hf_path=/nonexistent/dir", "model.hf_path"),
    ("runtime.distributed=maybe", "runtime.distributed"),
    ("checkpoint.keep=0", "checkpoint.keep"),
])
def test_bad_value_names_the_key(override, key):
  config = gconfig.load(DEFAULT_CONFIG, [override])
  with pytest.raises(gconfig.ConfigError, match=key.replace(".", r"\.")):
    train.check_config(config)


def test_unknown_reward_names_the_key():
  config = gconfig.load(DEFAULT_CONFIG)
  with config.unlocked():
    config.grpo.rewards["distance_magic"] = 1.0
  with pytest.raises(gconfig.ConfigError, match=r"grpo\.rewards\.distance_magic"):
    train.check_config(config)


@pytest.mark.parametrize("spec", ["configs/default.py", "configs/default.py:ci", "configs/geo_r.py",
                                  "configs/geo_r.py:3b,paper", "configs/globe.py", "configs/globe.py:sft"])
def test_shipped_configs_pass_checks(spec, tmp_path):
  overrides = []
  if "geo_r" in spec or "globe" in spec:  # the recipes need a model directory; any directory passes the check
    overrides = [f"model.hf_path={tmp_path}", f"data.dir={tmp_path}"]
  train.check_config(gconfig.load(os.path.join(ROOT, spec), overrides))


def test_recipe_settings():
  geo_r = gconfig.load(os.path.join(ROOT, "configs/geo_r.py"))
  assert (geo_r.grpo.group_size, geo_r.grpo.beta, geo_r.grpo.eps_low, geo_r.grpo.lr, geo_r.sft.lr) == (
      4, 0.04, 0.2, 1e-6, 1e-5)
  assert (geo_r.grpo.temperature, geo_r.grpo.top_k, geo_r.grpo.top_p) == (0.9, 50, 1.0)
  assert (geo_r.data.max_prompt_len, geo_r.grpo.max_new_tokens) == (512, 256)
  assert dict(geo_r.grpo.rewards) == {"geo_r_distance": 1.0, "geo_r_format": 1.0}
  assert geo_r.grpo.combine == "sum"
  paper = gconfig.load(os.path.join(ROOT, "configs/geo_r.py:paper"))
  assert (dict(paper.grpo.rewards), paper.grpo.combine) == (
      {"geo_r_distance_paper": 1.0, "geo_r_format": 1.0}, "product")
  globe = gconfig.load(os.path.join(ROOT, "configs/globe.py"))
  assert (globe.grpo.group_size, globe.grpo.temperature, globe.grpo.top_p, globe.grpo.top_k) == (16, 1.0, 0.9, 50)
  assert (globe.grpo.max_new_tokens, globe.grpo.beta, globe.grpo.warmup_ratio) == (1024, 0.001, 0.01)
  assert dict(globe.grpo.rewards) == {"globe_accuracy": 1.0, "globe_visual": 0.5, "globe_format": 1.0,
                                      "locatability": 0.5}


def test_command_line_typo_exits_with_the_key_named():
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, "-m", "geojax.train", f"--config={DEFAULT_CONFIG}",
                         "--config.grpo.temprature=1.0"], cwd=ROOT, env=env, capture_output=True, text=True,
                        timeout=120)
  assert proc.returncode != 0
  assert "temprature" in proc.stderr
  assert "Traceback" not in proc.stderr


def test_command_line_bad_range_exits_with_the_key_named(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, "-m", "geojax.train", f"--config={DEFAULT_CONFIG}",
                         "--config.grpo.group_size=1", f"--config.workdir={tmp_path}"], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode != 0
  assert "grpo.group_size" in proc.stderr
  assert "Traceback" not in proc.stderr
