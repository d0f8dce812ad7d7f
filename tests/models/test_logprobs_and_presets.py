"""Chunked token log-probs (values and gradients) and preset parameter counts."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from geojax.data.mrope import rope_index
from geojax.models import QwenVL, grid_tuple, load_hf
from geojax.models.logprobs import token_logprobs
from geojax.models.presets import PRESETS, PUBLISHED_PARAMS_B, tiny_config
from tests.models.test_qwen_vl import make_batch


@pytest.mark.parametrize("tie", [False, True])
def test_token_logprobs_values_and_grads_match_full_logits(hf_checkpoint, rng, tie):
  _, path = hf_checkpoint("qwen2_5_vl", tie=tie)
  model = load_hf(path)
  ids, mask, pixels, grids = make_batch(rng, [[4, (1, 4, 4), 3], [6]]) if tie else make_batch(rng, [[5], [9]])
  positions, _ = rope_index(ids, mask, grids, image_token_id=model.config.image_token_id)
  targets = np.roll(ids, -1, axis=1)
  weights = jnp.asarray(mask, jnp.float32)
  grid = None if grids is None else grid_tuple(grids)

  def full(m):
    lp = jax.nn.log_softmax(m(ids, mask, pixels, grid, positions) / 0.7)
    return jnp.take_along_axis(lp, jnp.asarray(targets)[..., None], -1)[..., 0]

  def chunked(m):
    return token_logprobs(m, ids, targets, mask, pixels, grid, positions, chunk_size=5, temperature=0.7)

  def loss(fn):
    return lambda m: (jnp.sum(fn(m) * weights), fn(m))

  @nnx.jit
  def both(m):
    (_, lp_full), g_full = nnx.value_and_grad(loss(full), has_aux=True)(m)
    (_, lp_chunk), g_chunk = nnx.value_and_grad(loss(chunked), has_aux=True)(m)
    return lp_chunk, lp_full, g_full, g_chunk

  lp_chunk, lp_full, g_full, g_chunk = both(model)
  np.testing.assert_allclose(np.asarray(lp_chunk) * mask, np.asarray(lp_full) * mask, atol=1e-5)
  for a, b in zip(jax.tree.leaves(g_full), jax.tree.leaves(g_chunk)):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=1e-5, rtol=1e-4)


# 32B / 72B take ~10 s each to trace on a busy CPU; their counts (33.45B, 73.41B) are in BENCHMARKS.md.
@pytest.mark.parametrize("name", ["qwen2-vl-2b", "qwen2-vl-7b", "qwen2.5-vl-3b", "qwen2.5-vl-7b"])
def test_preset_parameter_counts_match_published(name):
  model = nnx.eval_shape(lambda: QwenVL(PRESETS[name], rngs=nnx.Rngs(0)))
  count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
  print(f"{name}: {count / 1e9:.3f}B (published {PUBLISHED_PARAMS_B[name]}B)")
  assert abs(count / 1e9 / PUBLISHED_PARAMS_B[name] - 1) < 0.005


@pytest.mark.parametrize("version", ["qwen2_5_vl"])
def test_tiny_config_runs_with_remat_grad(version):
  config = tiny_config(version, vocab_size=300, image_token_id=290, vision_start_token_id=291,
                       vision_end_token_id=292, video_token_id=293, remat_policy="dots")
  model = QwenVL(config, rngs=nnx.Rngs(0))
  ids = np.array([[1, 2, 291] + [290] * 4 + [292, 5, 6]], np.int32)
  pixels = np.ones((16, config.vision.patch_dim), np.float32)
  loss = lambda m: jnp.mean(token_logprobs(m, ids, np.roll(ids, -1, 1), None, pixels, np.array([[1, 4, 4]])))
  value, grads = nnx.jit(nnx.value_and_grad(loss))(model)
  assert np.isfinite(value) and all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))


def test_memory_plan_orders_remat_policies():
  from geojax.models.memory import memory_plan
  config = PRESETS["qwen2.5-vl-7b"]
  plans = {p: memory_plan(config, remat_policy=p, n_params=8_292_166_656) for p in ("none", "dots", "full")}
  assert plans["none"].activations > plans["dots"].activations > plans["full"].activations
  assert abs(plans["full"].params - 8_292_166_656 * 4 / 32 / 2**30) < 1e-9
  assert plans["full"].reference == plans["full"].params  # the reference is a float32 copy
  assert plans["full"].total < 32  # Geo-R's 7B GRPO fits a 32 GB v4 chip with full remat
