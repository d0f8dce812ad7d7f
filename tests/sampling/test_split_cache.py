"""The per-model cache of nnx.split used by generate: fresh values every call, re-split on structural change."""
import gc
import weakref

import jax
from flax import nnx

from geojax.models import QwenVL, tiny_config
from geojax.sampling import split_cache


def _model():
  return QwenVL(tiny_config(vocab_size=256, hidden_size=32, num_layers=1, vision_depth=1), rngs=nnx.Rngs(0))


def test_cached_split_matches_nnx_split_and_sees_in_place_updates():
  model = _model()
  first, _ = split_cache.split(model)  # first sight: a plain split, nothing cached yet
  static, params = split_cache.split(model)
  graphdef, state = nnx.split(model)
  assert static.graphdef == graphdef and first == static
  assert all(a is b for a, b in zip(params, jax.tree.leaves(state)))
  again, _ = split_cache.split(model)
  assert again is static  # the walk was reused
  norm = model.language_model.norm.weight
  norm.set_value(norm.get_raw_value() + 1.0)  # what an optimizer step or nnx.update does
  _, params = split_cache.split(model)
  assert any(p is norm.get_raw_value() for p in params)


def test_structural_change_gives_a_fresh_split():
  model = _model()
  split_cache.split(model)
  static, _ = split_cache.split(model)
  model.language_model.norm = nnx.clone(model.language_model.norm)
  fresh, params = split_cache.split(model)
  assert fresh is not static and fresh == static  # new walk, same structure (so the same compiled executable)
  assert any(p is model.language_model.norm.weight.get_raw_value() for p in params)


def test_cache_does_not_keep_a_model_alive():
  model = _model()
  split_cache.split(model)
  split_cache.split(model)
  ref = weakref.ref(model)
  del model
  gc.collect()
  assert ref() is None
