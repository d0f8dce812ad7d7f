"""Softmax attention behind one function, `attention(q, k, v, mask)`, with backends by platform or config.

Backends (`QwenVLConfig.attention`, the config key `model.attention`):
  xla        the dense reference: the whole float32 score matrix [B, H, Lq, Lk] at once (fine when small).
  blockwise  online softmax over query blocks x key blocks in plain XLA, forward and backward (a custom VJP that
             recomputes scores block by block), so neither holds more than a block of scores: memory grows
             linearly with the sequence. Causal blocks above the diagonal are skipped. Runs everywhere.
  cudnn      `jax.nn.dot_product_attention(implementation="cudnn")` (GPU, bfloat16 / float16); other shapes and
             masks run blockwise.
  splash     the Pallas splash attention kernel (TPU); a mask offset known only at run time (the KV cache's
             index) runs blockwise.
  auto       splash on TPU, cudnn on GPU, blockwise elsewhere.

The platform is the current mesh's (`jax.set_mesh`, so a program compiled for TPU devices from a CPU host picks
splash), else JAX's default backend. Masks are never dense: a `Mask` says which keys a query sees through segment
ids (equal ids attend) and a causal flag with an offset, so padding is segment 0 (`Mask.padding`).
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from geojax.models.config import ATTENTION_BACKENDS as BACKENDS
from geojax.models.layers import masked_attention
from geojax.models.platform import current_platform

NEEDS = {"cudnn": "gpu", "splash": "tpu"}  # backends that run on one platform only
MASK_VALUE = -0.7 * float(np.finfo(np.float32).max)  # finite (as splash's): exp(MASK_VALUE - MASK_VALUE) is 1, not NaN
BLOCK_Q, BLOCK_K = 512, 512  # blockwise defaults (scripts/bench_attention.py)


@jax.tree_util.register_pytree_node_class
@dataclasses.dataclass(frozen=True)
class Mask:
  """Query i may attend key j when their segment ids are equal and, if causal, j <= i + offset (the position of
  query 0 among the keys: a prefix length, or the KV cache's write index).

  q_segment_ids int [B, Lq] (None: one segment); kv_segment_ids int [B, Lk] (None: the query's, for self-attention
  with Lq == Lk). Ids are >= 0. `padding` marks ids that only tell tokens (1) from padding (0), which the cudnn
  backend needs. `offset` is an int, or an int32 scalar known at run time. `backend` is one of BACKENDS. A query
  that sees no key outputs 0 and passes no gradient back (xla, blockwise, splash).
  """
  q_segment_ids: jax.Array | None = None
  kv_segment_ids: jax.Array | None = None
  causal: bool = False
  offset: int | jax.Array = 0
  padding: bool = False
  backend: str = "auto"

  @classmethod
  def from_valid(cls, q_valid, kv_valid=None, *, causal: bool, offset=0, backend: str = "auto") -> "Mask":
    """Padding as segment ids: real tokens (valid) are segment 1, padding segment 0, so a real query sees only
    real keys (and a padding query padding keys, which keeps every row of a causal mask non-empty)."""
    ids = lambda valid: None if valid is None else jnp.asarray(valid).astype(jnp.int32)
    return cls(ids(q_valid), ids(kv_valid), causal, offset, True, backend)

  def segments(self, batch: int, lq: int, lk: int) -> tuple[jax.Array, jax.Array]:
    """(q ids [B, Lq], kv ids [B, Lk]), zeros where not given."""
    if self.kv_segment_ids is None and self.q_segment_ids is not None and lq != lk:
      raise ValueError(f"kv_segment_ids are needed: {lq} queries attend {lk} keys")
    q = self.q_segment_ids if self.q_segment_ids is not None else jnp.zeros((batch, lq), jnp.int32)
    kv = self.kv_segment_ids
    if kv is None:
      kv = q if lq == lk else jnp.zeros((batch, lk), jnp.int32)
    return q.astype(jnp.int32), kv.astype(jnp.int32)

  def dense(self, batch: int, lq: int, lk: int) -> jax.Array:
    """The bool mask [B, Lq, Lk] (for the xla backend and tests)."""
    q, kv = self.segments(batch, lq, lk)
    allowed = q[:, :, None] == kv[:, None, :]
    if self.causal:
      allowed &= jnp.arange(lk)[None, :] <= jnp.arange(lq)[:, None] + self.offset
    return allowed

  def sees_a_key(self, batch: int, lq: int, lk: int) -> jax.Array:
    """bool [B, Lq]: whether query i sees any key, without the dense mask: the first key of its segment (a stable
    sort of each row's kv ids), and if causal, whether that key is at or before i + offset."""
    q, kv = self.segments(batch, lq, lk)
    order = jnp.argsort(kv, axis=1, stable=True)
    ids = jnp.take_along_axis(kv, order, axis=1)
    pos = jnp.minimum(jax.vmap(jnp.searchsorted)(ids, q), lk - 1)
    seen = jnp.take_along_axis(ids, pos, axis=1) == q
    if self.causal:
      seen &= jnp.take_along_axis(order, pos, axis=1) <= jnp.arange(lq) + self.offset
    return seen

  def tree_flatten(self):
    static_offset = isinstance(self.offset, (int, np.integer))
    children = (self.q_segment_ids, self.kv_segment_ids, None if static_offset else self.offset)
    return children, (self.causal, int(self.offset) if static_offset else None, self.padding, self.backend)

  @classmethod
  def tree_unflatten(cls, aux, children):
    causal, static_offset, padding, backend = aux
    q, kv, offset = children
    return cls(q, kv, causal, static_offset if offset is None else offset, padding, backend)


def check_backend(backend: str, platform: str | None = None) -> str:
  """The backend `backend` ("auto" resolved) runs on `platform`; a ValueError naming model.attention if it cannot."""
  platform = platform or current_platform()
  if backend not in BACKENDS:
    raise ValueError(f"'model.attention' is {backend!r}; expected one of {BACKENDS}")
  if backend == "auto":
    return {"tpu": "splash", "gpu": "cudnn"}.get(platform, "blockwise")
  if backend in NEEDS and NEEDS[backend] != platform:
    raise ValueError(f"'model.attention' is {backend!r}, which runs only on {NEEDS[backend]}, but this program runs "
                     f"on {platform}; use auto, blockwise or xla")
  return backend


def attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: Mask) -> jax.Array:
  """Softmax(q k^T / sqrt(D)) v with grouped KV heads: q [B, Lq, H, D], k/v [B, Lk, KV, D] (H a multiple of KV,
  head h reads KV head h // (H / KV)); scores in float32; returns [B, Lq, H, D] in q's dtype."""
  backend = check_backend(mask.backend)
  if backend == "splash" and isinstance(mask.offset, (int, np.integer)):
    return splash_attention(q, k, v, mask)
  if backend == "cudnn" and cudnn_supports(q, k, mask):
    return cudnn_attention(q, k, v, mask)
  if backend == "xla":
    return dense_attention(q, k, v, mask)
  return blockwise_attention(q, k, v, mask)


def dense_attention(q, k, v, mask: Mask) -> jax.Array:
  """The reference: `layers.masked_attention` with the mask made dense; a query that sees no key outputs 0 (as
  blockwise), not the mean of all values."""
  allowed = mask.dense(q.shape[0], q.shape[1], k.shape[1])
  out = masked_attention(q, k.astype(q.dtype), v.astype(q.dtype), allowed)
  return jnp.where(allowed.any(-1)[:, :, None, None], out, 0).astype(out.dtype)


# ---------------------------------------------------------------- blockwise (XLA)
def blockwise_attention(q, k, v, mask: Mask, *, block_q: int | None = None, block_k: int | None = None) -> jax.Array:
  """Online-softmax attention over blocks of block_q queries x block_k keys (default BLOCK_Q x BLOCK_K; see the
  module docstring)."""
  batch, lq, heads, dim = q.shape
  lk, kv_heads = k.shape[1], k.shape[2]
  bq, bk = min(block_q or BLOCK_Q, lq), min(block_k or BLOCK_K, lk)
  nq, nk = -(-lq // bq), -(-lk // bk)
  q_ids, kv_ids = mask.segments(batch, lq, lk)
  # padded queries and keys get ids that match nothing real
  q_ids = jnp.pad(q_ids, ((0, 0), (0, nq * bq - lq)), constant_values=-1)
  kv_ids = jnp.pad(kv_ids, ((0, 0), (0, nk * bk - lk)), constant_values=-2)
  qg = q.reshape(batch, lq, kv_heads, heads // kv_heads, dim)
  qg = jnp.pad(qg, ((0, 0), (0, nq * bq - lq), (0, 0), (0, 0), (0, 0)))
  pad_k = ((0, 0), (0, nk * bk - lk), (0, 0), (0, 0))
  k, v = jnp.pad(k.astype(q.dtype), pad_k), jnp.pad(v.astype(q.dtype), pad_k)
  offset = jnp.asarray(mask.offset, jnp.int32)
  out = _blockwise(qg, k, v, q_ids, kv_ids, offset, mask.causal, bq, bk)
  return out[:, :lq].reshape(batch, lq, heads, dim)


def _block_scores(qb, kb, q_ids, kv_ids, q_start, k_start, offset, causal):
  """Masked float32 scores [B, KV, G, bq, bk] of a query block qb [B, bq, KV, G, D] and key block kb [B, bk, KV, D]."""
  scale = qb.shape[-1] ** -0.5
  s = jnp.einsum("bqkgd,bskd->bkgqs", qb, kb, preferred_element_type=jnp.float32) * scale
  allowed = q_ids[:, :, None] == kv_ids[:, None, :]
  if causal:
    q_pos = q_start + offset + jnp.arange(qb.shape[1])
    allowed &= (k_start + jnp.arange(kb.shape[1]))[None, :] <= q_pos[:, None]
  return jnp.where(allowed[:, None, None], s, MASK_VALUE)


def _slice(x, start, size, axis=1):
  return jax.lax.dynamic_slice_in_dim(x, start, size, axis)


def _key_blocks_seen(i, bq, bk, nk, offset, causal):
  """How many key blocks (from the first) query block i sees: all, or up to its last row's diagonal."""
  if not causal:
    return nk
  return jnp.clip((i * bq + bq - 1 + offset) // bk + 1, 1, nk)


def _forward(q, k, v, q_ids, kv_ids, offset, causal, bq, bk):
  """(out [B, Lq, KV, G, D] in q's dtype, logsumexp [B, KV, G, Lq] float32)."""
  nq, nk = q.shape[1] // bq, k.shape[1] // bk

  def query_block(i):
    qb, qi = _slice(q, i * bq, bq), _slice(q_ids, i * bq, bq)

    def key_block(j, carry):
      m, total, acc = carry
      kb, vb, kj = _slice(k, j * bk, bk), _slice(v, j * bk, bk), _slice(kv_ids, j * bk, bk)
      s = _block_scores(qb, kb, qi, kj, i * bq, j * bk, offset, causal)
      m_new = jnp.maximum(m, s.max(-1))
      alpha, p = jnp.exp(m - m_new), jnp.exp(s - m_new[..., None])
      pv = jnp.einsum("bkgqs,bskd->bkgqd", p.astype(v.dtype), vb, preferred_element_type=jnp.float32)
      return m_new, alpha * total + p.sum(-1), alpha[..., None] * acc + pv

    stats = qb.shape[:1] + qb.shape[2:4] + (bq,)
    carry = (jnp.full(stats, MASK_VALUE, jnp.float32), jnp.zeros(stats, jnp.float32),
             jnp.zeros(stats + (qb.shape[-1],), jnp.float32))
    if nk == 1:
      m, total, acc = key_block(0, carry)
    else:
      m, total, acc = jax.lax.fori_loop(0, _key_blocks_seen(i, bq, bk, nk, offset, causal), key_block, carry)
    # a row that sees no key keeps m at MASK_VALUE: it outputs 0, and its logsumexp of +inf makes every
    # recomputed probability of the backward pass 0 (scores that are masked do not depend on q or k)
    seen = m > MASK_VALUE
    out = jnp.einsum("bkgqd->bqkgd", jnp.where(seen[..., None], acc / total[..., None], 0)).astype(q.dtype)
    return out, jnp.where(seen, m + jnp.log(total), jnp.inf)

  if nq == 1:
    return query_block(0)
  out, lse = jax.lax.map(query_block, jnp.arange(nq))  # [nq, B, bq, KV, G, D], [nq, B, KV, G, bq]
  out = jnp.moveaxis(out, 0, 1).reshape(q.shape)
  lse = jnp.moveaxis(lse, 0, -2).reshape(lse.shape[1:-1] + (nq * bq,))
  return out, lse


def _backward(q, k, v, q_ids, kv_ids, offset, out, lse, dout, causal, bq, bk):
  """(dq, dk, dv): scores recomputed per block; dq accumulates in float32 across the key-block loop."""
  nq, nk = q.shape[1] // bq, k.shape[1] // bk
  scale = q.shape[-1] ** -0.5
  delta = jnp.einsum("bqkgd,bqkgd->bkgq", dout.astype(jnp.float32), out.astype(jnp.float32))

  def key_block(dq, j):
    kb, vb, kj = _slice(k, j * bk, bk), _slice(v, j * bk, bk), _slice(kv_ids, j * bk, bk)

    def query_block(i, carry):
      dq, dk, dv = carry
      qb, qi, dob = _slice(q, i * bq, bq), _slice(q_ids, i * bq, bq), _slice(dout, i * bq, bq)
      s = _block_scores(qb, kb, qi, kj, i * bq, j * bk, offset, causal)
      p = jnp.exp(s - _slice(lse, i * bq, bq, axis=3)[..., None])
      dv = dv + jnp.einsum("bkgqs,bqkgd->bskd", p.astype(dob.dtype), dob, preferred_element_type=jnp.float32)
      dp = jnp.einsum("bqkgd,bskd->bkgqs", dob, vb, preferred_element_type=jnp.float32)
      ds = (p * (dp - _slice(delta, i * bq, bq, axis=3)[..., None]) * scale).astype(q.dtype)
      dk = dk + jnp.einsum("bkgqs,bqkgd->bskd", ds, qb, preferred_element_type=jnp.float32)
      dq_block = jnp.einsum("bkgqs,bskd->bqkgd", ds, kb, preferred_element_type=jnp.float32)
      dq = jax.lax.dynamic_update_slice_in_dim(dq, _slice(dq, i * bq, bq) + dq_block, i * bq, 1)
      return dq, dk, dv

    zeros = jnp.zeros(kb.shape, jnp.float32)
    carry = (dq, zeros, zeros)
    if nq == 1:
      dq, dk, dv = query_block(0, carry)
    else:
      first = jnp.clip((j * bk - offset) // bq, 0, nq - 1) if causal else 0  # earlier query blocks see no key here
      dq, dk, dv = jax.lax.fori_loop(first, nq, query_block, carry)
    return dq, (dk, dv)

  dq0 = jnp.zeros(q.shape, jnp.float32)
  if nk == 1:
    dq, (dk, dv) = key_block(dq0, 0)
  else:
    dq, (dk, dv) = jax.lax.scan(key_block, dq0, jnp.arange(nk))
    dk, dv = (jnp.moveaxis(t, 0, 1).reshape(k.shape) for t in (dk, dv))
  return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(6, 7, 8))
def _blockwise(q, k, v, q_ids, kv_ids, offset, causal, bq, bk):
  return _forward(q, k, v, q_ids, kv_ids, offset, causal, bq, bk)[0]


def _blockwise_fwd(q, k, v, q_ids, kv_ids, offset, causal, bq, bk):
  out, lse = _forward(q, k, v, q_ids, kv_ids, offset, causal, bq, bk)
  return out, (q, k, v, q_ids, kv_ids, offset, out, lse)


def _blockwise_bwd(causal, bq, bk, residuals, dout):
  q, k, v, q_ids, kv_ids, offset, out, lse = residuals
  dq, dk, dv = _backward(q, k, v, q_ids, kv_ids, offset, out, lse, dout.astype(q.dtype), causal, bq, bk)
  return dq, dk, dv, None, None, None


_blockwise.defvjp(_blockwise_fwd, _blockwise_bwd)


# ---------------------------------------------------------------- cuDNN (GPU)
def cudnn_supports(q, k, mask: Mask) -> bool:
  """What cuDNN's fused attention takes here: half-precision inputs, head_dim a multiple of 8 up to 128, and a
  mask that is padding only (no packed segments) and, if causal, self-attention with offset 0."""
  if q.dtype not in (jnp.bfloat16, jnp.float16) or q.shape[-1] % 8 or q.shape[-1] > 128:
    return False
  if mask.q_segment_ids is not None and not mask.padding:
    return False
  if mask.causal:
    static = isinstance(mask.offset, (int, np.integer))
    return static and mask.offset == 0 and q.shape[1] == k.shape[1] and mask.kv_segment_ids is None
  return True


def _pack_first(x, valid):
  """Rows' real tokens moved to the front in order (a stable sort on padding): (packed x, order, count)."""
  order = jnp.argsort(~valid, axis=1, stable=True)
  packed = jnp.take_along_axis(x, order[:, :, None, None], axis=1)
  return packed, order, valid.sum(1).astype(jnp.int32)


def cudnn_attention(q, k, v, mask: Mask) -> jax.Array:
  """cuDNN flash attention. Padding (anywhere in a row) becomes cuDNN's sequence lengths by packing each row's
  real tokens first: their order is kept, so causal attention among them is unchanged."""
  k, v = k.astype(q.dtype), v.astype(q.dtype)
  if mask.q_segment_ids is None:
    return jax.nn.dot_product_attention(q, k, v, is_causal=mask.causal, implementation="cudnn")
  q_valid = mask.q_segment_ids != 0
  kv_valid = q_valid if mask.kv_segment_ids is None else mask.kv_segment_ids != 0
  q, q_order, q_len = _pack_first(q, q_valid)
  k, kv_order, kv_len = _pack_first(k, kv_valid)
  v = jnp.take_along_axis(v, kv_order[:, :, None, None], axis=1)
  out = jax.nn.dot_product_attention(q, k, v, is_causal=mask.causal, query_seq_lengths=q_len,
                                     key_value_seq_lengths=kv_len, implementation="cudnn")
  out = jnp.where((jnp.arange(q.shape[1]) < q_len[:, None])[:, :, None, None], out, 0)  # rows past a length
  return jnp.take_along_axis(out, jnp.argsort(q_order, axis=1)[:, :, None, None], axis=1)


# ---------------------------------------------------------------- splash (TPU)
def _splash_kernel(heads: int, lq: int, lk: int, causal: bool, offset: int, bq: int, bk: int, interpret: bool):
  """A kernel for one trace: it holds its mask's block tables as arrays made while tracing, so a kernel cached
  across traces leaked one trace's values into the next (UnexpectedTracerError)."""
  from jax.experimental.pallas.ops.tpu import splash_attention as splash
  shape = (lq, lk)
  one = splash.CausalMask(shape, offset=offset) if causal else splash.FullMask(shape)
  sizes = splash.BlockSizes(block_q=bq, block_kv=bk, block_kv_compute=bk, block_q_dkv=bq, block_kv_dkv=bk,
                            block_kv_dkv_compute=bk, block_q_dq=bq, block_kv_dq=bk)
  return splash.make_splash_mha(splash.MultiHeadMask([one] * heads), block_sizes=sizes, head_shards=1,
                                q_seq_shards=1, interpret=interpret)


def _splash_block(length: int, block: int) -> int:
  """A block size for splash: a multiple of 128, at most `block`, covering short sequences in one block."""
  return min(block, 128 * -(-length // 128))


def splash_attention(q, k, v, mask: Mask, *, block: int = 512, interpret: bool = False) -> jax.Array:
  """The Pallas splash attention kernel, one call per row (vmap), padded to whole blocks; under a mesh, a shard_map
  over the batch (and the heads, when both head counts divide the tensor axis). interpret=True runs it on CPU."""
  from jax.experimental.pallas.ops.tpu import splash_attention as splash
  from geojax.models.sharding import logical_to_spec
  batch, lq, heads, dim = q.shape
  lk, kv_heads = k.shape[1], k.shape[2]
  bq, bk = _splash_block(lq, block), _splash_block(lk, block)
  lq_pad, lk_pad = -(-lq // bq) * bq, -(-lk // bk) * bk
  q_ids, kv_ids = mask.segments(batch, lq, lk)
  q_ids = jnp.pad(q_ids, ((0, 0), (0, lq_pad - lq)), constant_values=-1)
  kv_ids = jnp.pad(kv_ids, ((0, 0), (0, lk_pad - lk)), constant_values=-2)
  scaled = (q.astype(jnp.float32) * dim ** -0.5).astype(q.dtype)
  q_heads = jnp.pad(scaled, ((0, 0), (0, lq_pad - lq), (0, 0), (0, 0))).transpose(0, 2, 1, 3)  # [B, H, Lq, D]
  k, v = (jnp.pad(t.astype(q.dtype), ((0, 0), (0, lk_pad - lk), (0, 0), (0, 0))).transpose(0, 2, 1, 3) for t in (k, v))

  def run(qh, kh, vh, qi, ki):
    kernel = _splash_kernel(qh.shape[1], lq_pad, lk_pad, mask.causal, int(mask.offset), bq, bk, interpret)
    one = lambda a, b, c, d, e: kernel(a, b, c, segment_ids=splash.SegmentIds(q=d, kv=e))
    return jax.vmap(one)(qh, kh, vh, qi, ki)

  mesh = jax.sharding.get_abstract_mesh()
  if not mesh.empty:
    batch_axes = logical_to_spec(("batch",), shape=(batch,), mesh_shape=dict(mesh.shape))[0]
    head_axes = logical_to_spec(("act_heads",), shape=(kv_heads,), mesh_shape=dict(mesh.shape))[0]  # divides heads too
    heads_spec = jax.sharding.PartitionSpec(batch_axes, head_axes, None, None)
    ids_spec = jax.sharding.PartitionSpec(batch_axes, None)
    run = jax.shard_map(run, in_specs=(heads_spec, heads_spec, heads_spec, ids_spec, ids_spec), out_specs=heads_spec,
                        check_vma=False)
  out = run(q_heads, k, v, q_ids, kv_ids).transpose(0, 2, 1, 3)[:, :lq]
  # the kernel gives a query that sees no key neither 0 nor a zero gradient: zeroing it does both
  return jnp.where(mask.sees_a_key(batch, lq, lk)[:, :, None, None], out, 0).astype(q.dtype)
