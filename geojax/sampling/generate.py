"""Batched autoregressive sampling for QwenVL: prefill and decode loop in one jitted function with a KV cache.

    result = generate(model, input_ids, attention_mask, pixel_values, image_grid_thw, max_new_tokens=64,
                      temperature=1.0, top_p=0.95, rng=jax.random.key(0), eos_token_id=tok.eos_id, num_samples=8)
    result.tokens     # int32 [B*G, N], pad_token_id after each row's EOS
    result.logprobs   # float32 [B*G, N], UNscaled policy log-probs log softmax(logits)[token] (0 after EOS)

Row r of the result is sample r % G of prompt r // G (each prompt's G samples in consecutive rows, the layout
`geojax.rl.group_advantages` expects). The model's forward runs once per prompt (prefill), then its KV cache is
tiled G times (`tile="cache"`) or the prompts are tiled before prefill (`tile="prompt"`).

One compile per static signature: batch and prompt shapes, image grid, max_new_tokens, sampling settings,
EOS/pad ids, num_samples, and the model's graph. jax.jit's cache keys on exactly those, so repeated calls with
the same shapes reuse the executable (see `compiled_signatures`). The KV cache is created inside the jitted
function and never crosses its boundary (nothing to donate): XLA updates it in place across the while loop,
which stops as soon as every row has hit EOS. Inside the loop a QwenVL decodes with `geojax.sampling.decode` (a
one-token step over a decode-layout cache); the model's walk by `nnx.split` is cached per model
(`geojax.sampling.split_cache`), so a call costs about 1 ms of Python on top of the compiled program.

On CPU, a model with a tied LM head decodes with a [D, V] copy of the embedding, made once per embedding array
and kept (for the latest one only) until a call with another; `release_cached_head()` frees it.
"""
from __future__ import annotations

import dataclasses
import functools
import weakref
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from geojax.data.mrope import rope_index
from geojax.models.sharding import shard
from geojax.models.vision import grid_tuple
from geojax.sampling import decode, split_cache
from geojax.sampling.logits import SamplingSettings, candidate_count, choose, draw_noise

CACHE_AXES = ("batch", "cache_length", "kv_heads", "head_dim")


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
class _Plan:
  """Everything static about one generate call (hashable: part of the jit cache key)."""
  max_new_tokens: int
  settings: SamplingSettings
  eos_ids: tuple[int, ...]
  pad_id: int
  num_samples: int
  tile: str
  grid: tuple[tuple[int, int, int], ...] | None
  noise_ahead: bool  # draw every step's sampling noise before the loop (see NOISE_AHEAD_MAX)


def _repeat_rows(x: jax.Array, times: int, axis: int = 0) -> jax.Array:
  return x if times == 1 else jnp.repeat(x, times, axis=axis)


def _tile_cache(cache: dict, times: int) -> dict:
  """Each row of a prefilled cache repeated `times` times (rows stay prompt-major)."""
  if times == 1:
    return cache
  rep = lambda x: shard(_repeat_rows(x, times), CACHE_AXES)
  return dict(cache, k=tuple(rep(k) for k in cache["k"]), v=tuple(rep(v) for v in cache["v"]),
              valid=_repeat_rows(cache["valid"], times), next_pos=_repeat_rows(cache["next_pos"], times))


def _tile_images(pixel_values: jax.Array, grid, times: int):
  """Each image's patches (and grid) repeated `times` times, for tiling prompts before prefill."""
  if times == 1 or pixel_values is None:
    return pixel_values, grid
  sizes = [t * h * w for t, h, w in grid]
  starts = np.cumsum([0] + sizes[:-1])
  parts = [pixel_values[s:s + n] for s, n in zip(starts, sizes) for _ in range(times)]
  return jnp.concatenate(parts, axis=0), tuple(g for g in grid for _ in range(times))


_transpose = jax.jit(jnp.transpose)
_HEAD_CACHE: dict[int, tuple[weakref.ref, jax.Array]] = {}


def _decode_head(model) -> jax.Array | None:
  """On CPU, the tied embedding transposed to [D, V], computed once per embedding array (kept for the latest one).

  XLA's CPU dot streams a [V, D] operand contracted on D about 1.6x slower than a [D, V] one, and the LM head is
  the largest matmul of a small model's decode step. None when the model has an untied head, or off CPU (TPU/GPU
  pick dot layouts themselves)."""
  text = getattr(model, "language_model", None)
  if jax.default_backend() != "cpu" or getattr(text, "lm_head", 1) is not None or not hasattr(text, "embed_tokens"):
    return None
  embedding = text.embed_tokens.embedding.get_value()
  hit = _HEAD_CACHE.get(id(embedding))
  if hit is not None and hit[0]() is embedding:
    return hit[1]
  _HEAD_CACHE.clear()
  head = _transpose(embedding)
  _HEAD_CACHE[id(embedding)] = (weakref.ref(embedding), head)
  return head


def release_cached_head() -> None:
  """Frees the CPU decode copy of a tied LM head (see the module docstring)."""
  _HEAD_CACHE.clear()


# Draw all steps' sampling noise before the loop when it is at most this many floats: on CPU, JAX's threefry is a
# rolled loop, and drawing per step cost two small while loops (fold_in, then the draw) inside every decode step.
NOISE_AHEAD_MAX = 1 << 22


def _noise_ahead(rng: jax.Array, rows: int, vocab_size: int, plan: _Plan) -> jax.Array | None:
  """[steps, rows, C] Gumbel noise, row t exactly what step t would draw from fold_in(rng, t); None unless
  plan.noise_ahead (then each step draws its own)."""
  if not plan.noise_ahead:
    return None
  width = candidate_count(vocab_size, plan.settings)
  keys = jax.vmap(lambda t: jax.random.fold_in(rng, t))(jnp.arange(plan.max_new_tokens))
  return jax.vmap(lambda key: draw_noise(key, (rows, width)))(keys)


def _sample_loop(model, input_ids, attention_mask, position_ids, pixel_values, rng, head,
                 plan: _Plan) -> GenerateResult:
  """Traced body: prefill, then decode until max_new_tokens or every row has emitted EOS."""
  batch, prompt_len = input_ids.shape
  steps, group = plan.max_new_tokens, plan.num_samples
  rows = batch * group
  grid = plan.grid
  input_ids = shard(input_ids, ("batch", "length"))
  attention_mask = shard(attention_mask, ("batch", "length"))
  if plan.tile == "prompt":
    input_ids, attention_mask = _repeat_rows(input_ids, group), _repeat_rows(attention_mask, group)
    position_ids = _repeat_rows(position_ids, group, axis=1)
    pixel_values, grid = _tile_images(pixel_values, grid, group)
  prefill_rows, cache_len = input_ids.shape[0], prompt_len + max(steps - 1, 1)
  fast = decode.supports(model)
  # The fast decode path prefills a prompt-length cache (attention over P keys, not P + N) and then lays it out
  # for decoding with room for the new tokens.
  cache = model.init_cache(prefill_rows, prompt_len if fast else cache_len)
  cache = dict(cache, k=tuple(shard(k, CACHE_AXES) for k in cache["k"]),
               v=tuple(shard(v, CACHE_AXES) for v in cache["v"]))
  logits, cache = model.prefill(input_ids, attention_mask, position_ids, pixel_values, grid, cache)
  if plan.tile == "cache":
    cache, logits = _tile_cache(cache, group), _repeat_rows(logits, group)
  if fast:
    cache = decode.to_decode_cache(cache, cache_len)
    decode_step = lambda token, cache: decode.step(model, token, cache, head)
  else:
    decode_step = lambda token, cache: model.decode_step(token, None, cache)

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

  def step(carry):
    t, token, done, cache, out = carry
    logits, cache = decode_step(token, cache)
    pick = choose(logits, jax.random.fold_in(rng, t), plan.settings, step_noise(t))
    done, out = record(t, pick, done, out)
    return t + 1, pick.token, done, cache, out

  carry = (jnp.int32(1), first.token, done, cache, out)
  *_, out = jax.lax.while_loop(keep_going, step, carry)
  return GenerateResult(*out)


@functools.partial(jax.jit, static_argnames=("static", "plan"))
def _generate_jit(static: split_cache.StaticModel, params, input_ids, attention_mask, position_ids, pixel_values,
                  rng, head, *, plan: _Plan):
  model = static.merge(params)
  return _sample_loop(model, input_ids, attention_mask, position_ids, pixel_values, rng, head, plan)


def compiled_signatures() -> int:
  """How many distinct static signatures have been compiled so far (for tests of the compile cache)."""
  return _generate_jit._cache_size()


def _model_mesh(params) -> jax.sharding.Mesh | None:
  """The mesh the parameters live on, if they are sharded with NamedShardings over more than one device."""
  for leaf in params:
    sharding = getattr(leaf, "sharding", None)
    if isinstance(sharding, jax.sharding.NamedSharding) and sharding.mesh.size > 1:
      return sharding.mesh
  return None


@functools.cache
def _greedy_key() -> jax.Array:
  """Placeholder key for greedy calls (never drawn from), made once rather than dispatched per call."""
  return jax.random.key(0)


def _eos_tuple(eos_token_id) -> tuple[int, ...]:
  if eos_token_id is None:
    return ()
  if isinstance(eos_token_id, (int, np.integer)):
    return (int(eos_token_id),)
  return tuple(int(e) for e in eos_token_id)


def generate(
    model,
    input_ids,
    attention_mask=None,
    pixel_values=None,
    image_grid_thw=None,
    *,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    rng: jax.Array | None = None,
    eos_token_id: int | Sequence[int] | None = None,
    pad_token_id: int | None = None,
    num_samples: int = 1,
    position_ids=None,
    tile: str = "cache",
) -> GenerateResult:
  """Samples `num_samples` completions of `max_new_tokens` tokens for each LEFT-padded prompt.

  Args:
    model: a geojax.models.QwenVL (any module with init_cache / prefill / decode_step and a `config`).
    input_ids: int [B, L] prompts, left-padded (host or device array).
    attention_mask: [B, L], 1 on real tokens; default all ones.
    pixel_values: float [n_patches, 1176] of all images in prompt order, or None.
    image_grid_thw: int [n_images, 3] (host value: it fixes shapes), or None.
    max_new_tokens: N, the number of decode steps (static).
    temperature: 0 is greedy (argmax of the raw logits); otherwise logits are divided by it before top-k/top-p.
    top_k: keep the k most likely tokens (None or 0: off).
    top_p: then keep the smallest set whose probability reaches top_p (None or 1.0: off). Order as transformers:
      temperature, top-k, top-p, draw.
    rng: a jax PRNG key; required unless greedy. Step t of every row uses fold_in(rng, t).
    eos_token_id: an id or several; a row stops at the first one (which is kept in its tokens).
    pad_token_id: written after EOS; default the first EOS id (0 without one).
    num_samples: G completions per prompt (rows prompt-major).
    position_ids: int [3, B, L] M-RoPE positions; computed with geojax.data.rope_index when omitted.
    tile: "cache" (prefill B rows, then repeat the cache G times) or "prompt" (prefill B*G rows).

  Returns:
    GenerateResult(tokens [B*G, N] int32, logprobs [B*G, N] float32 = UNscaled policy log-probs of the sampled
    tokens (what GRPO needs as old log-probs), sampling_logprobs [B*G, N] float32 = log-probs under the scaled,
    filtered distribution actually sampled (0 when greedy), lengths [B*G] int32). After EOS: pad tokens and
    log-probs 0.
  """
  if max_new_tokens < 1:
    raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
  if num_samples < 1:
    raise ValueError(f"num_samples must be >= 1, got {num_samples}")
  if tile not in ("cache", "prompt"):
    raise ValueError(f"tile must be 'cache' or 'prompt', got {tile!r}")
  config = model.config
  settings = SamplingSettings(temperature, top_k, top_p).check(config.text.vocab_size)
  if rng is None:
    if not settings.greedy:
      raise ValueError("sampling (temperature > 0) needs rng=jax.random.key(...)")
    rng = _greedy_key()
  eos_ids = _eos_tuple(eos_token_id)
  if pad_token_id is None:
    pad_token_id = eos_ids[0] if eos_ids else 0

  input_ids = np.asarray(input_ids).astype(np.int32)
  if input_ids.ndim != 2:
    raise ValueError(f"input_ids must be [B, L], got shape {input_ids.shape}")
  attention_mask = (np.ones_like(input_ids) if attention_mask is None else np.asarray(attention_mask)).astype(np.int32)
  if attention_mask.shape != input_ids.shape:
    raise ValueError(f"attention_mask shape {attention_mask.shape} != input_ids shape {input_ids.shape}")
  if attention_mask.shape[1] and not attention_mask[:, -1].all():
    raise ValueError("prompts must be LEFT-padded (attention_mask[:, -1] must be 1 on every row)")
  grid = None if image_grid_thw is None else grid_tuple(image_grid_thw)
  if pixel_values is not None and grid is None:
    raise ValueError("pixel_values given without image_grid_thw")
  if position_ids is None:
    position_ids, _ = rope_index(input_ids, attention_mask, None if grid is None else np.asarray(grid),
                                 spatial_merge_size=config.vision.spatial_merge_size,
                                 image_token_id=config.image_token_id)
  position_ids = np.asarray(position_ids).astype(np.int32)
  if pixel_values is not None:
    pixel_values = jnp.asarray(pixel_values)

  rows = input_ids.shape[0] * num_samples
  noise_ahead = (not settings.greedy and
                 max_new_tokens * rows * candidate_count(config.text.vocab_size, settings) <= NOISE_AHEAD_MAX)
  plan = _Plan(int(max_new_tokens), settings, eos_ids, int(pad_token_id), int(num_samples),
               "cache" if num_samples == 1 else tile,
               None if pixel_values is None else grid, noise_ahead)
  head = _decode_head(model)
  static, params = split_cache.split(model)
  mesh = _model_mesh(params)
  call = functools.partial(_generate_jit, static, params, input_ids, attention_mask, position_ids, pixel_values,
                           rng, head, plan=plan)
  if mesh is None:
    return call()
  with jax.set_mesh(mesh):
    return call()
