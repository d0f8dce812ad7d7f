"""Tiny random Qwen-VL checkpoints built in transformers, saved once per session, and our models loaded from them."""
import pytest

from geojax.models import load_hf
from geojax.models import testing

TINY = dict(vocab_size=256, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=128)


@pytest.fixture(scope="session")
def tiny_pair(tmp_path_factory):
  """(version, init_std, tied) -> (transformers model, our QwenVL loaded from its save_pretrained directory)."""
  cache = {}

  def get(version: str = "qwen2_5_vl", init_std: float | None = 0.2, tied: bool = False):
    key = (version, init_std, tied)
    if key not in cache:
      config = testing.hf_config(version, tie_word_embeddings=tied, **TINY)
      path = str(tmp_path_factory.mktemp(f"sampling_{version}"))
      hf = testing.build_hf_model(config, path, init_std=init_std)
      cache[key] = (hf, load_hf(path))
    return cache[key]

  return get
