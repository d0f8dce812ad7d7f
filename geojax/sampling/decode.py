"""The sampler's one-token decode step: the same math as `TextDecoder` with a KV cache, laid out for decoding.

`QwenVL.decode_step` runs the general cached pass (any number of new tokens, cache [B, T, KV, hd], a
[B, S, T] mask, three-axis rotary positions). For one token per row inside the sampler's while loop this module
does the same computation with cheaper XLA ops (on CPU a small model's step is a chain of tiny kernels):

  - the cache is kept as K [B, KV, hd, T] and V [B, KV, T, hd], so neither attention dot transposes it per step
    and the query-key dot has T contiguous (XLA:CPU ran the [B, T, KV, hd] batched dot ~3x slower);
  - rotary angles come from the single position of the new token (all three M-RoPE axes are equal there);
  - every projection, norm and the embedding are the model's own modules, so parameters are read, never copied.

Measured and dropped: concatenating the q/k/v and gate/up kernels once per call (one dot instead of three and
two). The [D, 2M] gate/up dot is big enough for XLA:CPU to split across threads, which lost time to
synchronization (and badly when another process holds the second core); the q/k/v one gained nothing measurable.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from geojax.models.layers import apply_rotary, inverse_frequencies
from geojax.models.sharding import rules_context, shard
from geojax.models.text import TextDecoder

K_AXES = ("batch", "kv_heads", "head_dim", "cache_length")
V_AXES = ("batch", "kv_heads", "cache_length", "head_dim")


def supports(model) -> bool:
  """True when `model` has the QwenVL text decoder this fast path is written for."""
  return isinstance(getattr(model, "language_model", None), TextDecoder)


def to_decode_cache(cache: dict, length: int) -> dict:
  """The model's prefilled cache (k, v [B, P, KV, hd]) in the decode layout, with room for `length` slots in all:
  K [B, KV, hd, length], V [B, KV, length, hd], the slots past P empty (not valid)."""
  extra = length - cache["valid"].shape[1]
  k = tuple(shard(jnp.pad(jnp.transpose(k, (0, 2, 3, 1)), ((0, 0), (0, 0), (0, 0), (0, extra))), K_AXES)
            for k in cache["k"])
  v = tuple(shard(jnp.pad(jnp.transpose(v, (0, 2, 1, 3)), ((0, 0), (0, 0), (0, extra), (0, 0))), V_AXES)
            for v in cache["v"])
  return dict(cache, k=k, v=v, valid=jnp.pad(cache["valid"], ((0, 0), (0, extra))))


def _rotary(text: TextDecoder, positions: jax.Array) -> tuple[jax.Array, jax.Array]:
  """cos/sin [B, hd] of one position per row (M-RoPE with equal t/h/w positions is plain RoPE)."""
  inv_freq = jnp.asarray(inverse_frequencies(text.cfg.head_dim, text.cfg.rope_theta))
  angles = positions.astype(jnp.float32)[:, None] * inv_freq
  angles = jnp.concatenate([angles, angles], axis=-1)
  return jnp.cos(angles), jnp.sin(angles)


def _attend(q, k_cache, v_cache, valid, dtype):
  """Softmax attention of one query per row over the cache (masked_attention's math for Lq = 1)."""
  scores = jnp.einsum("bkgd,bkdt->bkgt", q, k_cache.astype(q.dtype), preferred_element_type=jnp.float32)
  scores = scores * (q.shape[-1] ** -0.5)
  scores = jnp.where(valid[:, None, None, :], scores, jnp.finfo(jnp.float32).min)
  probs = jax.nn.softmax(scores, axis=-1).astype(dtype)
  return jnp.einsum("bkgt,bktd->bkgd", probs, v_cache.astype(dtype))


def step(model, tokens: jax.Array, cache: dict, head: jax.Array | None = None) -> tuple[jax.Array, dict]:
  """Logits float32 [B, V] of the token after `tokens` [B], and the cache (decode layout) with it written.

  Same contract as `QwenVL.decode_step(tokens, None, cache)`: writes slot cache["index"] at position
  cache["next_pos"], then advances both. `head` [D, V], if given, replaces the model's output matrix (the
  sampler's CPU copy of a tied embedding).
  """
  text: TextDecoder = model.language_model
  cfg = text.cfg
  index, positions = cache["index"], cache["next_pos"]
  batch, groups = tokens.shape[0], cfg.num_heads // cfg.num_kv_heads
  valid = jax.lax.dynamic_update_slice(cache["valid"], jnp.ones((batch, 1), bool), (0, index))
  cos, sin = _rotary(text, positions)
  new_k, new_v = [], []
  with rules_context(model.config.sharding_rules):
    x = shard(text.embed_tokens(tokens), ("batch", "act_embed"))
    for layer, k_cache, v_cache in zip(text.layers, cache["k"], cache["v"]):
      attn, h = layer.self_attn, layer.input_layernorm(x)
      q = attn.q_proj(h).reshape(batch, cfg.num_kv_heads, groups, cfg.head_dim)  # head = kv_head * groups + g
      q, k = apply_rotary(q, cos[:, None], sin[:, None]), apply_rotary(attn.k_proj(h), cos, sin)
      v = attn.v_proj(h)
      k_cache = shard(jax.lax.dynamic_update_slice(k_cache, k[..., None].astype(k_cache.dtype), (0, 0, 0, index)),
                      K_AXES)
      v_cache = shard(jax.lax.dynamic_update_slice(v_cache, v[:, :, None].astype(v_cache.dtype), (0, 0, index, 0)),
                      V_AXES)
      out = _attend(q, k_cache, v_cache, valid, q.dtype)
      x = x + attn.o_proj(out.reshape(batch, cfg.num_heads, cfg.head_dim))
      x = x + layer.mlp(layer.post_attention_layernorm(x)[:, None])[:, 0]  # the MLP takes [B, L, D]
      x = shard(x, ("batch", "act_embed"))
      new_k.append(k_cache)
      new_v.append(v_cache)
    hidden = text.norm(x)
    if head is None:
      logits = text.logits(hidden)
    else:
      logits = jnp.dot(hidden.astype(text.dtype), head.astype(text.dtype), preferred_element_type=jnp.float32)
  cache = dict(cache, k=tuple(new_k), v=tuple(new_v), valid=valid, index=index + 1, next_pos=positions + 1)
  return logits, cache
