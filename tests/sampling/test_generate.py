"""generate() against transformers' generate on the same weights, with images; EOS handling; G samples; caching."""
import jax
import numpy as np
import pytest
import torch

from geojax.sampling import compiled_signatures, generate
from geojax.models import testing


def _ours(model, prompts, steps, **kwargs):
  result = generate(model, prompts.input_ids, prompts.attention_mask, prompts.pixel_values, prompts.image_grid_thw,
                    max_new_tokens=steps, **kwargs)
  return jax.tree.map(np.asarray, result)


def _hf_greedy(hf, prompts, steps, eos):
  inputs = prompts.torch_inputs(hf.config.image_token_id)
  with torch.no_grad():
    out = hf.generate(**inputs, max_new_tokens=steps, do_sample=False, eos_token_id=eos, pad_token_id=prompts.pad_id,
                      output_logits=True, return_dict_in_generate=True)
  tokens = out.sequences[:, prompts.input_ids.shape[1]:].numpy()
  logprobs = torch.stack(out.logits, 1).log_softmax(-1).gather(-1, torch.from_numpy(tokens)[..., None])[..., 0]
  return tokens, logprobs.numpy()


@pytest.mark.parametrize("version,tied", [("qwen2_5_vl", False), ("qwen2_vl", False), ("qwen2_5_vl", True)])
def test_greedy_matches_transformers_with_images(tiny_pair, version, tied):
  hf, model = tiny_pair(version, tied=tied)
  prompts = testing.make_prompts(hf.config, 4, seed=1)
  ref_tokens, ref_logprobs = _hf_greedy(hf, prompts, 20, testing.TINY_EOS)
  ours = _ours(model, prompts, 20, temperature=0.0, eos_token_id=testing.TINY_EOS)
  assert ours.tokens.shape == (4, 20)
  np.testing.assert_array_equal(ours.tokens[:, :ref_tokens.shape[1]], ref_tokens)
  live = np.arange(ref_tokens.shape[1])[None] < ours.lengths[:, None]  # transformers keeps scoring after EOS
  np.testing.assert_allclose(ours.logprobs[:, :ref_tokens.shape[1]], np.where(live, ref_logprobs, 0.0), atol=2e-4,
                             rtol=1e-4)


def test_greedy_eos_stops_and_pads_like_transformers(tiny_pair):
  hf, model = tiny_pair()
  prompts = testing.make_prompts(hf.config, 4, seed=1)
  free = _ours(model, prompts, 20, temperature=0.0).tokens
  eos = int(free[0, 5])  # a token row 0 emits at step 5: rows stop at different steps, some maybe never
  ref_tokens, _ = _hf_greedy(hf, prompts, 20, eos)
  ours = _ours(model, prompts, 20, temperature=0.0, eos_token_id=[eos], pad_token_id=prompts.pad_id)
  np.testing.assert_array_equal(ours.tokens[:, :ref_tokens.shape[1]], ref_tokens)
  for row in range(4):
    hits = np.flatnonzero(ours.tokens[row] == eos)
    length = hits[0] + 1 if hits.size else 20
    assert ours.lengths[row] == length
    assert (ours.tokens[row, length:] == prompts.pad_id).all()
    assert (ours.logprobs[row, length:] == 0).all()
    np.testing.assert_array_equal(ours.tokens[row, :length], free[row, :length])
  assert ours.lengths[0] <= 6


def test_samples_per_prompt_are_prompt_major_and_tiling_modes_agree(tiny_pair):
  hf, model = tiny_pair()
  prompts = testing.make_prompts(hf.config, 2, seed=2)
  key = jax.random.key(3)
  kwargs = dict(temperature=1.0, top_k=50, rng=key, eos_token_id=testing.TINY_EOS, num_samples=3)
  by_cache = _ours(model, prompts, 8, tile="cache", **kwargs)
  by_prompt = _ours(model, prompts, 8, tile="prompt", **kwargs)
  assert by_cache.tokens.shape == (6, 8)
  np.testing.assert_array_equal(by_cache.tokens, by_prompt.tokens)
  np.testing.assert_allclose(by_cache.logprobs, by_prompt.logprobs, atol=1e-5)
  # Different samples of one prompt differ (independent draws per row).
  assert not (by_cache.tokens[0] == by_cache.tokens[1]).all() or not (by_cache.tokens[1] == by_cache.tokens[2]).all()


def test_one_compile_per_static_signature(tiny_pair):
  hf, model = tiny_pair()
  prompts = testing.make_prompts(hf.config, 2, seed=4)
  kwargs = dict(temperature=0.7, top_p=0.9, eos_token_id=testing.TINY_EOS, num_samples=2)
  first = _ours(model, prompts, 6, rng=jax.random.key(0), **kwargs)
  compiled = compiled_signatures()
  again = _ours(model, prompts, 6, rng=jax.random.key(1), **kwargs)
  same = _ours(model, prompts, 6, rng=jax.random.key(0), **kwargs)
  assert compiled_signatures() == compiled
  np.testing.assert_array_equal(first.tokens, same.tokens)
  assert not np.array_equal(first.tokens, again.tokens)


def test_noise_drawn_ahead_equals_noise_drawn_per_step(tiny_pair, monkeypatch):
  import sys
  hf, model = tiny_pair()
  prompts = testing.make_prompts(hf.config, 2, seed=8)
  kwargs = dict(temperature=1.0, top_k=20, top_p=0.9, rng=jax.random.key(5), eos_token_id=testing.TINY_EOS)
  ahead = _ours(model, prompts, 8, **kwargs)
  monkeypatch.setattr(sys.modules["geojax.sampling.sampler"], "NOISE_AHEAD_MAX", 0)
  per_step = _ours(model, prompts, 8, **kwargs)
  np.testing.assert_array_equal(ahead.tokens, per_step.tokens)
  np.testing.assert_array_equal(ahead.logprobs, per_step.logprobs)


def test_sharded_model_gives_the_same_completions(tiny_pair, tmp_path):
  from geojax.models import load_hf, make_mesh
  hf, model = tiny_pair(tied=True)  # tied: also covers the decode copy of the LM head under a mesh
  hf.save_pretrained(str(tmp_path))
  mesh = make_mesh((2, 2, 2))
  sharded = load_hf(str(tmp_path), mesh=mesh)
  prompts = testing.make_prompts(hf.config, 2, seed=5)
  kwargs = dict(temperature=1.0, top_k=20, rng=jax.random.key(7), eos_token_id=testing.TINY_EOS, num_samples=2)
  np.testing.assert_array_equal(_ours(sharded, prompts, 8, **kwargs).tokens, _ours(model, prompts, 8, **kwargs).tokens)


def test_bad_arguments_raise(tiny_pair):
  hf, model = tiny_pair()
  prompts = testing.make_prompts(hf.config, 2, seed=6)
  with pytest.raises(ValueError, match="rng"):
    _ours(model, prompts, 4, temperature=1.0)
  with pytest.raises(ValueError, match="LEFT-padded"):
    generate(model, prompts.input_ids[:, ::-1], prompts.attention_mask[:, ::-1], max_new_tokens=2, temperature=0.0)
  with pytest.raises(ValueError, match="top_p"):
    _ours(model, prompts, 4, temperature=1.0, top_p=0.0, rng=jax.random.key(0))


def test_tiling_modes_agree_with_several_images_per_prompt(tiny_pair):
  """Prompt 0 holds two images of different sizes, prompt 1 one: tiling prompts must repeat each prompt's images
  as a block (not each image in turn), so both modes draw the same tokens."""
  hf, model = tiny_pair()
  cfg = hf.config
  start, end, image = cfg.vision_start_token_id, cfg.vision_end_token_id, cfg.image_token_id
  rows = [[5, start] + [image] * 4 + [end, 7, start] + [image] * 2 + [end, 9],
          [11, 12, 13, start] + [image] * 4 + [end, 14, 15, 16, 17]]
  input_ids = np.asarray(rows, np.int32)
  grid = np.asarray([[1, 4, 4], [1, 2, 4], [1, 4, 4]], np.int32)
  patch_dim = 3 * cfg.vision_config.temporal_patch_size * cfg.vision_config.patch_size ** 2
  pixel_values = np.random.default_rng(0).standard_normal((16 + 8 + 16, patch_dim)).astype(np.float32)
  kwargs = dict(max_new_tokens=6, temperature=1.0, rng=jax.random.key(1), num_samples=3)
  by_cache = generate(model, input_ids, None, pixel_values, grid, tile="cache", **kwargs)
  by_prompt = generate(model, input_ids, None, pixel_values, grid, tile="prompt", **kwargs)
  np.testing.assert_array_equal(by_cache.tokens, by_prompt.tokens)
  np.testing.assert_allclose(by_cache.logprobs, by_prompt.logprobs, atol=1e-5)
