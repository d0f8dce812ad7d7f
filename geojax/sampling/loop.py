"""The sampler's traced programs: prefill, then one token per step, in phases of static batch and cache length.

`start` prefills, picks the first token and runs the first phase; while rows remain, the host (`Sampler`) reads how
far the phase got and calls `resume` for the next. A phase ends when its cache is full or when at most half its rows
are live, so that
  - attention covers what is filled: the decode cache grows in buckets (`cache_buckets`: powers of two from
    MIN_BUCKET up to prompt + max_new_tokens - 1), so a step attends over fewer than twice the slots that hold
    tokens, not over prompt + max_new_tokens;
  - rows that finish early stop costing: the next phase gathers the live rows into the smallest power of two that
    holds them (the rest of its slots are finished rows that write nothing).
Results are written by original row into full-size buffers. Row r's sampling noise at step t is row r of the draw
the whole batch makes (fold_in(rng, t), shape [B*G, NOISE_WIDTH]), so the tokens are the same whatever the phases.

The model's caches are opaque pytrees here (`cache_axes` finds each leaf's batch and length axes from the shapes
`decode_cache` gives), so the loop holds for per-layer tuples and stacked layers alike. The prefill cache has
prompt length (attention over P keys, not P + N); `decode_cache` repeats it G times (`tile="cache"`) and lays it
out for `decode_one`, the cheaper one-token step (over the scanned layers, or with `Plan.layer_list` over per-layer
copies of their parameters sliced once per phase, and per-layer caches).
"""
from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from geojax.data.batch import repeat_examples
from geojax.models.sharding import shard
from geojax.sampling.logits import SamplingSettings, choose, draw_noise

# The smallest cache bucket (slots): below it attention is a small part of a step, and a phase costs a host sync.
MIN_BUCKET = 256


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
  compact: bool = True  # end a phase when at most half its rows are live
  layer_list: bool = False  # decode from per-layer copies of the layers, over per-layer caches (sampler.Sampler: CPU)


class DecodeState(NamedTuple):
  """The decode loop's carry, and what one phase hands the next (b slots, R = B*G result rows)."""
  t: jax.Array            # int32 []: the next step
  token: jax.Array        # int32 [b]: each slot's last token
  done: jax.Array         # bool [b]
  rows: jax.Array         # int32 [b]: the result row a slot decodes (filler slots repeat a finished row)
  cache: dict             # the model's decode cache, batch b
  out: tuple              # (tokens [R, N], logprobs [R, N], sampling_logprobs [R, N], lengths [R])
  noise: jax.Array | None  # [N, R, NOISE_WIDTH] every step's uniforms, when drawn ahead
  rng: jax.Array


def cache_length(prompt_len: int, max_new_tokens: int) -> int:
  """The full decode cache: the prompt and every new token but the last (at least one slot past the prompt)."""
  return prompt_len + max(max_new_tokens - 1, 1)


def cache_buckets(prompt_len: int, max_new_tokens: int) -> tuple[int, ...]:
  """The cache lengths phases use: powers of two from MIN_BUCKET that hold the prompt and one new token, then the
  full `cache_length`."""
  total = cache_length(prompt_len, max_new_tokens)
  size, sizes = MIN_BUCKET, []
  while size < total:
    if size > prompt_len:
      sizes.append(size)
    size *= 2
  return (*sizes, total)


def bucket_for(buckets: tuple[int, ...], needed: int) -> int:
  """The smallest bucket that holds `needed` slots."""
  return next(b for b in buckets if b >= needed)


def cache_axes(model, per_layer: bool = False) -> list[tuple[int | None, int | None]]:
  """(batch axis, length axis) of each leaf of the model's decode cache (flattened order; None where a leaf has
  none), from the shapes `decode_cache` gives for two batch sizes and two lengths."""
  base = jax.eval_shape(lambda: model.init_cache(1, 1))
  leaves = lambda length, repeats: jax.tree.leaves(
      jax.eval_shape(lambda c: model.decode_cache(c, length, repeats=repeats, per_layer=per_layer), base))
  ref, longer, wider = leaves(2, 1), leaves(3, 1), leaves(2, 2)
  differs = lambda a, b: next((i for i, (x, y) in enumerate(zip(a.shape, b.shape)) if x != y), None)
  return [(differs(r, w), differs(r, n)) for r, n, w in zip(ref, longer, wider)]


def _reshape_cache(model, cache: dict, order: jax.Array | None, length: int, per_layer: bool) -> dict:
  """The cache with its batch gathered by `order` (None: kept) and its length padded with empty slots to
  `length`."""
  leaves, treedef = jax.tree.flatten(cache)
  out = []
  for leaf, (batch_axis, length_axis) in zip(leaves, cache_axes(model, per_layer)):
    if order is not None and batch_axis is not None:
      leaf = jnp.take(leaf, order, axis=batch_axis)
    if length_axis is not None and leaf.shape[length_axis] < length:
      pad = [(0, 0)] * leaf.ndim
      pad[length_axis] = (0, length - leaf.shape[length_axis])
      leaf = jnp.pad(leaf, pad)
    out.append(leaf)
  return jax.tree.unflatten(treedef, out)


def _repeat_rows(x: jax.Array, times: int, axis: int = 0) -> jax.Array:
  return x if times == 1 else jnp.repeat(x, times, axis=axis)


def _row_grids(grid, row_images) -> list[tuple]:
  """The image grids of each prompt row, from all grids in prompt order and each row's image count."""
  starts = np.cumsum([0, *row_images[:-1]])
  return [tuple(grid[s:s + n]) for s, n in zip(starts, row_images)]


def _noise_ahead(rng: jax.Array, rows: int, plan: Plan) -> jax.Array | None:
  """[steps, rows, NOISE_WIDTH] uniforms, row t exactly what step t would draw from fold_in(rng, t); None unless
  plan.noise_ahead (then each step draws its own: on CPU, JAX's threefry is a rolled loop, and drawing per step
  costs two small while loops inside every decode step)."""
  if not plan.noise_ahead:
    return None
  keys = jax.vmap(lambda t: jax.random.fold_in(rng, t))(jnp.arange(plan.max_new_tokens))
  return jax.vmap(lambda key: draw_noise(key, rows))(keys)


def _step_noise(s: DecodeState, plan: Plan) -> jax.Array | None:
  """[b, NOISE_WIDTH]: each slot's row of the noise the whole batch draws at step s.t (None when greedy)."""
  if plan.settings.greedy:
    return None
  total = s.out[3].shape[0]
  if s.noise is not None:
    noise = jax.lax.dynamic_index_in_dim(s.noise, s.t, keepdims=False)
  else:
    noise = draw_noise(jax.random.fold_in(s.rng, s.t), total)
  return noise if s.rows.shape[0] == total else noise[s.rows]


def _record(s: DecodeState, pick, plan: Plan) -> DecodeState:
  """Write step t's choice for the live slots, mark the rows that emitted EOS done, advance t."""
  tokens, logprobs, sampling_logprobs, lengths = s.out
  total = lengths.shape[0]
  if s.rows.shape[0] == total:  # every row in its own slot (no compaction yet): column writes
    column = lambda buf, x, fill: jax.lax.dynamic_update_slice(
        buf, jnp.where(s.done, fill, x)[:, None].astype(buf.dtype), (0, s.t))
    out = (column(tokens, pick.token, plan.pad_id), column(logprobs, pick.logprob, 0.0),
           column(sampling_logprobs, pick.sampling_logprob, 0.0), jnp.where(s.done, lengths, s.t + 1))
  else:  # slots of finished rows write nothing (index out of range: dropped)
    at = jnp.where(s.done, total, s.rows)
    put = lambda buf, x: buf.at[at, s.t].set(x.astype(buf.dtype), mode="drop")
    out = (put(tokens, pick.token), put(logprobs, pick.logprob), put(sampling_logprobs, pick.sampling_logprob),
           lengths.at[at].set(s.t + 1, mode="drop"))
  eos = jnp.asarray(plan.eos_ids or (-1,), jnp.int32)
  return s._replace(t=s.t + 1, token=pick.token, done=s.done | jnp.isin(pick.token, eos), out=out)


def _run_phase(model, s: DecodeState, head, plan: Plan, prompt_len: int, length: int):
  """Decode steps while the cache (length slots) has room, rows are live and (with compaction) more than half the
  slots are. Returns (state, (t, live rows)) for the host to choose the next phase."""
  slots = s.token.shape[0]
  stop = min(plan.max_new_tokens, length - prompt_len + 1)  # step t writes slot prompt_len + t - 1
  least = slots // 2 if plan.compact else 0
  layers = model.language_model.layer_list() if plan.layer_list else None  # sliced once, before the loop

  def keep_going(s):
    return (s.t < stop) & (jnp.sum(~s.done) > least)

  def step(s):
    logits, cache = model.decode_one(s.token, s.cache, head, layers)
    pick = choose(logits, None, plan.settings, _step_noise(s, plan))
    return _record(s._replace(cache=cache), pick, plan)

  s = jax.lax.while_loop(keep_going, step, s)
  return s, (s.t, jnp.sum(~s.done))


def start(model, input_ids, attention_mask, position_ids, pixel_values, rng, head, plan: Plan, length: int):
  """Traced: prefill, the first token, then the first phase over a `length`-slot cache. `head` [D, V] or None is
  passed to `model.decode_one`."""
  batch, prompt_len = input_ids.shape
  group = plan.num_samples
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
  cache = model.decode_cache(cache, length, repeats=repeats, per_layer=plan.layer_list)
  logits = _repeat_rows(logits, repeats)

  steps = plan.max_new_tokens
  out = (jnp.full((rows, steps), plan.pad_id, jnp.int32), jnp.zeros((rows, steps), jnp.float32),
         jnp.zeros((rows, steps), jnp.float32), jnp.zeros((rows,), jnp.int32))
  s = DecodeState(jnp.int32(0), jnp.zeros((rows,), jnp.int32), jnp.zeros((rows,), bool),
                  jnp.arange(rows, dtype=jnp.int32), cache, out, _noise_ahead(rng, rows, plan), rng)
  s = _record(s, choose(logits, None, plan.settings, _step_noise(s, plan)), plan)
  return _run_phase(model, s, head, plan, prompt_len, length)


def resume(model, s: DecodeState, head, plan: Plan, prompt_len: int, slots: int, length: int):
  """Traced: the next phase, with the live rows gathered into `slots` slots (live ones first, in order) and the
  cache grown to `length`."""
  order = None
  if slots < s.token.shape[0]:
    order = jnp.argsort(s.done, stable=True)[:slots]
    s = s._replace(token=s.token[order], done=s.done[order], rows=s.rows[order])
  s = s._replace(cache=_reshape_cache(model, s.cache, order, length, plan.layer_list))
  return _run_phase(model, s, head, plan, prompt_len, length)
