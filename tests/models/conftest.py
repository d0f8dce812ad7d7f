"""Tiny transformers checkpoints saved once per session, and our models loaded from them."""
import numpy as np
import pytest

from tests.models import tiny_hf


@pytest.fixture(scope="session")
def hf_checkpoint(tmp_path_factory):
  """version -> (transformers model, directory written by save_pretrained)."""
  cache = {}

  def get(version: str, tie: bool = False):
    key = (version, tie)
    if key not in cache:
      model = tiny_hf.hf_model(version, tie=tie)
      path = tmp_path_factory.mktemp(f"{version}_{'tied' if tie else 'untied'}")
      model.save_pretrained(str(path))
      cache[key] = (model, str(path))
    return cache[key]

  return get


@pytest.fixture
def rng():
  return np.random.default_rng(0)
