"""The config schema: shipped configs resolve as before, every key is described, validate names the bad key."""
import os

import pytest

from geojax import config as gconfig
from geojax.config_schema import DESCRIPTIONS, base_config, describe, flatten, format_config, validate

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
VARIANTS = ["default.py", "default.py:ci", "geo_r.py", "geo_r.py:3b", "geo_r.py:paper", "geo_r.py:3b,paper",
            "globe.py", "globe.py:sft"]


def load(spec, overrides=()):
  return gconfig.load(os.path.join(ROOT, "configs", spec), overrides)


# Values that tell the variants apart, as the configs resolved before they shared the base (all 104-105 keys
# were compared key by key, type and order included, when the base was introduced).
@pytest.mark.parametrize("spec, expected", [
    ("default.py", {"workdir": "runs/default", "data.n_train": 8000, "sft.steps": 1000, "grpo.group_size": 8,
                    "grpo.lr": 1e-4, "runtime.mesh.data": -1, "grpo.rewards": {"exp_distance": 1.0},
                    "grpo.reward_params": {"exp_distance": {"tau_km": 750.0}}}),
    ("default.py:ci", {"workdir": "runs/default_ci", "data.n_train": 256, "sft.steps": 150, "grpo.group_size": 4,
                       "eval.batch_size": 32, "checkpoint.every": 10}),
    ("geo_r.py", {"model.preset": "qwen2.5-vl-7b", "data.source": "arrayrecord", "data.max_pixels": 28 * 28 * 1280,
                  "sft.steps": 7813, "sft.warmup_ratio": 0.03, "grpo.steps": 12500, "grpo.temperature": 0.9,
                  "runtime.mesh.fsdp": -1, "grpo.combine": "sum",
                  "grpo.rewards": {"geo_r_distance": 1.0, "geo_r_format": 1.0}}),
    ("geo_r.py:3b", {"model.preset": "qwen2.5-vl-3b", "grpo.combine": "sum"}),
    ("geo_r.py:paper", {"model.preset": "qwen2.5-vl-7b", "grpo.combine": "product",
                        "grpo.rewards": {"geo_r_distance_paper": 1.0, "geo_r_format": 1.0}}),
    ("geo_r.py:3b,paper", {"model.preset": "qwen2.5-vl-3b", "grpo.combine": "product"}),
    ("globe.py", {"stages": ("grpo",), "grpo.group_size": 16, "grpo.grad_accum": 2, "grpo.beta": 0.001,
                  "grpo.schedule": "cosine", "sft.freeze_vision": True, "eval.max_new_tokens": 1024,
                  "grpo.rewards": {"globe_accuracy": 1.0, "globe_visual": 0.5, "globe_format": 1.0,
                                   "locatability": 0.5}}),
    ("globe.py:sft", {"stages": ("sft", "grpo"), "sft.steps": 1054}),
])
def test_shipped_configs_resolve_as_before(spec, expected):
  config = load(spec)
  for key, value in expected.items():
    got = gconfig.get(config, key)
    got = got.to_dict() if hasattr(got, "to_dict") else got
    assert (type(got), got) == (type(value), value), key


@pytest.mark.parametrize("spec", VARIANTS)
def test_every_key_is_described_and_in_the_base(spec):
  base = {key for key, _ in flatten(base_config())}
  for key, _ in flatten(load(spec)):
    assert describe(key), key
    assert key in base or key.startswith(("grpo.rewards.", "grpo.reward_params.")) or key == "grpo.reward_params"
  assert set(DESCRIPTIONS) <= base | {"grpo.rewards", "grpo.reward_params"}


def test_config_files_cannot_add_keys_and_replaced_maps_are_locked():
  with pytest.raises(AttributeError, match="temprature"):
    base_config().grpo.temprature = 1.0
  assert load("geo_r.py").grpo.rewards.is_locked


def test_format_config():
  config = load("geo_r.py:paper", ["grpo.steps=7"])
  lines = format_config(config).splitlines()
  assert len(lines) == len(list(flatten(config)))
  assert lines[0].startswith("seed = 0 ") and "# PRNG seed" in lines[0]
  assert any(line.startswith("grpo.steps = 7 ") for line in lines)
  assert any(line.startswith("grpo.rewards.geo_r_distance_paper = 1.0 ") and "-> weight" in line for line in lines)
  assert any(line.startswith("grpo.reward_params.geo_r_distance_paper.strict = False ") for line in lines)
  assert all("  # " in line for line in lines)


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
    ("data.image_size=50", "data.image_size"),
    ("data.source=arrayrecord", "data.dir"),
    ("model.preset=gpt5", "model.preset"),
    ("model.preset=qwen2.5-vl-7b", "model.hf_path"),
    ("model.hf_path=/nonexistent/dir", "model.hf_path"),
    ("model.tokenizer=", "model.tokenizer"),
    ("model.dtype=int8", "model.dtype"),
    ("model.attention=flash", "model.attention"),
    ("runtime.distributed=maybe", "runtime.distributed"),
    ("runtime.keep_freed_memory=yes", "runtime.keep_freed_memory"),
    ("runtime.mesh.fsdp=-1", "runtime.mesh"),
    ("checkpoint.keep=0", "checkpoint.keep"),
])
def test_bad_value_names_the_key(override, key, tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)  # data.dir is relative: a checkout that built runs/builtin_data would pass its check
  with pytest.raises(gconfig.ConfigError, match=key.replace(".", r"\.")):
    validate(load("default.py", [override]))


def test_attention_backend_is_checked_for_the_target_platform():
  """geojax.plan compiles for a TPU topology from this CPU host: splash is the target's kernel, not this host's.
  Without a platform, validate leaves it to build_model on the mesh's devices (it must not start JAX's backend
  before jax.distributed.initialize)."""
  from geojax import experiment
  config = load("default.py", ["model.attention=splash"])
  validate(config, needs_weights=False, platform="tpu")
  validate(config)
  with pytest.raises(gconfig.ConfigError, match=r"model\.attention.*runs only on tpu"):
    validate(config, needs_weights=False, platform="cpu")
  with pytest.raises(gconfig.ConfigError, match=r"model\.attention.*runs only on tpu"):
    experiment.build_model(config, None, None, abstract=True)


def test_arrayrecord_needs_an_existing_dir_unless_no_data_is_read(tmp_path):
  config = load("default.py", ["data.source=arrayrecord", f"data.dir={tmp_path / 'missing'}"])
  with pytest.raises(gconfig.ConfigError, match=r"config key 'data\.dir' .*missing.*no such directory"):
    validate(config)
  validate(config, reads_data=False)  # export reads no data


@pytest.mark.parametrize("rewards, key", [
    ({"distance_magic": 1.0}, r"grpo\.rewards\.distance_magic"),
    ({"exp_distance": 0.0}, r"grpo\.rewards'"),
])
def test_bad_rewards_name_the_key(rewards, key):
  config = load("default.py")
  with config.unlocked():
    config.grpo.rewards = rewards
  with pytest.raises(gconfig.ConfigError, match=key):
    validate(config)


def test_reward_params_must_be_parameters_of_the_reward():
  config = load("default.py")
  with config.unlocked():
    config.grpo.reward_params = {"exp_distance": {"tau": 500.0}}
  with pytest.raises(gconfig.ConfigError, match=r"grpo\.reward_params\.exp_distance\.tau'.*tau_km"):
    validate(config)


def test_multi_advantage_is_reachable_with_summed_rewards(tmp_path):
  validate(load("default.py", ["grpo.advantage=multi"]))
  dirs = [f"model.hf_path={tmp_path}", f"data.dir={tmp_path}", "grpo.advantage=multi"]
  with pytest.raises(gconfig.ConfigError, match=r"grpo\.combine"):
    validate(load("geo_r.py:paper", dirs))


@pytest.mark.parametrize("spec", VARIANTS)
def test_shipped_configs_pass(spec, tmp_path):
  overrides = []
  if not spec.startswith("default"):  # the recipes need a model and a data directory; any directory passes
    overrides = [f"model.hf_path={tmp_path}", f"data.dir={tmp_path}"]
  validate(load(spec, overrides))


def test_recipe_settings():
  geo_r = load("geo_r.py")
  assert (geo_r.grpo.group_size, geo_r.grpo.beta, geo_r.grpo.eps_low, geo_r.grpo.lr, geo_r.sft.lr) == (
      4, 0.04, 0.2, 1e-6, 1e-5)
  assert (geo_r.grpo.temperature, geo_r.grpo.top_k, geo_r.grpo.top_p) == (0.9, 50, 1.0)
  assert (geo_r.data.max_prompt_len, geo_r.grpo.max_new_tokens) == (512, 256)
  globe = load("globe.py")
  assert (globe.grpo.group_size, globe.grpo.temperature, globe.grpo.top_p, globe.grpo.top_k) == (16, 1.0, 0.9, 50)
  assert (globe.grpo.max_new_tokens, globe.grpo.beta, globe.grpo.warmup_ratio) == (1024, 0.001, 0.01)
