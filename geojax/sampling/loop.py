"""The sampler's traced program: prefill once, then one token per step until max_new_tokens or every row's EOS.

Traced inside `Sampler`'s jit with everything static in a `Plan`. The KV cache is created inside and never crosses
the jit boundary (nothing to donate): XLA updates it in place across the while loop. The model prefills a
prompt-length cache (attention over P keys, not P + N), then `decode_cache` repeats it G times (`tile="cache"`)
and lays it out for `decode_one`, its cheaper one-token step (over the scanned layers, or with `Plan.layer_list`
over per-layer copies of their parameters sliced once before the loop).
"""
from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from geojax.data.batch import repeat_examples
from geojax.models.sharding import shard
from geojax.sampling.logits import SamplingSettings, candidate_count, choose, draw_noise


class GenerateResult(NamedTuple):
  """Sampled completions; rows are prompt-major (prompt b's samples in rows b*G .. b*G+G-1)."""
  tokens: jax.Array             # int32 [B*G, N]; pad_token_id after EOS (the EOS itself is kept)
  logprobs: jax.Array           # float32 [B*G, N]; log softmax of the raw logits (temperature 1, no filtering)
  sampling_logprobs: jax.Array  # float32 [B*G, N]; log-prob under the scaled + top-k/top-p distribution sampled
  lengths: jax.Array            # int32 [B*G]; tokens up to and including the first EOS (N if none)

  @property
  def mask(self) -> jax.Array:
    """float32 [B*G, N], 1.0 on generated tokens (including EOS), 0.0 on the padding after it."""
    steps = jnp.arange(self.tokens.shape[1])
    return (steps[None, :] < self.lengths[:, None]).astype(jnp.float32)


@dataclasses.dataclass(frozen=True)
class Plan:
  """Everything static about one sampling call (hashable: part of the jit cache key)."""
  max_new_tokens: int
  settings: SamplingSettings
  eos_ids: tuple[int, ...]
  pad_id: int
  num_samples: int
  tile: str
  grid: tuple[tuple[int, int, int], ...] | None
  noise_ahead: bool  # draw every step's sampling noise before the loop (see sampler.NOISE_AHEAD_MAX)
  row_images: tuple[int, ...] | None = None  # images of each prompt row (tile="prompt" with images)
  layer_list: bool = False  # decode from per-layer copies of the stacked layers (see sampler.Sampler: CPU)


def _repeat_rows(x: jax.Array, times: int, axis: int = 0) -> jax.Array:
  return x if times == 1 else jnp.repeat(x, times, axis=axis)


def _row_grids(grid, row_images) -> list[tuple]:
  """The image grids of each prompt row, from all grids in prompt order and each row's image count."""
  starts = np.cumsum([0, *row_images[:-1]])
  return [tuple(grid[s:s + n]) for s, n in zip(starts, row_images)]


def _noise_ahead(rng: jax.Array, rows: int, vocab_size: int, plan: Plan) -> jax.Array | None:
  """[steps, rows, C] Gumbel noise, row t exactly what step t would draw from fold_in(rng, t); None unless
  plan.noise_ahead (then each step draws its own: on CPU, JAX's threefry is a rolled loop, and drawing per step
  costs two small while loops inside every decode step)."""
  if not plan.noise_ahead:
    return None
  width = candidate_count(vocab_size, plan.settings)
  keys = jax.vmap(lambda t: jax.random.fold_in(rng, t))(jnp.arange(plan.max_new_tokens))
  return jax.vmap(lambda key: draw_noise(key, (rows, width)))(keys)


def sample_loop(model, input_ids, attention_mask, position_ids, pixel_values, rng, head,
                plan: Plan) -> GenerateResult:
  """Traced body: prefill, then decode until max_new_tokens or every row has emitted EOS. `head` [D, V] or None
  is passed to `model.decode_one`."""
  batch, prompt_len = input_ids.shape
  steps, group = plan.max_new_tokens, plan.num_samples
  rows = batch * group
  grid = plan.grid
  input_ids = shard(input_ids, ("batch", "length"))
  attention_mask = shard(attention_mask, ("batch", "length"))
  if plan.tile == "prompt":  # every prompt (with all its images) repeated G times before prefill
    prompts = {"input_ids": input_ids, "attention_mask": attention_mask, "position_ids": position_ids}
    if pixel_values is not None:
      prompts["pixel_values"] = pixel_values
      row_grids = _row_grids(grid, plan.row_images)
      grid = tuple(g for row in row_grids for _ in range(group) for g in row)
    tiled = repeat_examples(prompts, group, patches=None if pixel_values is None else
                            [sum(t * h * w for t, h, w in row) for row in row_grids])
    input_ids, attention_mask, position_ids = tiled["input_ids"], tiled["attention_mask"], tiled["position_ids"]
    pixel_values = tiled.get("pixel_values")
  cache = model.init_cache(input_ids.shape[0], prompt_len)
  logits, cache = model.prefill(input_ids, attention_mask, position_ids, pixel_values, grid, cache)
  repeats = group if plan.tile == "cache" else 1
  cache = model.decode_cache(cache, prompt_len + max(steps - 1, 1), repeats=repeats)
  logits = _repeat_rows(logits, repeats)

  eos = jnp.asarray(plan.eos_ids or (-1,), jnp.int32)
  pad = jnp.int32(plan.pad_id)

  def record(t, pick, done, out):
    """Write step t's choice (pad / 0 for rows already finished) and update which rows are done."""
    tokens, logprobs, sampling_logprobs, lengths = out
    column = lambda buf, x: jax.lax.dynamic_update_slice(buf, x[:, None].astype(buf.dtype), (0, t))
    tokens = column(tokens, jnp.where(done, pad, pick.token))
    logprobs = column(logprobs, jnp.where(done, 0.0, pick.logprob))
    sampling_logprobs = column(sampling_logprobs, jnp.where(done, 0.0, pick.sampling_logprob))
    lengths = jnp.where(done, lengths, t + 1)
    done = done | jnp.isin(pick.token, eos)
    return done, (tokens, logprobs, sampling_logprobs, lengths)

  out = (jnp.full((rows, steps), pad, jnp.int32), jnp.zeros((rows, steps), jnp.float32),
         jnp.zeros((rows, steps), jnp.float32), jnp.zeros((rows,), jnp.int32))
  noise = _noise_ahead(rng, rows, logits.shape[-1], plan)
  step_noise = lambda t: None if noise is None else jax.lax.dynamic_index_in_dim(noise, t, keepdims=False)
  first = choose(logits, jax.random.fold_in(rng, 0), plan.settings, step_noise(0))
  done, out = record(0, first, jnp.zeros((rows,), bool), out)

  def keep_going(carry):
    t, _, done, _, _ = carry
    return (t < steps) & ~jnp.all(done)

  layers = model.language_model.layer_list() if plan.layer_list else None  # sliced once, before the loop

  def step(carry):
    t, token, done, cache, out = carry
    logits, cache = model.decode_one(token, cache, head, layers)
    pick = choose(logits, jax.random.fold_in(rng, t), plan.settings, step_noise(t))
    done, out = record(t, pick, done, out)
    return t + 1, pick.token, done, cache, out

  carry = (jnp.int32(1), first.token, done, cache, out)
  *_, out = jax.lax.while_loop(keep_going, step, carry)
  return GenerateResult(*out)
