"""Sampled tokens follow transformers' warped distribution (temperature, then top-k, then top-p)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from scipy import stats
from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

from geojax.sampling import SamplingSettings, choose, filtered_probs, generate
from geojax.sampling.logits import draw_noise, inverse_cdf
from geojax.models import testing

SETTINGS = [(1.0, None, None), (0.7, None, None), (1.3, 8, None), (0.8, None, 0.7), (1.0, 20, 0.9), (0.5, 3, 0.95)]


def _reference_probs(logits: np.ndarray, temperature, top_k, top_p) -> np.ndarray:
  """transformers' warpers in their generate order, then softmax (float64)."""
  scores = torch.from_numpy(logits.astype(np.float64))
  if temperature != 1.0:
    scores = TemperatureLogitsWarper(temperature)(None, scores)
  if top_k:
    scores = TopKLogitsWarper(top_k)(None, scores)
  if top_p is not None and top_p < 1.0:
    scores = TopPLogitsWarper(top_p)(None, scores)
  return scores.softmax(-1).numpy()


@pytest.mark.parametrize("temperature,top_k,top_p", SETTINGS)
def test_filtered_distribution_matches_transformers_warpers(temperature, top_k, top_p):
  logits = np.random.default_rng(0).normal(size=(4, 300)).astype(np.float32) * 2
  ours = np.asarray(filtered_probs(jnp.asarray(logits), SamplingSettings(temperature, top_k, top_p).check(300)))
  np.testing.assert_allclose(ours, _reference_probs(logits, temperature, top_k, top_p), atol=1e-5)


def test_choice_logprobs_are_policy_and_sampling_logprobs():
  logits = jnp.asarray(np.random.default_rng(1).normal(size=(64, 50)).astype(np.float32))
  settings = SamplingSettings(0.6, 10, 0.9)
  pick = choose(logits, jax.random.key(0), settings)
  rows = np.arange(64)
  policy = np.asarray(jax.nn.log_softmax(logits, -1))[rows, np.asarray(pick.token)]
  np.testing.assert_allclose(np.asarray(pick.logprob), policy, atol=1e-5)
  warped = np.asarray(filtered_probs(logits, settings))[rows, np.asarray(pick.token)]
  assert (warped > 0).all()
  np.testing.assert_allclose(np.asarray(pick.sampling_logprob), np.log(warped), atol=1e-5)


@pytest.mark.parametrize("width", [1, 16, 37, 300])
def test_inverse_cdf_draws_follow_the_softmax_and_never_a_masked_candidate(width):
  """40,000 draws of one row (every 7th candidate at -inf; widths around the 16-wide blocks) vs a float64 softmax:
  chi-square, and the returned logsumexp."""
  logits = np.random.default_rng(width).normal(size=width) * 2
  if width > 1:
    logits[3::7] = -np.inf
  n = 40000
  rows = jnp.asarray(np.tile(logits.astype(np.float32), (n, 1)))
  slot, logsumexp = jax.jit(inverse_cdf)(rows, draw_noise(jax.random.key(width), n))
  expected = np.exp(logits - logits.max())
  np.testing.assert_allclose(np.asarray(logsumexp), logits.max() + np.log(expected.sum()), rtol=1e-6)
  expected /= expected.sum()
  counts = np.bincount(np.asarray(slot), minlength=width)
  assert counts[expected == 0].sum() == 0
  if width > 1:
    keep = expected > 0
    _, p_value = stats.chisquare(counts[keep], expected[keep] * n)
    assert p_value > 1e-3, p_value


@pytest.mark.parametrize("temperature,top_k,top_p", [(0.7, None, None), (1.0, None, 0.8), (0.9, 30, 0.8)])
def test_first_step_samples_follow_warped_model_distribution(tiny_pair, temperature, top_k, top_p):
  """Many samples of one prompt's first token vs transformers' warped softmax of its logits: chi-square."""
  hf, model = tiny_pair("qwen2_5_vl", None)  # default init: a spread-out next-token distribution
  prompts = testing.make_prompts(hf.config, 1, seed=7)
  inputs = prompts.torch_inputs(hf.config.image_token_id)
  with torch.no_grad():
    out = hf.generate(**inputs, max_new_tokens=1, do_sample=False, output_logits=True, return_dict_in_generate=True,
                      pad_token_id=prompts.pad_id)
  expected = _reference_probs(out.logits[0].numpy(), temperature, top_k, top_p)[0]
  n = 6000
  result = generate(model, prompts.input_ids, prompts.attention_mask, prompts.pixel_values, prompts.image_grid_thw,
                    max_new_tokens=1, temperature=temperature, top_k=top_k, top_p=top_p, rng=jax.random.key(11),
                    num_samples=n)
  tokens = np.asarray(result.tokens)[:, 0]
  assert expected[tokens].min() > 0, "sampled a token outside the filtered support"
  counts = np.bincount(tokens, minlength=expected.size)
  # Pool the rare tokens into one cell so every expected count is >= 5 (chi-square validity).
  common = expected * n >= 5
  observed = np.append(counts[common], counts[~common].sum())
  wanted = np.append(expected[common], expected[~common].sum()) * n
  keep = wanted > 0
  _, p_value = stats.chisquare(observed[keep], wanted[keep] * observed[keep].sum() / wanted[keep].sum())
  assert p_value > 1e-3, (p_value, observed, wanted)


def test_tokens_after_eos_are_pad_when_sampling(tiny_pair):
  hf, model = tiny_pair("qwen2_5_vl", None)
  prompts = testing.make_prompts(hf.config, 2, seed=8)
  # With 256 tokens of roughly equal probability, ten EOS ids make EOS likely within 24 steps.
  eos, pad = list(range(100, 110)), 255
  result = jax.tree.map(np.asarray, generate(
      model, prompts.input_ids, prompts.attention_mask, prompts.pixel_values, prompts.image_grid_thw,
      max_new_tokens=24, temperature=1.0, rng=jax.random.key(5), eos_token_id=eos, pad_token_id=pad, num_samples=16))
  stopped = 0
  for row in range(result.tokens.shape[0]):
    is_eos = np.isin(result.tokens[row], eos)
    length = int(np.argmax(is_eos)) + 1 if is_eos.any() else 24
    stopped += bool(is_eos.any())
    assert result.lengths[row] == length
    assert (result.tokens[row, length:] == pad).all()
    assert (result.logprobs[row, length:] == 0).all() and (result.logprobs[row, :length] < 0).all()
    np.testing.assert_array_equal(np.asarray(result.mask)[row], np.arange(24) < length)
  assert stopped >= 16
