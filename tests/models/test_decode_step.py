"""The one-token decode step (decode_cache + decode_one) against the full forward pass."""
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from geojax.data.mrope import rope_index
from geojax.models import grid_tuple, load_hf
from tests.models import tiny_hf
from tests.models.test_qwen_vl import CASES, forward, make_batch


@nnx.jit(static_argnames="grid")
def _prefill(model, ids, mask, pos, pixels, grid):
  return model.prefill(ids, mask, pos, pixels, grid, model.init_cache(ids.shape[0], ids.shape[1], jnp.float32))


@nnx.jit(static_argnames=("length", "repeats"))
def _decode_cache(model, cache, length, repeats=1):
  return model.decode_cache(cache, length, repeats=repeats)


@nnx.jit
def _decode_one(model, tokens, cache, head=None):
  return model.decode_one(tokens, cache, head)


def _prompt_and_full(model, rng, steps):
  """A left-padded batch with images, `steps` more tokens per row, and the full forward's logits of it all."""
  ids, mask, pixels, grids = make_batch(rng, CASES["left_padded_batch_of_3"])
  new = rng.integers(0, 90, size=(ids.shape[0], steps)).astype(np.int32)
  full = forward(model, np.concatenate([ids, new], 1), np.concatenate([mask, np.ones_like(new)], 1), pixels, grids)
  pos, _ = rope_index(ids, mask, grids, image_token_id=tiny_hf.IMAGE_ID)
  last, cache = _prefill(model, ids, mask, pos, pixels, grid_tuple(grids))
  return ids, new, full, last, cache


@pytest.mark.parametrize("version", ["qwen2_vl", "qwen2_5_vl"])
def test_decode_one_matches_full_forward(hf_checkpoint, rng, version):
  model = load_hf(hf_checkpoint(version)[1])
  steps = 4
  ids, new, full, last, cache = _prompt_and_full(model, rng, steps)
  prompt_len, scale = ids.shape[1], np.abs(full).max()
  assert np.abs(np.asarray(last) - full[:, prompt_len - 1]).max() <= 1e-4 * scale
  cache = _decode_cache(model, cache, prompt_len + steps)
  batch, kv, hd = ids.shape[0], model.config.text.num_kv_heads, model.config.text.head_dim
  assert cache["k"][0].shape == (batch, kv, hd, prompt_len + steps)
  assert cache["v"][0].shape == (batch, kv, prompt_len + steps, hd)
  start = np.asarray(cache["next_pos"])
  for step in range(steps):
    logits, cache = _decode_one(model, jnp.asarray(new[:, step]), cache)
    assert logits.dtype == jnp.float32
    assert np.abs(np.asarray(logits) - full[:, prompt_len + step]).max() <= 1e-4 * scale, step
  assert int(cache["index"]) == prompt_len + steps
  np.testing.assert_array_equal(np.asarray(cache["next_pos"]), start + steps)


def test_repeated_rows_and_a_given_head(hf_checkpoint, rng):
  """repeats=G gives each row's step G times (prompt-major); a [D, V] head equals the tied embedding's logits."""
  model = load_hf(hf_checkpoint("qwen2_5_vl", tie=True)[1])
  ids, new, full, _, prefilled = _prompt_and_full(model, rng, 2)
  length, group = ids.shape[1] + 2, 3
  once = _decode_cache(model, prefilled, length)
  tiled = _decode_cache(model, prefilled, length, repeats=group)
  head = model.language_model.output_matrix()
  for step in range(2):
    logits, once = _decode_one(model, jnp.asarray(new[:, step]), once)
    tiled_logits, tiled = _decode_one(model, jnp.asarray(np.repeat(new[:, step], group)), tiled, head)
    np.testing.assert_allclose(np.asarray(tiled_logits), np.repeat(np.asarray(logits), group, axis=0), atol=1e-5)
    assert np.abs(np.asarray(logits) - full[:, ids.shape[1] + step]).max() <= 1e-4 * np.abs(full).max()
