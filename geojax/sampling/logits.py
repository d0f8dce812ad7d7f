"""Next-token choice from logits: temperature, then top-k, then top-p, then a draw (transformers' order).

All functions are pure and jit-able; the sampling settings are Python values (static under jit), so a change of
settings is a new compile, not a traced branch.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from geojax.models.sharding import logical_to_spec


class SamplingSettings(NamedTuple):
  """How the next token is chosen. `temperature == 0` means greedy (argmax of the raw logits)."""
  temperature: float = 1.0
  top_k: int | None = None
  top_p: float | None = None

  @property
  def greedy(self) -> bool:
    return self.temperature == 0.0

  def check(self, vocab_size: int) -> "SamplingSettings":
    """Validates and normalizes (top_k 0/None/>=vocab means off, top_p >= 1 or None means off)."""
    if self.temperature < 0:
      raise ValueError(f"temperature must be >= 0, got {self.temperature}")
    top_k = self.top_k
    if top_k is not None and top_k < 0:
      raise ValueError(f"top_k must be >= 0 (0 or None turns it off), got {top_k}")
    if top_k is not None and (top_k == 0 or top_k >= vocab_size):
      top_k = None
    top_p = self.top_p
    if top_p is not None and not 0.0 < top_p <= 1.0:
      raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if top_p is not None and top_p >= 1.0:
      top_p = None
    return SamplingSettings(float(self.temperature), None if top_k is None else int(top_k),
                            None if top_p is None else float(top_p))


class Choice(NamedTuple):
  """A chosen token per row and its log-probabilities."""
  token: jax.Array            # int32 [B]
  logprob: jax.Array          # float32 [B]: log softmax of the raw (unscaled, unfiltered) logits: the policy's.
  sampling_logprob: jax.Array  # float32 [B]: under the distribution actually sampled (scaled and filtered);
  #                              0 for greedy, where that distribution is a point mass.


ARGMAX_BLOCK = 128


def first_argmax(x: jax.Array) -> jax.Array:
  """int32 index of the first maximum along the last axis of x [R, V] (jnp.argmax semantics), blocked.

  jnp.argmax is a variadic (value, index) reduce that XLA:CPU runs ~10x slower than a plain max. Here a plain
  max per block of 128, a jnp.argmax over the block maxima, then one over the chosen block. No step compares
  values from two evaluations of x, so the result stays valid when XLA recomputes an elementwise x separately for
  each consumer and the copies differ in the last bit.
  """
  rows, vocab = x.shape
  pad = (-vocab) % ARGMAX_BLOCK
  if pad:
    x = jnp.pad(x, ((0, 0), (0, pad)), constant_values=-jnp.inf)
  blocks = x.reshape(rows, -1, ARGMAX_BLOCK)
  best_block = jnp.argmax(jnp.max(blocks, axis=-1), axis=-1)
  chosen = jnp.take_along_axis(blocks, best_block[:, None, None], axis=1)[:, 0]
  return (best_block * ARGMAX_BLOCK + jnp.argmax(chosen, axis=-1)).astype(jnp.int32)


# --------------------------------------------------------------- over logits split on the vocabulary
def _vocab_split(x: jax.Array):
  """(mesh, row spec, shard width) when x [R, V] is split over the current mesh's tensor axis (as a decode layout's
  LM head leaves its logits), else None."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or mesh.shape.get("tensor", 1) == 1 or x.shape[-1] % mesh.shape["tensor"]:
    return None
  rows = logical_to_spec(("batch",), None, x.shape[:1], dict(mesh.shape))[0]
  return mesh, rows, x.shape[-1] // mesh.shape["tensor"]


def _over_vocab(local, split, *args, row_args: int = 0):
  """`local` per vocabulary shard (args [R, V] split on V, then `row_args` [R] arrays), each returning row arrays
  equal on every shard."""
  mesh, rows, _ = split
  in_specs = (P(rows, "tensor"),) * (len(args) - row_args) + (P(rows),) * row_args
  return jax.shard_map(local, mesh=mesh, in_specs=in_specs, out_specs=P(rows), check_vma=False)(*args)


def top_k(x: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
  """jax.lax.top_k over the last axis of x [R, V]; on vocabulary-split logits, each shard's top k, then the top k
  of those (the same values and ids, ties to the lower id: shards are in id order), never gathering x."""
  split = _vocab_split(x)
  if split is None or k > split[2]:
    return jax.lax.top_k(x, k)

  def local(x):
    values, ids = jax.lax.top_k(x, k)
    ids = ids + jax.lax.axis_index("tensor") * split[2]
    values, ids = (jax.lax.all_gather(a, "tensor", axis=1, tiled=True) for a in (values, ids))
    values, slot = jax.lax.top_k(values, k)
    return values, jnp.take_along_axis(ids, slot, axis=1)

  return _over_vocab(local, split, x)


def argmax(x: jax.Array) -> jax.Array:
  """`first_argmax`; on vocabulary-split logits, each shard's first maximum, then the first of those."""
  split = _vocab_split(x)
  if split is None:
    return first_argmax(x)

  def local(x):
    slot = first_argmax(x)[:, None]
    best = jnp.take_along_axis(x, slot, axis=1)
    ids = slot + jax.lax.axis_index("tensor") * split[2]
    best, ids = (jax.lax.all_gather(a, "tensor", axis=1, tiled=True) for a in (best, ids))  # [R, shards]
    return jnp.take_along_axis(ids, first_argmax(best)[:, None], axis=1)[:, 0]

  return _over_vocab(local, split, x)


def take(x: jax.Array, ids: jax.Array) -> jax.Array:
  """x[r, ids[r]] for x [R, V]; on vocabulary-split logits, read on the shard that holds each id."""
  split = _vocab_split(x)
  if split is None:
    return jnp.take_along_axis(x, ids[:, None], axis=-1)[:, 0]

  def local(x, ids):
    at = ids - jax.lax.axis_index("tensor") * split[2]
    inside = (at >= 0) & (at < split[2])
    value = jnp.take_along_axis(x, jnp.clip(at, 0, split[2] - 1)[:, None], axis=1)[:, 0]
    return jax.lax.psum(jnp.where(inside, value, jnp.zeros_like(value)), "tensor")

  return _over_vocab(local, split, x, ids, row_args=1)


def _top_p_keep(sorted_logits: jax.Array, top_p: float) -> jax.Array:
  """Keep mask over logits sorted in descending order: a token stays while the mass strictly above it < top_p.

  Same rule as transformers' TopPLogitsWarper (which removes ascending-cumulative mass <= 1 - top_p); the most
  likely token is always kept.
  """
  probs = jax.nn.softmax(sorted_logits, axis=-1)
  mass_above = jnp.cumsum(probs, axis=-1) - probs
  keep = mass_above < top_p
  return keep.at[..., 0].set(True)


def _top_p_keep_unsorted(logits: jax.Array, top_p: float) -> jax.Array:
  """The same keep mask as `_top_p_keep`, over the whole unsorted vocabulary, without sorting it.

  Token i stays iff the mass of tokens strictly more likely than it is < top_p; that set is {p_i >= x*} for the
  smallest probability x* with mass-above(x*) < top_p. Non-negative float32s order like their int32 bit patterns,
  so an integer bisection over the bits finds x* exactly in 32 masked sums (a full sort of a 152k vocabulary on
  XLA:CPU costs about 30x more per decode step).
  """
  probs = jax.nn.softmax(logits, axis=-1)
  bits = jax.lax.bitcast_convert_type(probs, jnp.int32)
  lo = jnp.full(probs.shape[:-1] + (1,), -1, jnp.int32)  # mass above lo >= top_p (everything is above -1)
  hi = jnp.max(bits, axis=-1, keepdims=True)              # mass above the top token = 0 < top_p

  def halve(_, bounds):
    lo, hi = bounds
    mid = lo + (hi - lo) // 2
    small_enough = jnp.sum(jnp.where(bits > mid, probs, 0.0), axis=-1, keepdims=True) < top_p
    return jnp.where(small_enough, lo, mid), jnp.where(small_enough, mid, hi)

  _, hi = jax.lax.fori_loop(0, 32, halve, (lo, hi))
  return bits >= hi


def filtered_candidates(logits: jax.Array, settings: SamplingSettings) -> tuple[jax.Array, jax.Array | None]:
  """Scaled and filtered logits to sample from.

  Returns (candidate_logits [B, C], candidate_ids [B, C] or None). With no top-k/top-p the candidates are the whole
  vocabulary in order (ids None), with -inf where top-p alone filters. With top-k they are the top_k scaled logits
  in descending order, with -inf where top-p filters, and their vocabulary ids. Ties at the k-th value are
  broken by index (transformers keeps all tied tokens; with float logits ties are measure-zero).
  """
  scaled = logits.astype(jnp.float32)
  if settings.temperature != 1.0:
    scaled = scaled / settings.temperature
  if settings.top_k is None and settings.top_p is None:
    return scaled, None
  if settings.top_k is None:
    return jnp.where(_top_p_keep_unsorted(scaled, settings.top_p), scaled, -jnp.inf), None
  k = settings.top_k if settings.top_k is not None else scaled.shape[-1]
  values, ids = top_k(scaled, k)
  if settings.top_p is not None:
    values = jnp.where(_top_p_keep(values, settings.top_p), values, -jnp.inf)
  return values, ids


# Vocabulary blocks of the draw: `inverse_cdf` picks a block from the [R, C / DRAW_BLOCK] block masses, then a token
# among the block's DRAW_BLOCK. 16 divides the vocabulary shards of Qwen's 151,936 and 152,064 over up to 8 devices.
DRAW_BLOCK = 16
NOISE_WIDTH = 2  # uniforms per row and step: one picks the block, one the token in it


def draw_noise(key: jax.Array, rows: int) -> jax.Array:
  """The uniforms [rows, NOISE_WIDTH] `choose` inverts the distribution at, for a key (exposed so a caller can draw
  every step's ahead)."""
  return jax.random.uniform(key, (rows, NOISE_WIDTH), jnp.float32)


def _first_above(cum: jax.Array, target: jax.Array, mass: jax.Array) -> jax.Array:
  """int32 [R]: the first index of cum [R, n] above target [R] among entries with mass [R, n] > 0; n where none
  is. Entries without mass are never chosen, even where XLA's cumulative sum is not monotone in the last bit."""
  index = jax.lax.broadcasted_iota(jnp.int32, cum.shape, 1)
  return jnp.min(jnp.where((mass > 0) & (cum > target[:, None]), index, cum.shape[1]), axis=1)


def _last_with_mass(mass: jax.Array) -> jax.Array:
  """int32 [R]: the last index of mass [R, n] above 0 (u * total can round up to total); -1 where none is."""
  return jnp.max(jnp.where(mass > 0, jax.lax.broadcasted_iota(jnp.int32, mass.shape, 1), -1), axis=1)


def _draw(x: jax.Array, uniforms: jax.Array, tensor: bool = False) -> tuple[jax.Array, jax.Array]:
  """`inverse_cdf` on candidates x [R, W]: the whole row, or (tensor) this device's shard of rows split on the
  "tensor" axis, where only row scalars travel: the max, each shard's total mass, the chosen slot."""
  rows, width = x.shape
  pad = (-width) % DRAW_BLOCK  # only for whole rows: a split row's shards hold whole blocks
  if pad:
    x = jnp.pad(x, ((0, 0), (0, pad)), constant_values=-jnp.inf)
  top = jnp.max(x, axis=-1)
  if tensor:
    top = jax.lax.pmax(top, "tensor")
  weights = jnp.exp(x - top[:, None]).reshape(rows, -1, DRAW_BLOCK)
  block_mass = jnp.sum(weights, axis=-1)
  block_cum = jnp.cumsum(block_mass, axis=-1)
  total = block_cum[:, -1]
  before = jnp.zeros_like(total)  # the mass of the shards before this one
  if tensor:
    totals = jax.lax.all_gather(total, "tensor", axis=1)
    before = jnp.take(jnp.cumsum(totals, axis=1) - totals, jax.lax.axis_index("tensor"), axis=1)
    total = jnp.sum(totals, axis=1)
  block = _first_above(block_cum, uniforms[:, 0] * total - before, block_mass)
  claimed, last = block < block_mass.shape[1], _last_with_mass(block_mass)
  block = jnp.where(claimed, block, jnp.maximum(last, 0))
  mass = jnp.take_along_axis(weights, block[:, None, None], axis=1)[:, 0]
  within = _first_above(jnp.cumsum(mass, axis=-1), uniforms[:, 1] * jnp.sum(mass, axis=-1), mass)
  within = jnp.where(within < DRAW_BLOCK, within, _last_with_mass(mass))
  slot = block * DRAW_BLOCK + within
  if not tensor:
    return slot, top + jnp.log(total)
  slot = slot + jax.lax.axis_index("tensor") * width
  # every shard past the chosen one claims too (its mass starts above the target): the first claim is the draw
  first = jax.lax.pmin(jnp.where(claimed, slot, jnp.iinfo(jnp.int32).max), "tensor")
  fallback = jax.lax.pmax(jnp.where(last >= 0, slot, -1), "tensor")
  return jnp.where(first < jnp.iinfo(jnp.int32).max, first, fallback), top + jnp.log(total)


def inverse_cdf(candidates: jax.Array, uniforms: jax.Array) -> tuple[jax.Array, jax.Array]:
  """A draw from softmax(candidates [R, C]) by inverting its distribution: (slot [R], logsumexp(candidates) [R]).

  uniforms [R, 2] in [0, 1): the first picks a block of DRAW_BLOCK candidates by the block masses, the second a
  candidate within it by theirs. Two uniforms per row replace a Gumbel-max draw's C noise values (on CPU at a 152k
  vocabulary, 3.8 ms of a 17 ms decode step: BENCHMARKS.md). Candidates at -inf are never drawn. On
  vocabulary-split candidates whose shards hold whole blocks, each shard draws within its own blocks and only row
  scalars travel; the draw is the whole row's but where u lands within rounding of a block boundary. Other splits
  draw as whole rows (XLA gathers them).
  """
  split = _vocab_split(candidates)
  if split is None or split[2] % DRAW_BLOCK:
    return _draw(candidates, uniforms)
  return _over_vocab(lambda x, u: _draw(x, u, tensor=True), split, candidates, uniforms, row_args=1)


def choose(logits: jax.Array, key: jax.Array | None, settings: SamplingSettings,
           noise: jax.Array | None = None) -> Choice:
  """Picks the next token for each row of logits [B, V] (greedy when settings.temperature == 0).

  `noise`, if given, is `draw_noise(key, B)` computed ahead (then key is unused).
  """
  logits = logits.astype(jnp.float32)
  policy_logprob = lambda token: take(logits, token) - jax.nn.logsumexp(logits, axis=-1)
  if settings.greedy:
    token = argmax(logits)
    logprob = policy_logprob(token)
    return Choice(token, logprob, jnp.zeros_like(logprob))
  candidates, ids = filtered_candidates(logits, settings)
  if noise is None:
    noise = draw_noise(key, logits.shape[0])
  slot, logsumexp = inverse_cdf(candidates, noise)
  sampling_logprob = take(candidates, slot) - logsumexp
  if settings == SamplingSettings(1.0, None, None):  # the policy's own distribution: one logsumexp serves both
    return Choice(slot, sampling_logprob, sampling_logprob)
  token = slot if ids is None else jnp.take_along_axis(ids, slot[:, None], axis=-1)[:, 0].astype(jnp.int32)
  return Choice(token, policy_logprob(token), sampling_logprob)


def filtered_probs(logits: jax.Array, settings: SamplingSettings) -> jax.Array:
  """The full-vocabulary distribution `choose` samples from, [B, V] (one-hot argmax when greedy). For tests."""
  logits = logits.astype(jnp.float32)
  if settings.greedy:
    return jax.nn.one_hot(first_argmax(logits), logits.shape[-1], dtype=jnp.float32)
  candidates, ids = filtered_candidates(logits, settings)
  probs = jax.nn.softmax(candidates, axis=-1)
  if ids is None:
    return probs
  rows = jnp.arange(logits.shape[0])[:, None]
  return jnp.zeros_like(logits).at[rows, ids].set(probs)
