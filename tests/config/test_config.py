"""Config loading: overrides keep types, unknown keys and bad values fail naming the key."""
import subprocess
import sys
import textwrap

import pytest

from geojax import config as cfg

CONFIG = textwrap.dedent("""
    import ml_collections
    def get_config(variant=None):
      c = ml_collections.ConfigDict()
      c.lr = 1e-3
      c.steps = 10
      c.name = "tiny"
      c.freeze = False
      c.shape = (2, 4)
      c.model = ml_collections.ConfigDict({"hidden": 64, "kl": "k3"})
      if variant == "big":
        c.model.hidden = 1024
      elif variant:
        raise ValueError(f"unknown variant {variant!r}")
      return c
    """)

APP = textwrap.dedent("""
    from geojax import config
    _CONFIG = config.define_config_flag()
    def main(argv):
      c = _CONFIG.value
      config.check_choice(c, "model.kl", ["k1", "k2", "k3"])
      print("hidden", c.model.hidden, "lr", c.lr)
    config.run(main)
    """)


@pytest.fixture
def config_path(tmp_path):
  path = tmp_path / "c.py"
  path.write_text(CONFIG)
  return str(path)


def test_load_with_variant_and_overrides(config_path):
  c = cfg.load(config_path + ":big", ["lr=0.5", "steps=3", "model.kl=k1", "freeze=true", "shape=(1, 2)"])
  assert (c.model.hidden, c.lr, c.steps, c.model.kl, c.freeze, c.shape) == (1024, 0.5, 3, "k1", True, (1, 2))


@pytest.mark.parametrize("override, key", [("model.hiden=3", "model.hiden"), ("modle.hidden=3", "modle"),
                                           ("steps=abc", "steps"), ("freeze=maybe", "freeze")])
def test_bad_override_names_the_key(config_path, override, key):
  with pytest.raises(cfg.ConfigError, match=key):
    cfg.load(config_path, [override])


def test_missing_file_or_unknown_variant_is_a_config_error(config_path):
  with pytest.raises(cfg.ConfigError, match="no such config file"):
    cfg.load(config_path + "x")
  with pytest.raises(cfg.ConfigError, match="unknown variant 'huge'"):
    cfg.load(config_path + ":huge")


def test_locked_config_rejects_new_keys(config_path):
  c = cfg.load(config_path)
  with pytest.raises(AttributeError):
    c.new_key = 1


def test_checks_name_the_key(config_path):
  c = cfg.load(config_path, ["model.kl=k9"])
  with pytest.raises(cfg.ConfigError, match="model.kl"):
    cfg.check_choice(c, "model.kl", ["k1", "k2", "k3"])
  with pytest.raises(cfg.ConfigError, match="steps"):
    cfg.check_range(c, "steps", 20, None)
  with pytest.raises(cfg.ConfigError, match="model.missing"):
    cfg.get(c, "model.missing")


@pytest.mark.parametrize("args, ok, text", [
    (["--config.model.hidden=8"], True, "hidden 8"),
    (["--config.model.hiden=8"], False, "hiden"),
    (["--config.model.hidden=eight"], False, "model.hidden"),
    (["--config.model.kl=k9"], False, "model.kl"),
    (["--print_config", "--config.lr=0.5"], True, "lr = 0.5\n"),
])
def test_command_line(tmp_path, config_path, args, ok, text):
  app = tmp_path / "app.py"
  app.write_text(APP)
  proc = subprocess.run([sys.executable, str(app), f"--config={config_path}", *args],
                        capture_output=True, text=True, timeout=120)
  out = proc.stdout + proc.stderr
  assert (proc.returncode == 0) == ok, out
  assert text in out
  if not ok:
    assert "Traceback" not in out
