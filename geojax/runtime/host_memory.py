"""Freed host memory kept for reuse, so that XLA:CPU's buffers do not page-fault afresh at every step.

XLA:CPU allocates each program's buffers (its temporaries in one block) with malloc. glibc serves blocks over its
mmap threshold with a fresh mmap and unmaps them on free, so every step of a training loop first-touches all of its
activations again, a page fault per 4 KiB: `scripts/bench_grpo.py`'s GRPO update at vocab 2,048 spent about a
quarter of its time there (zeroing and copying into new pages). `keep_freed_memory` has glibc serve every block
from its heaps and keep up to `keep_bytes` of free memory at their tops, so the next step reuses pages already
mapped. It also keeps a single arena: XLA:CPU runs programs on threads of its own, and a thread's arena (heaps of
at most 64 MiB) serves a larger block with a fresh mmap whatever the settings, which left the vocab-151,936 GRPO
update 78k page faults (320 MB) a step. A thread keeps the arena it started with, so the arena setting counts only
when made before JAX starts its backend (`experiment.setup_runtime` does so where `only_cpu_possible`). The values
computed do not change (only where buffers live); the process holds on to its peak.
"""
from __future__ import annotations

import ctypes
import importlib.util
import pkgutil

import jax

_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8  # glibc's mallopt parameters (malloc.h)


def keep_freed_memory(keep_bytes: int = 1 << 30) -> bool:
  """glibc malloc: no mmap per block, one arena for every thread, and up to `keep_bytes` of freed memory kept for
  reuse (see the module docstring). Returns whether it took effect: False where the C library has no mallopt (macOS,
  musl's is a stub)."""
  try:
    mallopt = ctypes.CDLL(None).mallopt
  except (OSError, AttributeError):
    return False
  mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
  return (bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, min(keep_bytes, 2 ** 31 - 1)))
          and bool(mallopt(_M_ARENA_MAX, 1)))


def only_cpu_possible() -> bool:
  """Whether JAX can only start CPU devices in this process, decided without starting its backends (the arena
  setting must come first): JAX_PLATFORMS is just cpu, or no accelerator plugin (libtpu, jax_plugins.*) is
  installed."""
  platforms = jax.config.jax_platforms
  if platforms:
    return set(platforms.split(",")) == {"cpu"}
  if importlib.util.find_spec("libtpu") is not None:
    return False
  try:
    import jax_plugins
  except ImportError:
    return True
  return not any(pkgutil.iter_modules(jax_plugins.__path__))
