"""Per-token log-probabilities without materialising the B x L x V float32 logits.

    lp = token_logprobs(model, input_ids, targets, attention_mask=None, pixel_values=None,
                        image_grid_thw=None, position_ids=None, *, chunk_size=256, temperature=1.0)
    # lp float32 [B, L]: lp[b, t] = log softmax(logits[b, t] / temperature)[targets[b, t]]

`targets[b, t]` is the token predicted at position t (usually input_ids shifted left by one; the caller masks
the positions it does not score). The decoder runs once; the LM head, log-sum-exp and target pick run over
sequence chunks of `chunk_size` positions inside `jax.lax.map`, each chunk under `jax.checkpoint`, so the
forward holds one [B, chunk, V] float32 block at a time and the backward recomputes it chunk by chunk.
Differentiable with respect to the model parameters (the GRPO loss takes gradients through it).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def chunked_logprobs(hidden: jax.Array, output: jax.Array, targets: jax.Array, *, chunk_size: int = 256,
                     temperature: float = 1.0, compute_dtype=None) -> jax.Array:
  """log p(targets) [B, L] from hidden states [B, L, D] and the output matrix [D, V], chunked over L."""
  batch, length, dim = hidden.shape
  chunk = max(1, min(chunk_size, length))
  n_chunks = -(-length // chunk)
  pad = n_chunks * chunk - length
  compute_dtype = compute_dtype or hidden.dtype
  h = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0))).reshape(batch, n_chunks, chunk, dim).swapaxes(0, 1)
  t = jnp.pad(targets.astype(jnp.int32), ((0, 0), (0, pad))).reshape(batch, n_chunks, chunk).swapaxes(0, 1)

  @jax.checkpoint
  def one(w, h_chunk, t_chunk):
    logits = jnp.einsum("bcd,dv->bcv", h_chunk.astype(compute_dtype), w.astype(compute_dtype),
                        preferred_element_type=jnp.float32)
    logits = logits / temperature
    picked = jnp.take_along_axis(logits, t_chunk[..., None], axis=-1)[..., 0]
    return picked - jax.nn.logsumexp(logits, axis=-1)

  out = jax.lax.map(lambda xs: one(output, *xs), (h, t))  # [n_chunks, B, chunk]
  return out.swapaxes(0, 1).reshape(batch, n_chunks * chunk)[:, :length]


def token_logprobs(model, input_ids, targets, attention_mask=None, pixel_values=None, image_grid_thw=None,
                   position_ids=None, *, image_mask=None, chunk_size: int = 256, temperature: float = 1.0) -> jax.Array:
  """float32 [B, L] log-probabilities of `targets` under `model` (a QwenVL); see the module docstring.
  image_mask: which positions take image features (QwenVL.embed), default every image-pad token."""
  hidden = model.hidden_states(input_ids, attention_mask, pixel_values, image_grid_thw, position_ids, image_mask)
  output = model.language_model.output_matrix()
  return chunked_logprobs(hidden, output, targets, chunk_size=chunk_size, temperature=temperature,
                          compute_dtype=model.dtype)
