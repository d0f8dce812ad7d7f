"""QwenVL logits against transformers, the KV cache against the full forward, and input checks."""
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from geojax.data.mrope import rope_index
from geojax.models import grid_tuple, load_hf
from tests.models import tiny_hf

CASES = {
    "text_only": [[9]],
    "one_image": [[3, (1, 4, 6), 5]],
    "two_images_one_row": [[2, (1, 8, 4), 3, (1, 4, 6), 4]],
    "left_padded_batch_of_3": [[2, (1, 4, 4), 3], [5, (1, 6, 8), 1, (1, 4, 2), 2], [7]],
}


def make_batch(rng, rows):
  ids, mask = tiny_hf.left_pad([tiny_hf.prompt(rng, r) for r in rows])
  grids = [p for r in rows for p in r if not isinstance(p, int)]
  pixels = tiny_hf.pixels(rng, grids) if grids else None
  return ids, mask, pixels, (np.array(grids, np.int32) if grids else None)


def hf_logits(model, ids, mask, pixels, grids):
  kwargs = dict(input_ids=torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask))
  if grids is None:  # transformers only builds positions from the mask when it has images; give them
    pos, _ = model.model.get_rope_index(kwargs["input_ids"], mm_token_type_ids=torch.zeros_like(kwargs["input_ids"]),
                                        attention_mask=kwargs["attention_mask"])
    kwargs["position_ids"] = pos
  else:
    kwargs.update(pixel_values=torch.tensor(pixels), image_grid_thw=torch.tensor(grids),
                  mm_token_type_ids=torch.tensor((ids == tiny_hf.IMAGE_ID).astype(np.int64)))
  with torch.no_grad():
    return model(**kwargs).logits.numpy()


@nnx.jit(static_argnames="grid")
def _jit_forward(model, ids, mask, pixels, grid, positions):
  return model(ids, mask, pixels, grid, positions)


def forward(model, ids, mask, pixels, grids):
  """Jitted logits (one compile beats eager's many on a busy CPU), positions from rope_index on the host."""
  positions, _ = rope_index(ids, mask, grids, image_token_id=model.config.image_token_id)
  grid = None if grids is None else grid_tuple(grids)
  return np.asarray(_jit_forward(model, ids, mask, pixels, grid, positions))


def rel_err(ours, ref, mask):
  real = mask.astype(bool)
  return float(np.abs(np.asarray(ours)[real] - ref[real]).max() / np.abs(ref[real]).max())


@pytest.mark.parametrize("version", ["qwen2_vl", "qwen2_5_vl"])
@pytest.mark.parametrize("case", list(CASES))
def test_float32_logits_match_transformers(hf_checkpoint, rng, version, case):
  hf, path = hf_checkpoint(version)
  model = load_hf(path)
  ids, mask, pixels, grids = make_batch(rng, CASES[case])
  err = rel_err(forward(model, ids, mask, pixels, grids), hf_logits(hf, ids, mask, pixels, grids), mask)
  print(f"{version} {case}: max|diff|/max|logit| = {err:.2e}")
  assert err <= 1e-4


@pytest.mark.parametrize("version", ["qwen2_vl", "qwen2_5_vl"])
def test_tied_embeddings_match_transformers(hf_checkpoint, rng, version):
  hf, path = hf_checkpoint(version, tie=True)
  model = load_hf(path)
  assert model.language_model.lm_head is None
  ids, mask, pixels, grids = make_batch(rng, CASES["one_image"])
  assert rel_err(forward(model, ids, mask, pixels, grids), hf_logits(hf, ids, mask, pixels, grids), mask) <= 1e-4


def test_eager_call_with_default_positions(hf_checkpoint, rng):
  """Outside jit, position_ids default to rope_index of the concrete inputs."""
  hf, path = hf_checkpoint("qwen2_5_vl")
  model = load_hf(path)
  ids, mask, pixels, grids = make_batch(rng, [[4], [7]])
  eager = np.asarray(model(ids, mask))
  assert rel_err(eager, hf_logits(hf, ids, mask, pixels, grids), mask) <= 1e-4
  np.testing.assert_allclose(eager, forward(model, ids, mask, pixels, grids), atol=1e-6)


@nnx.jit(static_argnames="grid")
def _prefill(model, ids, mask, pos, pixels, grid, cache):
  return model.prefill(ids, mask, pos, pixels, grid, cache)


@nnx.jit
def _decode(model, tokens, cache):
  return model.decode_step(tokens, None, cache)


@pytest.mark.parametrize("version", ["qwen2_vl", "qwen2_5_vl"])
def test_kv_cache_matches_full_forward(hf_checkpoint, rng, version):
  _, path = hf_checkpoint(version)
  model = load_hf(path)
  ids, mask, pixels, grids = make_batch(rng, CASES["left_padded_batch_of_3"])
  steps = 4
  new = rng.integers(0, 90, size=(ids.shape[0], steps)).astype(np.int32)
  full_ids = np.concatenate([ids, new], 1)
  full_mask = np.concatenate([mask, np.ones_like(new)], 1)
  full = forward(model, full_ids, full_mask, pixels, grids)

  pos, deltas = rope_index(ids, mask, grids, image_token_id=tiny_hf.IMAGE_ID)
  cache = model.init_cache(ids.shape[0], ids.shape[1] + steps + 2, jnp.float32)
  last, cache = _prefill(model, ids, mask, pos, pixels, grid_tuple(grids), cache)
  scale = np.abs(full).max()
  assert np.abs(np.asarray(last) - full[:, ids.shape[1] - 1]).max() <= 1e-4 * scale
  np.testing.assert_array_equal(np.asarray(cache["next_pos"]), mask.sum(1) + deltas)
  for step in range(steps):
    logits, cache = _decode(model, jnp.asarray(new[:, step]), cache)
    assert np.abs(np.asarray(logits) - full[:, ids.shape[1] + step]).max() <= 1e-4 * scale, step


def test_image_token_mismatch_raises(hf_checkpoint, rng):
  _, path = hf_checkpoint("qwen2_5_vl")
  model = load_hf(path)
  ids, mask, pixels, grids = make_batch(rng, CASES["one_image"])
  truncated = ids[:, :-8]  # cuts the image short
  with pytest.raises(ValueError, match="do not match"):
    model(truncated, mask[:, :-8], pixels, grids)
  with pytest.raises(ValueError, match="do not match"):
    model.embed(truncated, pixels, grids)
