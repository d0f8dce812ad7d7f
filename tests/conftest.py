"""Test-wide settings: offline hubs, 8 host CPU devices for sharding tests, deterministic float32 matmuls."""
import gc
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

from geojax.runtime.numerics import pin_cpu_numerics  # noqa: E402

# the entry points' XLA:CPU numerics: sampled tokens, and every assertion on them, do not depend on the processor
# that runs the suite (CI's machine may have AVX-512 or not)
pin_cpu_numerics()

import jax  # noqa: E402  (after the environment above)
import pytest  # noqa: E402

from geojax import runtime  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")


@pytest.fixture(autouse=True)
def system_allocator(monkeypatch):
  """Entry points run in-process keep glibc's defaults: the suite runs many programs a few times each, where a heap
  that keeps freed memory made tests/learners 6% slower (runtime.keep_freed_memory pays off on steps repeated; it
  changes no value). tests/runtime/test_host_memory.py tests it in fresh processes."""
  monkeypatch.setattr(runtime, "keep_freed_memory", lambda *args, **kwargs: False)


@pytest.hookimpl(trylast=True)  # after the session fixtures' teardown
def pytest_sessionfinish(session):
  """Collect the session's garbage now, while the worker still counts as running, and freeze what survives.

  Right after this hook an xdist worker reports itself finished; execnet then gives it 5 s to exit before sending it
  SIGINT. The rest of pytest's shutdown runs full collections (one of them unraisableexception's), each a traversal
  of the whole heap the suite built up (jit caches, models, tokenizers): seconds apiece on a loaded 2-core machine.
  The SIGINT landed in one of them and printed a KeyboardInterrupt traceback from jax's gc callback. After the freeze
  those collections only see objects made during shutdown; the garbage they would have found is collected here,
  where pytest still reports unraisable exceptions from finalizers."""
  gc.collect()
  gc.freeze()
