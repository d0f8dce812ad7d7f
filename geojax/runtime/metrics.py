"""Metric output: TensorBoard event files (tensorboardX) plus a one-line console summary, and a tqdm bar.

Only process 0 writes; other processes get a writer that drops everything, so callers need no branches.
"""
from __future__ import annotations

import math
import os
import sys
from typing import Mapping

import jax


class MetricWriter:
  """`write(step, {name: scalar})` to TensorBoard under `logdir` and, every `console_every` calls, to stderr."""

  def __init__(self, logdir: str | None, console: bool = True):
    self._active = jax.process_index() == 0
    self._tb = None
    self._console = console and self._active
    if self._active and logdir:
      from tensorboardX import SummaryWriter
      os.makedirs(logdir, exist_ok=True)
      self._tb = SummaryWriter(logdir=logdir, flush_secs=10)

  def write(self, step: int, scalars: Mapping[str, float], prefix: str = "") -> None:
    if not self._active:
      return
    values = {f"{prefix}{k}": float(v) for k, v in scalars.items()}
    if self._tb is not None:
      for name, value in values.items():
        self._tb.add_scalar(name, value, step)

  def log(self, message: str) -> None:
    """A line on the console (process 0 only), written around any progress bar."""
    if self._console:
      try:
        from tqdm import tqdm
        tqdm.write(message, file=sys.stderr)
      except ImportError:
        print(message, file=sys.stderr, flush=True)

  def flush(self) -> None:
    if self._tb is not None:
      self._tb.flush()

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()
      self._tb = None


def summary(scalars: Mapping[str, float], keys=None, digits: int = 4) -> str:
  """`loss=0.1234 reward=0.5` for the given keys (all when None), skipping absent ones."""
  keys = keys if keys is not None else sorted(scalars)
  parts = []
  for k in keys:
    if k in scalars:
      v = float(scalars[k])
      parts.append(f"{k}={v:.{digits}g}" if math.isfinite(v) else f"{k}={v}")
  return " ".join(parts)


def progress(total: int, initial: int = 0, desc: str = "", enabled: bool = True):
  """A tqdm progress bar on process 0 when stderr is a terminal (disabled elsewhere, or when not wanted).

  Redirected to a file (a pod's gathered logs, CI), a bar is a stream of carriage returns between the log lines,
  and the periodic step line says the same."""
  from tqdm import tqdm
  shown = enabled and jax.process_index() == 0 and sys.stderr.isatty()
  return tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True, file=sys.stderr, disable=not shown,
              mininterval=1.0)
