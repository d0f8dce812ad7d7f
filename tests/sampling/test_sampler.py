"""Sampler: built once, called with parameters that change; equal to generate on a model holding those parameters."""
import gc
import importlib.util
import weakref

import jax
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from geojax.models import make_mesh, testing
from geojax.sampling import Sampler, compiled_signatures, generate, loop

SETTINGS = dict(max_new_tokens=6, temperature=1.0, top_k=30, eos_token_id=testing.TINY_EOS, num_samples=2)


def _call(sampler, params, prompts, seed):
  result = sampler(params, prompts.input_ids, prompts.attention_mask, prompts.pixel_values, prompts.image_grid_thw,
                   rng=jax.random.key(seed))
  return jax.tree.map(np.asarray, result)


def _generate(model, prompts, seed):
  result = generate(model, prompts.input_ids, prompts.attention_mask, prompts.pixel_values, prompts.image_grid_thw,
                    rng=jax.random.key(seed), **SETTINGS)
  return jax.tree.map(np.asarray, result)


def _with_params(model, params):
  model = nnx.clone(model)
  nnx.update(model, params)
  return model


@pytest.mark.parametrize("tied", [False, True])
def test_fresh_params_each_call_equal_generate_on_an_updated_model(tiny_pair, tied):
  """As a trainer calls it: new parameter arrays every call (tied: a new embedding, so a new CPU head copy)."""
  hf, model = tiny_pair(tied=tied)
  prompts = testing.make_prompts(hf.config, 2, seed=3)
  sampler = Sampler(model, **SETTINGS)
  params = nnx.state(model, nnx.Param)
  steps = [jax.tree.map(lambda x, s=s: x * (1.0 + 0.2 * s), params) for s in range(3)]
  for step, p in [(0, None), (1, steps[1]), (2, steps[2]), (1, steps[1])]:
    ours = _call(sampler, p, prompts, seed=5)
    ref = _generate(model if p is None else _with_params(model, p), prompts, seed=5)
    np.testing.assert_array_equal(ours.tokens, ref.tokens, err_msg=f"step {step}")
    np.testing.assert_array_equal(ours.logprobs, ref.logprobs)
  assert not np.array_equal(_call(sampler, steps[2], prompts, 5).logprobs, _call(sampler, None, prompts, 5).logprobs)


def test_samplers_of_one_graph_share_the_executable(tiny_pair):
  hf, model = tiny_pair()
  prompts = testing.make_prompts(hf.config, 2, seed=4)
  first = _call(Sampler(model, **SETTINGS), None, prompts, seed=1)
  compiled = compiled_signatures()
  again = _call(Sampler(model, **SETTINGS), nnx.state(model, nnx.Param), prompts, seed=1)
  assert compiled_signatures() == compiled
  np.testing.assert_array_equal(first.tokens, again.tokens)


def test_sampler_keeps_neither_the_model_nor_a_stale_head(tiny_pair):
  hf, loaded = tiny_pair(tied=True)
  model = nnx.clone(loaded)
  sampler = Sampler(model, max_new_tokens=2, temperature=0.0)
  ref = weakref.ref(model)
  del model
  gc.collect()
  assert ref() is None
  prompts = testing.make_prompts(hf.config, 1, seed=2)
  params = jax.tree.map(lambda x: x * 1.1, sampler.params)
  embedding = params["language_model"]["embed_tokens"]["embedding"].get_raw_value()
  head_shape = embedding.shape[::-1]  # the sampler's [D, V] decode copy of a tied head
  heads = lambda: {id(x) for x in jax.live_arrays() if x.shape == head_shape}
  before = heads()
  _call(sampler, params, prompts, seed=0)
  embedding = weakref.ref(embedding)
  del params
  gc.collect()
  assert embedding() is None  # the sampler keeps neither the embedding ...
  assert not heads() - before  # ... nor a head copy made from it


@pytest.mark.skipif(importlib.util.find_spec("libtpu") is None, reason="the TPU compiler (libtpu) is not installed")
def test_cpu_decode_copies_go_by_where_the_parameters_are(tiny_pair, monkeypatch):
  """The copies XLA:CPU decodes faster from (each layer out of the stack, a tied head transposed) are made for
  parameters on CPU devices only: a program lowered here for TPU chips, as `geojax.plan` does, gets neither."""
  from geojax import plan
  hf, model = tiny_pair(tied=True)
  sampler = Sampler(model, **SETTINGS)
  prompts = testing.make_prompts(hf.config, 2, seed=1)
  args = (prompts.input_ids, prompts.attention_mask, prompts.pixel_values, prompts.image_grid_thw)
  params = nnx.state(model, nnx.Param)
  mesh = make_mesh((1, -1, 1), devices=plan.tpu_target("v5e:2x2").devices)
  on_tpu = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=NamedSharding(mesh, P())), params)
  built = []  # (head copy given, layer copies planned) of each program traced
  start = loop.start
  monkeypatch.setattr(loop, "start", lambda *a: built.append((a[-3] is not None, a[-2].layer_list)) or start(*a))
  sampler.lower(on_tpu, *args, rng=jax.eval_shape(lambda: jax.random.key(0)))
  sampler.lower(params, *args, rng=jax.random.key(0))
  assert built == [(False, False), (True, True)]


def test_settings_are_checked_when_built(tiny_pair):
  _, model = tiny_pair()
  with pytest.raises(ValueError, match="top_p"):
    Sampler(model, max_new_tokens=4, top_p=0.0)
  with pytest.raises(ValueError, match="max_new_tokens"):
    Sampler(model, max_new_tokens=0)
  with pytest.raises(ValueError, match="tile"):
    Sampler(model, max_new_tokens=4, num_samples=2, tile="rows")
  with pytest.raises(ValueError, match="rng"):
    Sampler(model, max_new_tokens=4)(None, np.ones((1, 3), np.int32))
