"""Stops a run at the first non-finite loss, before anything is saved from the broken step."""
from __future__ import annotations

import math
from typing import Mapping


class NonFiniteError(FloatingPointError):
  """A loss or gradient norm became NaN or infinite; the last checkpoint on disk is from before it."""


def check_finite(step: int, metrics: Mapping[str, float], keys=("loss", "grad_norm")) -> None:
  """Raises NonFiniteError naming the step and the first offending metric (among `keys` present)."""
  for key in keys:
    if key in metrics:
      value = float(metrics[key])
      if not math.isfinite(value):
        raise NonFiniteError(
            f"{key} is {value} at step {step}: stopping. The last complete checkpoint (before this step) is "
            "intact; lower the learning rate or check the data, then resume from it.")
