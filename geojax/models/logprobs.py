"""Per-token log-probabilities without materialising the B x L x V float32 logits.

    lp = token_logprobs(model, input_ids, targets, attention_mask=None, pixel_values=None,
                        image_grid_thw=None, position_ids=None, *, start=0, chunk_size=256, temperature=1.0)
    # lp float32 [B, L - start]: lp[b, t] = log softmax(logits[b, start + t] / temperature)[targets[b, start + t]]

`targets[b, t]` is the token predicted at position t (usually input_ids shifted left by one; the caller masks
the positions it does not score). The decoder runs once; the LM head, log-sum-exp and target pick run over
sequence chunks of `chunk_size` positions inside `jax.lax.map`, each chunk under `jax.checkpoint`, so the
forward holds one [B, chunk, V] float32 block at a time and the backward recomputes it chunk by chunk
(chunked_logprobs checkpoint=False skips that for a single chunk, where it saves no memory).
Differentiable with respect to the model parameters (the GRPO loss takes gradients through it).

On CPU a large vocabulary (more than VOCAB_BLOCK columns, not split over the mesh) is also taken in blocks of columns:
the log-sum-exp runs online over the blocks and the backward recomputes each block's logits (`blocked_logprobs`),
so no [rows, V] float32 array is ever written. At vocab 151,936 on one CPU thread that makes the forward 2.5x and
forward + backward 1.2x faster than one [rows, V] block, which streams through memory several times.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from geojax.models.platform import current_platform
from geojax.models.sharding import logical_to_spec, shard

VOCAB_BLOCK = 8192  # head columns per block of blocked_logprobs (8 MB of float32 logits per 256 rows)


def chunked_logprobs(hidden: jax.Array, output: jax.Array, targets: jax.Array, *, chunk_size: int = 256,
                     temperature: float = 1.0, compute_dtype=None, checkpoint: bool = True) -> jax.Array:
  """log p(targets) [B, L] from hidden states [B, L, D] and the output matrix [D, V], chunked over L.
  checkpoint=False with a single chunk: no jax.checkpoint (it would only recompute that block in the backward,
  holding no less memory; False keeps the forward's block for the backward, one [B, L, V] matmul fewer)."""
  batch, length, dim = hidden.shape
  chunk = max(1, min(chunk_size, length))
  n_chunks = -(-length // chunk)
  pad = n_chunks * chunk - length
  compute_dtype = compute_dtype or hidden.dtype
  h = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0))).reshape(batch, n_chunks, chunk, dim).swapaxes(0, 1)
  t = jnp.pad(targets.astype(jnp.int32), ((0, 0), (0, pad))).reshape(batch, n_chunks, chunk).swapaxes(0, 1)
  # Rows stay split over the batch axes in every chunk, forward and backward (the constraint binds the cotangent
  # too); otherwise the partitioner may gather [B, chunk, V] float32 logits whole. The head is cast once, so the
  # weight gathered into the loop is the compute-dtype one.
  h, t = shard(h, (None, "batch", "length", "act_embed")), shard(t, (None, "batch", "length"))
  output = output.astype(compute_dtype)

  def one(w, h_chunk, t_chunk):
    # the chunk's B x chunk positions as the rows of one [rows, D] x [D, V] matmul, split over the batch axes as B
    # is: the same values as a [B, chunk, D] einsum, whose backward XLA:CPU runs through transposed copies of the
    # logits' cotangent (the head's gradient 1.6x slower at vocab 2,048, 2x at 151,936)
    rows = h_chunk.shape[0] * h_chunk.shape[1]
    if _vocab_in_blocks(w.shape[1]):
      rows_h = shard(h_chunk.reshape(rows, dim).astype(compute_dtype), ("batch", "act_embed"))
      return blocked_logprobs(rows_h, w, t_chunk.reshape(rows), temperature).reshape(t_chunk.shape)
    logits = jnp.dot(h_chunk.reshape(rows, dim).astype(compute_dtype), w, preferred_element_type=jnp.float32)
    logits = shard(logits, ("batch", "act_vocab")) / temperature
    picked = jnp.take_along_axis(logits, t_chunk.reshape(rows, 1), axis=-1)[:, 0]
    return (picked - jax.nn.logsumexp(logits, axis=-1)).reshape(t_chunk.shape)

  if n_chunks == 1 and not checkpoint:
    return one(output, h[0], t[0])[:, :length]
  one = jax.checkpoint(one)
  out = jax.lax.map(lambda xs: one(output, *xs), (h, t))  # [n_chunks, B, chunk]
  return out.swapaxes(0, 1).reshape(batch, n_chunks * chunk)[:, :length]


def _vocab_in_blocks(vocab: int) -> bool:
  """Whether the head is taken in column blocks: on CPU, a vocabulary above VOCAB_BLOCK that the mesh does not split
  (a vocabulary split over devices keeps the one-block form, whose sharding the partitioner already handles). TPUs
  keep the one-block form too: compiled for v5e:4x8 (Geo-R, 2 text layers), the blocks took the reference pass from
  2.91 to 2.59 GiB per chip but the GRPO update from 4.70 to 5.04, and their speed there is unmeasured."""
  if vocab <= VOCAB_BLOCK or current_platform() != "cpu":
    return False
  mesh = jax.sharding.get_abstract_mesh()
  split_axes = {} if mesh.empty else {axis: size for axis, size in mesh.shape.items() if size > 1}
  return logical_to_spec(("act_vocab",), shape=(vocab,), mesh_shape=split_axes)[0] is None


def _over_blocks(step, w: jax.Array, carry):
  """fori_loop of step(start, w_block, fresh, carry) over ceil(V / VOCAB_BLOCK) equal blocks of w's columns. The
  last block is shifted left to end at V; `fresh` [width] masks the columns an earlier block already covered."""
  vocab = w.shape[1]
  n_blocks = -(-vocab // VOCAB_BLOCK)
  width = -(-vocab // n_blocks)

  def body(k, carry):
    start = jnp.minimum(k * width, vocab - width)
    fresh = start + jnp.arange(width) >= k * width
    return step(start, jax.lax.dynamic_slice_in_dim(w, start, width, axis=1), fresh, carry)

  return jax.lax.fori_loop(0, n_blocks, body, carry)


def _block_logits(h, w_block, fresh, temperature):
  logits = jnp.dot(h, w_block, preferred_element_type=jnp.float32) / temperature
  return shard(jnp.where(fresh, logits, -jnp.inf), ("batch", None))


def _blocked_logsumexp(h, w, temperature):
  def step(start, w_block, fresh, carry):
    top, total = carry
    logits = _block_logits(h, w_block, fresh, temperature)
    new_top = jnp.maximum(top, logits.max(axis=-1))
    return new_top, total * jnp.exp(top - new_top) + jnp.exp(logits - new_top[:, None]).sum(axis=-1)

  rows = h.shape[0]
  top, total = _over_blocks(step, w, (jnp.full((rows,), -jnp.inf), jnp.zeros((rows,))))
  return top + jnp.log(total)


def _picked_logits(h, w, targets, temperature):
  """logits[n, targets[n]] as one dot per row with the target's column of w."""
  columns = jnp.take(w, targets, axis=1).T  # [rows, D]
  return jnp.einsum("nd,nd->n", h, columns, preferred_element_type=jnp.float32) / temperature


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def blocked_logprobs(h: jax.Array, w: jax.Array, targets: jax.Array, temperature: float = 1.0) -> jax.Array:
  """log softmax(h @ w / temperature)[n, targets[n]], float32 [rows], from h [rows, D] and w [D, V] in the compute
  dtype, over blocks of w's columns (see the module docstring)."""
  return _blocked_fwd(h, w, targets, temperature)[0]


def _blocked_fwd(h, w, targets, temperature):
  lse = _blocked_logsumexp(h, w, temperature)
  return _picked_logits(h, w, targets, temperature) - lse, (h, w, targets, lse)


def _blocked_bwd(temperature, residuals, g):
  # d lp[n] / d logits[n, j] = (onehot(targets[n])_j - softmax_j) / temperature: the softmax part block by block
  # (each block's logits recomputed), the one-hot part once, as a gather and a scatter-add of target columns.
  h, w, targets, lse = residuals
  scale = g / temperature

  def step(start, w_block, fresh, carry):
    dh, dw = carry
    p = jnp.exp(_block_logits(h, w_block, fresh, temperature) - lse[:, None]) * -scale[:, None]
    p = p.astype(h.dtype)
    dh = dh + jnp.dot(p, w_block.T, preferred_element_type=jnp.float32)
    dw_block = jnp.dot(h.T, p, preferred_element_type=jnp.float32).astype(w.dtype)
    # columns of the shifted last block that an earlier block wrote get p = 0 here: add, do not overwrite
    dw_block = dw_block + jax.lax.dynamic_slice_in_dim(dw, start, w_block.shape[1], axis=1)
    # split as the head is (rows summed by a reduce-scatter), not a whole [D, V] gradient on every device
    return dh, shard(jax.lax.dynamic_update_slice_in_dim(dw, dw_block, start, axis=1), ("embed", "vocab"))

  dw = shard(jnp.zeros_like(w), ("embed", "vocab"))
  dh, dw = _over_blocks(step, w, (jnp.zeros(h.shape, jnp.float32), dw))
  dh = dh + scale[:, None] * jnp.take(w, targets, axis=1).T
  dw = dw.at[:, targets].add((h * scale[:, None].astype(h.dtype)).T.astype(w.dtype))
  return dh.astype(h.dtype), dw, None


blocked_logprobs.defvjp(_blocked_fwd, _blocked_bwd)


def token_logprobs(model, input_ids, targets, attention_mask=None, pixel_values=None, image_grid_thw=None,
                   position_ids=None, *, image_mask=None, image_features=None, start: int = 0, chunk_size: int = 256,
                   temperature: float = 1.0) -> jax.Array:
  """float32 [B, L - start] log-probabilities of `targets[:, start:]` under `model` (a QwenVL); see the module
  docstring. The decoder runs over all L positions, the LM head only from `start` on (a GRPO pass scores only the
  completion, and the head is most of the cost at a large vocabulary). image_mask, image_features: QwenVL.embed."""
  hidden = model.hidden_states(input_ids, attention_mask, pixel_values, image_grid_thw, position_ids, image_mask,
                               image_features)
  output = model.language_model.output_matrix()
  return chunked_logprobs(hidden[:, start:], output, targets[:, start:], chunk_size=chunk_size,
                          temperature=temperature, compute_dtype=model.dtype)
