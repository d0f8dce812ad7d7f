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
from geojax.sampling.noise import gumbel


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
  values from two evaluations of x, so the result stays valid when XLA recomputes an elementwise x (such as
  logits + Gumbel noise) separately for each consumer and the copies differ in the last bit.
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


def candidate_count(vocab_size: int, settings: SamplingSettings) -> int:
  """Width of the candidate set `choose` draws from: top_k, or the whole vocabulary."""
  return settings.top_k if settings.top_k is not None else vocab_size


def draw_noise(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  """The Gumbel noise `choose` adds to candidates [B, C] for a key (exposed so a caller can draw it ahead)."""
  return gumbel(key, shape)


def choose(logits: jax.Array, key: jax.Array | None, settings: SamplingSettings,
           noise: jax.Array | None = None) -> Choice:
  """Picks the next token for each row of logits [B, V] (greedy when settings.temperature == 0).

  `noise`, if given, is `draw_noise(key, (B, candidate_count(V, settings)))` computed ahead (then key is unused).
  """
  logits = logits.astype(jnp.float32)
  policy_logprobs = jax.nn.log_softmax(logits, axis=-1)
  if settings.greedy:
    token = argmax(logits)
    logprob = take(policy_logprobs, token)
    return Choice(token, logprob, jnp.zeros_like(logprob))
  candidates, ids = filtered_candidates(logits, settings)
  # Gumbel-max draw (what jax.random.categorical does), with the blocked argmax.
  if noise is None:
    noise = draw_noise(key, candidates.shape)
  slot = argmax(candidates + noise)
  sampling_logprob = take(jax.nn.log_softmax(candidates, axis=-1), slot)
  token = slot if ids is None else jnp.take_along_axis(ids, slot[:, None], axis=-1)[:, 0].astype(jnp.int32)
  logprob = take(policy_logprobs, token)
  return Choice(token, logprob, sampling_logprob)


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
