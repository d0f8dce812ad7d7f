"""Decoding in phases (a growing cache, finished rows dropped from the batch) draws the tokens of one full-batch loop.

The reference is a plain loop written here: G copies of each prompt prefilled together, then the model's general
cached pass (`decode_step`, not the sampler's `decode_one`) one token at a time for every row until all have
stopped, step t drawing the batch's noise from fold_in(rng, t) (the sampler's documented contract)."""
import jax
import numpy as np
import pytest
from flax import nnx

from geojax.models import testing
from geojax.sampling import Sampler, SamplingSettings, choose
from geojax.sampling import loop
from geojax.sampling.logits import draw_noise

STEPS, GROUP = 24, 2


def _reference(model, prompts, settings: SamplingSettings, eos: tuple, rng):
  ids, mask = (np.repeat(x, GROUP, axis=0) for x in (prompts.input_ids, prompts.attention_mask))
  rows, prompt_len = ids.shape
  pixels = np.repeat(prompts.pixel_values.reshape(prompts.input_ids.shape[0], -1, prompts.pixel_values.shape[-1]),
                     GROUP, axis=0).reshape(-1, prompts.pixel_values.shape[-1])
  grid = np.repeat(prompts.image_grid_thw, GROUP, axis=0)
  positions = model.positions(ids, mask, grid)
  graphdef, state = nnx.split(model)

  @jax.jit
  def prefill(state, ids, mask, positions, pixels):
    m = nnx.merge(graphdef, state)
    return m.prefill(ids, mask, positions, pixels, grid, m.init_cache(rows, prompt_len + STEPS))

  @jax.jit
  def decode(state, token, cache):
    return nnx.merge(graphdef, state).decode_step(token, None, cache)

  logits, cache = prefill(state, ids, mask, positions, pixels)
  tokens = np.full((rows, STEPS), prompts.pad_id, np.int32)
  logprobs = np.zeros((rows, STEPS), np.float32)
  lengths = np.zeros(rows, np.int32)
  done = np.zeros(rows, bool)
  token = None
  for t in range(STEPS):
    if t:
      logits, cache = decode(state, token, cache)
    noise = None if settings.greedy else draw_noise(jax.random.fold_in(rng, t), rows)
    pick = choose(logits, None, settings, noise)
    token, logprob = np.asarray(pick.token), np.asarray(pick.logprob)
    tokens[~done, t], logprobs[~done, t], lengths[~done] = token[~done], logprob[~done], t + 1
    done |= np.isin(token, eos)
    if done.all():
      break
  return tokens, logprobs, lengths


def _stoppers(free: np.ndarray) -> tuple:
  """EOS ids that stop rows 0 and 1 early (tokens they draw at step >= 2) and never the last row."""
  last = set(free[-1].tolist())
  return tuple(next(int(x) for x in row[2:] if int(x) not in last) for row in free[:2])


@pytest.mark.parametrize("settings", [SamplingSettings(0.0), SamplingSettings(1.0, top_k=20, top_p=0.9)])
def test_phases_draw_the_tokens_of_one_full_batch_loop(tiny_pair, monkeypatch, settings):
  hf, model = tiny_pair()
  monkeypatch.setattr(loop, "MIN_BUCKET", 16)  # buckets 16/32/prompt+23 for these ~15-token prompts
  prompts = testing.make_prompts(hf.config, 2, seed=11)
  rng = jax.random.key(4)
  free, _, _ = _reference(model, prompts, settings, (), rng)
  eos = _stoppers(free)
  ref_tokens, ref_logprobs, ref_lengths = _reference(model, prompts, settings, eos, rng)

  sampler = Sampler(model, max_new_tokens=STEPS, temperature=settings.temperature, top_k=settings.top_k,
                    top_p=settings.top_p, eos_token_id=eos, pad_token_id=prompts.pad_id, num_samples=GROUP)
  ours = jax.tree.map(np.asarray, sampler(None, prompts.input_ids, prompts.attention_mask, prompts.pixel_values,
                                          prompts.image_grid_thw, rng=rng))
  phases = sampler.last_phases
  assert min(slots for slots, _, _ in phases) < 2 * GROUP, phases  # rows were dropped ...
  assert len({length for _, length, _ in phases}) > 1, phases     # ... and the cache grew
  np.testing.assert_array_equal(ours.tokens, ref_tokens)
  np.testing.assert_array_equal(ours.lengths, ref_lengths)
  np.testing.assert_allclose(ours.logprobs, ref_logprobs, atol=2e-5)

  single = Sampler(model, max_new_tokens=STEPS, temperature=settings.temperature, top_k=settings.top_k,
                   top_p=settings.top_p, eos_token_id=eos, pad_token_id=prompts.pad_id, num_samples=GROUP,
                   phases=False)
  one = jax.tree.map(np.asarray, single(None, prompts.input_ids, prompts.attention_mask, prompts.pixel_values,
                                        prompts.image_grid_thw, rng=rng))
  assert len(single.last_phases) == 1
  np.testing.assert_array_equal(one.tokens, ours.tokens)
  np.testing.assert_allclose(one.logprobs, ours.logprobs, atol=1e-5)  # other batch sizes: other rounding


def test_cache_buckets_hold_the_prompt_and_end_at_the_full_length(monkeypatch):
  monkeypatch.setattr(loop, "MIN_BUCKET", 16)
  assert loop.cache_buckets(15, 24) == (16, 32, 38)
  assert loop.cache_buckets(16, 24) == (32, 39)
  assert loop.cache_buckets(40, 1) == (41,)
  assert loop.bucket_for((16, 32, 38), 17) == 32
