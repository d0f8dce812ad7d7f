"""Fixtures shared by the train / eval tests: one small built-in dataset per session, a persistent compile cache."""
import os

import jax
import pytest

CACHE = os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", "/tmp/geojax_test_jax_cache")
jax.config.update("jax_compilation_cache_dir", CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


@pytest.fixture(scope="session")
def builtin_dir(tmp_path_factory):
  """64 train / 16 test tiles of the built-in dataset (what configs/default.py trains on)."""
  from geojax.data import builtin
  path = str(tmp_path_factory.mktemp("builtin"))
  builtin.build(path, seed=0, n_train=64, n_test=16, image_size=56, sea_fraction=0.1)
  return path
