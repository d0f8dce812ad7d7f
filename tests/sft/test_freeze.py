"""Freezing the vision tower: filters over the parameter paths of geojax's QwenVL."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from geojax.models import QwenVL, QwenVLConfig, TextConfig, VisionConfig
from geojax.sft import is_frozen, trainable_filter, trainable_mask


@pytest.fixture(scope="module")
def model():
  text = TextConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2, num_kv_heads=1,
                    mrope_section=(2, 3, 3))
  vision = VisionConfig(depth=2, hidden_size=16, intermediate_size=32, num_heads=2, out_hidden_size=32,
                        fullatt_block_indexes=(1,))
  config = QwenVLConfig(version="qwen2_5_vl", text=text, vision=vision)
  # parameter paths are all these tests need: shapes only, no initialization
  return nnx.eval_shape(lambda: QwenVL(config, rngs=nnx.Rngs(0)))


class StandIn(nnx.Module):
  """A VLM-shaped module (vision tower with a merger, language model) small enough to initialize."""

  def __init__(self, rngs):
    self.visual = nnx.Dict(blocks=nnx.Linear(2, 2, rngs=rngs), merger=nnx.Linear(2, 2, rngs=rngs))
    self.language_model = nnx.Linear(2, 2, rngs=rngs)


def flat_paths(state):
  return ["/".join(str(p) for p in path) for path, _ in nnx.to_flat_state(state)]


def test_filter_selects_language_model_only(model):
  trainable = flat_paths(nnx.state(model, trainable_filter(freeze_vision=True)))
  everything = flat_paths(nnx.state(model, nnx.Param))
  assert trainable and all(p.startswith("language_model/") for p in trainable)
  assert set(everything) - set(trainable) == {p for p in everything if p.startswith("visual/")}
  assert any(p.startswith("visual/") for p in everything)
  assert flat_paths(nnx.state(model, trainable_filter(freeze_vision=False))) == everything


def test_train_merger_keeps_projector_trainable(model):
  trainable = flat_paths(nnx.state(model, trainable_filter(freeze_vision=True, train_merger=True)))
  merger = [p for p in trainable if p.startswith("visual/")]
  assert merger and all(p.startswith("visual/merger/") for p in merger)


def test_mask_matches_filter(model):
  params = nnx.state(model, nnx.Param)
  mask = trainable_mask(params, freeze_vision=True)
  paths = jax.tree_util.tree_leaves_with_path(mask)
  assert all(flag == (not str(path[0].key).startswith("visual")) for path, flag in paths)
  assert jax.tree.structure(mask) == jax.tree.structure(params)
  # also on plain nested dicts
  plain = {"visual": {"blocks": [{"w": 1}]}, "language_model": {"w": 2}, "lm_head": {"w": 3}}
  assert trainable_mask(plain, frozen_keys=("lm_head",)) == {
      "visual": {"blocks": [{"w": False}]}, "language_model": {"w": True}, "lm_head": {"w": False}}


def test_optimizer_leaves_frozen_params_unchanged():
  model = StandIn(nnx.Rngs(0))
  optimizer = nnx.Optimizer(model, optax.sgd(0.1), wrt=trainable_filter(freeze_vision=True))
  before = nnx.state(model, nnx.Param)
  before = jax.tree.map(lambda x: np.array(x), before)
  language_kernel = np.array(model.language_model.kernel[...])
  vision_kernel = np.array(model.visual["blocks"].kernel[...])
  wrt = trainable_filter(freeze_vision=True)

  def loss(m):
    return sum(jnp.sum(x ** 2) for x in jax.tree.leaves(nnx.state(m, nnx.Param)))

  grads = nnx.grad(loss, argnums=nnx.DiffState(0, wrt))(model)
  optimizer.update(model, grads)
  after = nnx.state(model, nnx.Param)
  for (path, old), new in zip(jax.tree_util.tree_leaves_with_path(before), jax.tree.leaves(after)):
    changed = not np.array_equal(old, np.asarray(new))
    assert changed != is_frozen(path) or not np.any(old), path
  assert not np.array_equal(np.asarray(model.language_model.kernel[...]), language_kernel)
  np.testing.assert_array_equal(np.asarray(model.visual["blocks"].kernel[...]), vision_kernel)
