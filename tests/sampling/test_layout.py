"""The decode layout (8 host devices, conftest): same tokens as the unsharded model, and a decode loop that gathers
no weight and no full row of logits (read from the compiled HLO); vocabulary-split top-k / argmax / take."""
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from geojax.models import make_mesh, testing
from geojax.sampling import RolloutLayout, Sampler
from geojax.sampling.layout import loop_all_gathers
from geojax.sampling import logits as lg

KW = dict(max_new_tokens=8, temperature=1.0, top_k=20, eos_token_id=testing.TINY_EOS, num_samples=2)


def _all_gathers(hlo: str) -> list[int]:
  return [int(np.prod([int(d) for d in m.split(",") if d]))
          for m in re.findall(r"= \(?\w+\[([\d,]*)\]\S* all-gather(?:-start)?\(", hlo)]


def test_decode_layout_samples_the_same_tokens_and_gathers_no_weight_in_the_loop(tiny_pair):
  hf, model = tiny_pair()
  prompts = testing.make_prompts(hf.config, 2, seed=1)
  args = (prompts.input_ids, prompts.attention_mask, prompts.pixel_values, prompts.image_grid_thw)
  layout = RolloutLayout(model, make_mesh((2, 1, 4)), jnp.float32)  # rows over 2, heads / MLP / vocab over 4
  sampler = Sampler(layout.model, **KW)
  params = layout(nnx.state(model, nnx.Param))
  assert layout(nnx.state(model, nnx.Param)) is params  # once per parameter arrays
  ours = sampler(params, *args, rng=jax.random.key(0))
  ref = Sampler(model, **KW)(None, *args, rng=jax.random.key(0))
  np.testing.assert_array_equal(ours.tokens, ref.tokens)
  np.testing.assert_allclose(ours.logprobs, ref.logprobs, atol=1e-5)

  vocab = hf.config.text_config.vocab_size  # a weight or one row of full logits holds at least this many
  compiled = sampler.lower(params, *args, rng=jax.random.key(0)).compile()
  hlo = compiled.as_text()
  gathers = loop_all_gathers(hlo)
  assert gathers, "the decode loop's top-k merge should show up as (small) all-gathers"
  assert max(gathers) < vocab, gathers
  # abstract parameters, as plans pass them, compile to the same per-device arguments as the call's
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), params)
  planned = sampler.lower(abstract, *args, rng=jax.random.key(0)).compile()
  assert (planned.memory_analysis().argument_size_in_bytes == compiled.memory_analysis().argument_size_in_bytes)

  # the check sees weight gathers where they are: the training layout (FSDP over all 8) gathers weights
  fsdp = make_mesh((1, 8, 1))
  train_params = jax.device_put(nnx.state(model, nnx.Param), jax.tree.map(
      lambda x: NamedSharding(fsdp, P(*(("fsdp" if i == 0 and x.shape[0] % 8 == 0 else None)
                                        for i in range(x.ndim)))), nnx.state(model, nnx.Param)))
  train_hlo = Sampler(model, **KW).lower(train_params, *args, rng=jax.random.key(0)).compile().as_text()
  assert max(_all_gathers(train_hlo)) >= 64 * 64


def test_bfloat16_layout_holds_half_the_bytes_and_samples(tiny_pair):
  hf, model = tiny_pair()
  mesh = make_mesh((1, 1, 8))
  f32, bf16 = RolloutLayout(model, mesh, jnp.float32), RolloutLayout(model, mesh, jnp.bfloat16)
  assert bf16.weight_bytes_per_chip() * 2 == f32.weight_bytes_per_chip()
  # 2 KV heads do not split 8 ways: each chip holds the whole cache (rows 4 x 2 heads x 16 dims x 32 slots x 2 layers)
  assert bf16.kv_cache_bytes_per_chip(4, 32) == 2 * 2 * 4 * 2 * 16 * 32 * 2
  prompts = testing.make_prompts(hf.config, 2, seed=1)
  params = bf16(nnx.state(model, nnx.Param))
  assert {x.dtype for x in jax.tree.leaves(params)} == {jnp.dtype(jnp.bfloat16)}
  out = Sampler(bf16.model, **KW)(params, prompts.input_ids, prompts.attention_mask, prompts.pixel_values,
                                  prompts.image_grid_thw, rng=jax.random.key(0))
  assert out.tokens.shape == (4, 8) and np.isfinite(np.asarray(out.logprobs)).all()


@pytest.mark.parametrize("k", [1, 5, 64])
def test_vocabulary_split_choice_equals_the_whole_row(k):
  x = jax.random.normal(jax.random.key(0), (4, 256))
  x = x.at[1, 100].set(9.0).at[1, 200].set(9.0)  # a tie across shards: the lower id wins
  ids = jnp.array([3, 100, 255, 64], jnp.int32)
  mesh = make_mesh((2, 1, 4))
  with jax.set_mesh(mesh):
    split = jax.device_put(x, NamedSharding(mesh, P("data", "tensor")))
    got = jax.jit(lambda x, i: (lg.top_k(x, k), lg.argmax(x), lg.take(x, i)))(split, ids)
  want = (jax.lax.top_k(x, k), lg.first_argmax(x), jnp.take_along_axis(x, ids[:, None], axis=1)[:, 0])
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_array_equal(a, b)
  assert int(got[1][1]) == 100


def test_vocabulary_split_draw_equals_the_whole_row_and_gathers_no_row():
  x = jax.random.normal(jax.random.key(0), (64, 256)) * 3
  x = x.at[2, 64:].set(-jnp.inf).at[3, :192].set(-jnp.inf)  # rows 2 and 3: mass on the first / last shard only
  uniforms = lg.draw_noise(jax.random.key(1), 64)
  mesh = make_mesh((2, 1, 4))
  with jax.set_mesh(mesh):
    split = jax.device_put(x, NamedSharding(mesh, P("data", "tensor")))
    draw = jax.jit(lg.inverse_cdf)
    got = draw(split, uniforms)
    hlo = draw.lower(split, uniforms).compile().as_text()
  want = lg.inverse_cdf(x, uniforms)
  np.testing.assert_array_equal(got[0], want[0])
  np.testing.assert_allclose(got[1], want[1], rtol=1e-6)
  assert int(got[0][2]) < 64 and int(got[0][3]) >= 192
  assert max(_all_gathers(hlo) or [0]) <= 64 * 4  # each row's shard totals travel, never a row's blocks


@pytest.mark.parametrize("quantize", ["none", "nf4"])
def test_lora_decode_layout_samples_the_merged_weights(tiny_pair, quantize):
  """Under LoRA the decode copy is the merged weights (W + A B alpha / rank, an nf4 base dequantized first): greedy
  tokens in the decode layout equal those of the LoRA model sampled as it trains (adapters applied per matmul)."""
  from geojax.models import lora
  hf, base = tiny_pair()
  model = lora.apply_lora(nnx.clone(base), lora.LoraSpec(rank=4, alpha=8.0, targets="all", quantize=quantize))
  rng = np.random.default_rng(0)
  lora.set_adapter_tensors(model, {k: (0.3 * rng.standard_normal(a.shape), 0.3 * rng.standard_normal(b.shape))
                                   for k, (a, b) in lora.adapter_tensors(model).items()})
  prompts = testing.make_prompts(hf.config, 2, seed=1)
  args = (prompts.input_ids, prompts.attention_mask, prompts.pixel_values, prompts.image_grid_thw)
  kw = dict(KW, temperature=0.0, num_samples=1)
  layout = RolloutLayout(model, make_mesh((2, 1, 4)), jnp.float32)
  assert not lora.has_lora(layout.model)  # the plain model: no adapter matmul, no dequantization in the loop
  ours = Sampler(layout.model, **kw)(layout(lora.split_params(model)[1]), *args)
  ref = Sampler(model, **kw)(None, *args)
  np.testing.assert_array_equal(ours.tokens, ref.tokens)
  np.testing.assert_allclose(ours.logprobs, ref.logprobs, atol=1e-4)
  if quantize == "none":  # the adapters change the log-probs: the test sees them
    plain = Sampler(base, **kw)(None, *args)
    assert not np.allclose(plain.logprobs, ref.logprobs, atol=1e-3)
