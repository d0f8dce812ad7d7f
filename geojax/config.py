"""Experiment configs: Python files returning an `ml_collections.ConfigDict`, plus start-up checks.

Entry points take `--config=configs/NAME.py[:variant]` and `--config.a.b=value` overrides. A missing file, an
unknown variant, a misspelt key or a value of the wrong type stops the program before any work starts, with one
line naming what is wrong. `--print_config` prints the resolved config, each key with its description.
"""
from __future__ import annotations

import importlib.util
import os
import sys
from typing import Any, Callable, Iterable, NoReturn, Sequence

import ml_collections
from absl import app, flags
from ml_collections import config_flags


class ConfigError(ValueError):
  """A config key is missing, unknown, or holds a value of the wrong type or range."""


_DEFAULT_SPEC = ["configs/default.py"]  # the --config default of this program, for error messages


def define_config_flag(default: str = "configs/default.py") -> flags.FlagHolder:
  """Defines `--config` (a config file) with `--config.key=value` overrides, and `--print_config`."""
  _DEFAULT_SPEC[0] = default
  flags.DEFINE_bool("print_config", False, "Print the resolved config (after overrides), one line per key with its "
                    "description, and exit.")
  return config_flags.DEFINE_config_file("config", default, "Experiment config file[:variant]; --print_config "
                                         "lists its keys.", lock_config=True)


def _fail(message: Any) -> NoReturn:
  sys.stderr.write(f"error: {_one_line(message)}\n")
  sys.exit(2)


def _one_line(message: Any) -> str:
  """An exception's text on one line, without the quotes a KeyError puts around it."""
  text = str(message)
  if len(text) > 1 and text[0] == text[-1] and text[0] in "'\"":
    text = text[1:-1].replace("\\" + text[0], text[0])
  return " ".join(text.replace("\\n", "\n").split())


def _config_spec(argv: Sequence[str]) -> str:
  """The value of --config on the command line (the last one), else the default."""
  args = flags.FLAGS.read_flags_from_files(list(argv[1:]), force_gnu=False)
  spec = _DEFAULT_SPEC[0]
  for i, arg in enumerate(args):
    name, eq, value = arg.partition("=")
    if name in ("--config", "-config"):
      spec = value if eq else (args[i + 1] if i + 1 < len(args) else "")
  return spec


def _parse_flags(argv: Sequence[str]) -> list[str]:
  """absl flag parsing where config errors (file, variant, override) are one line naming what is wrong.

  The config file is loaded while the flags are parsed, so this is where its errors surface. With
  --print_config the resolved config is printed and the program exits here, before any work.
  """
  spec = _config_spec(argv)
  path = spec.split(":", 1)[0]
  if not os.path.isfile(path):
    _fail(f"--config={spec}: no such config file {path!r} (relative to {os.getcwd()})")
  try:
    rest = flags.FLAGS(argv)
  except flags.Error as e:
    cause = e
    while cause.__context__ is not None:
      cause = cause.__context__
    if str(e).startswith("flag --config=") and cause is not e:  # raised by get_config, e.g. an unknown variant
      _fail(f"--config={spec}: {cause}")
    if not (flags.FLAGS.is_parsed() and flags.FLAGS.print_config):  # only a validator (e.g. a required flag) fails
      _fail(e)
    rest = list(argv[:1])
  except OSError as e:  # the file could not be read (with overrides config_flags raises this while parsing them)
    _fail(f"--config={spec}: {str(e).strip().splitlines()[-1]}")
  except (AttributeError, KeyError, TypeError, ValueError) as e:
    bad = [a for a in argv[1:] if a.startswith("--config.")]
    _fail(f"bad config override {' '.join(bad)}: {_one_line(e)}")
  config = flags.FLAGS.config
  try:
    lock_all(config)
  except OSError as e:  # config_flags defers a failed read until the config is first used
    _fail(f"--config={spec}: {str(e).strip().splitlines()[-1]}")
  if flags.FLAGS.print_config:
    from geojax.config_schema import format_config
    print(format_config(config))
    sys.exit(0)
  return rest


def run(main: Callable[[list[str]], Any]) -> None:
  """`absl.app.run` with config errors reported as a single line instead of a traceback, and XLA:CPU's numerics
  pinned first (geojax.runtime.numerics: the same results on every processor)."""
  from geojax.runtime.numerics import pin_cpu_numerics
  pin_cpu_numerics()

  def checked_main(argv: list[str]) -> Any:
    try:
      return main(argv)
    except ConfigError as e:
      _fail(e)

  app.run(checked_main, flags_parser=_parse_flags)


def lock_all(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Locks `config` and every dict in it: `lock()` stops at a locked dict, missing maps a config file replaced."""
  config.lock()
  for value in config.values():
    if isinstance(value, ml_collections.ConfigDict):
      lock_all(value)
  return config


def load(spec: str, overrides: Iterable[str] = ()) -> ml_collections.ConfigDict:
  """Loads `path.py[:variant]` and applies `a.b=value` overrides, as the command line does (for tests, notebooks)."""
  path, _, variant = spec.partition(":")
  if not os.path.isfile(path):
    raise ConfigError(f"no such config file {path!r}")
  module_spec = importlib.util.spec_from_file_location("_geojax_config", path)
  if module_spec is None or module_spec.loader is None:
    raise ConfigError(f"cannot load config file {path!r}")
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  try:
    config = module.get_config(variant) if variant else module.get_config()
  except ValueError as e:  # e.g. an unknown variant
    raise ConfigError(f"{spec}: {e}") from None
  lock_all(config)
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
