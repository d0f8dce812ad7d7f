"""CPU numerics that do not depend on the processor, so a seeded run prints the same table on every machine.

XLA:CPU compiles for the instruction sets the processor has (AVX-512 here, AVX2 on another machine of the same
kind) and hands some fusions to YNNPACK, whose kernels are chosen at run time by CPU features: float rounding, and
with it a whole training trajectory, can then differ between machines. The entry points call `pin_cpu_numerics()`
before JAX starts a backend: XLA compiles for AVX2 at most and keeps every fusion in its own code (YNNPACK off). A
flag the user set in XLA_FLAGS is left as it is.

numba needs no pin: its kernels (geojax.data.resize, geojax.data.image) do integer arithmetic and table look-ups
only (the float normalization is a table numpy computes), so their output is the same on every instruction set,
and it is bit-identical to transformers' Pillow image processor (tests/data/test_image.py).
"""
from __future__ import annotations

import os
import platform
import sys
import warnings
from typing import MutableMapping

# (flag, value): each added to XLA_FLAGS unless XLA_FLAGS already names the flag
XLA_CPU_FLAGS = (("--xla_cpu_max_isa", "AVX2"), ("--xla_cpu_experimental_ynn_fusion_type", ""))


def _x86() -> bool:
  return platform.machine().lower() in ("x86_64", "amd64")


def pin_cpu_numerics(environ: MutableMapping[str, str] = os.environ) -> list[str]:
  """Adds the pinned XLA:CPU flags to XLA_FLAGS; returns the flags it added.

  Call before the first JAX computation (importing jax is fine): XLA reads XLA_FLAGS when it starts a backend.
  """
  added = []
  flags = environ.get("XLA_FLAGS", "")
  for flag, value in XLA_CPU_FLAGS:
    if flag == "--xla_cpu_max_isa" and not _x86():  # ISA names are x86's
      continue
    if flag.lstrip("-") not in flags:
      added.append(f"{flag}={value}")
  if added:
    environ["XLA_FLAGS"] = " ".join([flags, *added]).strip()
  if added and environ is os.environ and "jax" in sys.modules:
    from jax._src import xla_bridge
    if xla_bridge.backends_are_initialized():
      warnings.warn("pin_cpu_numerics: JAX's backends already started, so XLA_FLAGS takes no effect in this process")
  return added
