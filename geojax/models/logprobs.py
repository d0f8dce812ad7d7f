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
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from geojax.models.sharding import shard


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
    logits = jnp.dot(h_chunk.reshape(rows, dim).astype(compute_dtype), w, preferred_element_type=jnp.float32)
    logits = shard(logits, ("batch", "act_vocab")) / temperature
    picked = jnp.take_along_axis(logits, t_chunk.reshape(rows, 1), axis=-1)[:, 0]
    return (picked - jax.nn.logsumexp(logits, axis=-1)).reshape(t_chunk.shape)

  if n_chunks == 1 and not checkpoint:
    return one(output, h[0], t[0])[:, :length]
  one = jax.checkpoint(one)
  out = jax.lax.map(lambda xs: one(output, *xs), (h, t))  # [n_chunks, B, chunk]
  return out.swapaxes(0, 1).reshape(batch, n_chunks * chunk)[:, :length]


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
