"""Experiment configs: Python files returning an `ml_collections.ConfigDict`, plus start-up checks.

Entry points take `--config=configs/NAME.py[:variant]` and `--config.a.b=value` overrides. A misspelt key or a
value of the wrong type stops the program before any work starts, with the offending key named.
"""
from __future__ import annotations

import importlib.util
import sys
from typing import Any, Callable, Iterable, Sequence

import ml_collections
from absl import app, flags
from ml_collections import config_flags


class ConfigError(ValueError):
  """A config key is missing, unknown, or holds a value of the wrong type or range."""


def define_config_flag(default: str = "configs/default.py") -> flags.FlagHolder:
  """Defines `--config` (a config file) with `--config.key=value` overrides."""
  return config_flags.DEFINE_config_file("config", default, "Experiment config file[:variant].", lock_config=True)


def _parse_flags(argv: Sequence[str]) -> list[str]:
  """absl flag parsing that turns config override errors into one readable line naming the key."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    sys.stderr.write(f"error: {e}\n")
    sys.exit(2)
  except (AttributeError, KeyError, TypeError, ValueError) as e:
    bad = [a for a in argv[1:] if a.startswith("--config.")]
    msg = str(e).strip("'\"").replace("\\n", " ").replace("\n", " ")
    sys.stderr.write(f"error: bad config override {' '.join(bad)}: {msg}\n")
    sys.exit(2)


def run(main: Callable[[list[str]], Any]) -> None:
  """`absl.app.run` with config errors reported as a single line instead of a traceback."""

  def checked_main(argv: list[str]) -> Any:
    try:
      return main(argv)
    except ConfigError as e:
      sys.stderr.write(f"error: {e}\n")
      sys.exit(2)

  app.run(checked_main, flags_parser=_parse_flags)


def load(spec: str, overrides: Iterable[str] = ()) -> ml_collections.ConfigDict:
  """Loads `path.py[:variant]` and applies `a.b=value` overrides, as the command line does (for tests, notebooks)."""
  path, _, variant = spec.partition(":")
  module_spec = importlib.util.spec_from_file_location("_geojax_config", path)
  if module_spec is None or module_spec.loader is None:
    raise ConfigError(f"cannot load config file {path!r}")
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  config = module.get_config(variant) if variant else module.get_config()
  config.lock()
  for item in overrides:
    key, sep, raw = item.partition("=")
    if not sep:
      raise ConfigError(f"override {item!r} is not of the form key=value")
    set_value(config, key, raw)
  return config


def set_value(config: ml_collections.ConfigDict, dotted_key: str, raw: str) -> None:
  """Sets `config[dotted_key]` from a string, keeping the declared type; unknown keys raise ConfigError."""
  *parents, leaf = dotted_key.split(".")
  node = config
  for i, part in enumerate(parents):
    if not isinstance(node, ml_collections.ConfigDict) or part not in node:
      raise ConfigError(f"unknown config key {'.'.join(parents[:i + 1])!r}")
    node = node[part]
  if not isinstance(node, ml_collections.ConfigDict) or leaf not in node:
    raise ConfigError(f"unknown config key {dotted_key!r}")
  old = node[leaf]
  try:
    value = _parse_like(old, raw)
    node[leaf] = value
  except (TypeError, ValueError) as e:
    raise ConfigError(f"config key {dotted_key!r}: cannot set {raw!r} ({type(old).__name__} expected): {e}") from None


def _parse_like(old: Any, raw: str) -> Any:
  if isinstance(old, bool):
    if raw.lower() in ("true", "1", "yes"):
      return True
    if raw.lower() in ("false", "0", "no"):
      return False
    raise ValueError("not a boolean")
  if isinstance(old, int):
    return int(raw)
  if isinstance(old, float):
    return float(raw)
  if isinstance(old, str) or old is None:
    return raw
  if isinstance(old, (tuple, list)):
    import ast
    value = ast.literal_eval(raw)
    return type(old)(value if isinstance(value, (tuple, list)) else (value,))
  raise TypeError(f"cannot override a {type(old).__name__} from the command line")


# ---- start-up checks: each names the key it rejects -------------------------------------------------

def get(config: ml_collections.ConfigDict, dotted_key: str) -> Any:
  node = config
  for part in dotted_key.split("."):
    if not isinstance(node, ml_collections.ConfigDict) or part not in node:
      raise ConfigError(f"config key {dotted_key!r} is missing")
    node = node[part]
  return node


def check_choice(config: ml_collections.ConfigDict, dotted_key: str, choices: Iterable[Any]) -> None:
  choices = list(choices)
  value = get(config, dotted_key)
  if value not in choices:
    raise ConfigError(f"config key {dotted_key!r} is {value!r}; expected one of {choices}")


def check_range(config: ml_collections.ConfigDict, dotted_key: str, low: float | None = None,
                high: float | None = None) -> None:
  value = get(config, dotted_key)
  if not isinstance(value, (int, float)) or isinstance(value, bool):
    raise ConfigError(f"config key {dotted_key!r} is {value!r}; expected a number")
  if (low is not None and value < low) or (high is not None and value > high):
    raise ConfigError(f"config key {dotted_key!r} is {value!r}; expected within [{low}, {high}]")
