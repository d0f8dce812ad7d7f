"""The Qwen2 language decoder with multimodal rotary positions (M-RoPE) and a static-shape KV cache.

Each layer has two paths over the same parameters: `__call__` for a sequence (training, scoring, prefill, the general
cached pass; cache [B, T, KV, hd]) and `decode` for one token per row over the sampler's decode-layout cache
(K [B, KV, hd, T], V [B, KV, T, hd]), which is cheaper per step on CPU, where a small model's step is a chain of
tiny kernels: neither attention dot transposes the cache and the rotary angles come from one position per row.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from geojax.models.config import TextConfig
from geojax.models.layers import (Dense, Embed, RMSNorm, apply_rotary, inverse_frequencies, masked_attention,
                                  one_query_attention, remat)
from geojax.models.sharding import shard

CACHE_AXES = ("batch", "cache_length", "kv_heads", "head_dim")  # the sequence path's cache
K_AXES = ("batch", "kv_heads", "head_dim", "cache_length")  # the decode layout
V_AXES = ("batch", "kv_heads", "cache_length", "head_dim")

REMAT = {
    "full": None,  # jax.checkpoint's default: save nothing, recompute the whole block
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def mrope_cos_sin(positions: jax.Array, cfg: TextConfig) -> tuple[jax.Array, jax.Array]:
  """cos/sin [B, L, head_dim] float32 from positions [3, B, L]: frequency band i uses the temporal, height or
  width position according to `mrope_section` (as transformers' Qwen2VLRotaryEmbedding)."""
  inv_freq = jnp.asarray(inverse_frequencies(cfg.head_dim, cfg.rope_theta))
  axis_of_band = np.asarray(sum(([i % 3] * s for i, s in enumerate(cfg.mrope_section)), []))
  pos = jnp.asarray(positions, jnp.float32)[axis_of_band]  # [head_dim/2, B, L]
  angles = jnp.moveaxis(pos, 0, -1) * inv_freq
  angles = jnp.concatenate([angles, angles], axis=-1)
  return jnp.cos(angles), jnp.sin(angles)


def rope_cos_sin(positions: jax.Array, cfg: TextConfig) -> tuple[jax.Array, jax.Array]:
  """cos/sin [B, head_dim] float32 of one position per row: M-RoPE with equal t/h/w positions (every generated
  token) is plain RoPE."""
  inv_freq = jnp.asarray(inverse_frequencies(cfg.head_dim, cfg.rope_theta))
  angles = positions.astype(jnp.float32)[:, None] * inv_freq
  angles = jnp.concatenate([angles, angles], axis=-1)
  return jnp.cos(angles), jnp.sin(angles)


class Attention(nnx.Module):
  def __init__(self, cfg: TextConfig, *, dtype, param_dtype, rngs: nnx.Rngs):
    d, h, kv, hd = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.q_proj = Dense((d,), (h, hd), ("embed", "heads", "head_dim"), bias=True, **kw)
    self.k_proj = Dense((d,), (kv, hd), ("embed", "kv_heads", "head_dim"), bias=True, **kw)
    self.v_proj = Dense((d,), (kv, hd), ("embed", "kv_heads", "head_dim"), bias=True, **kw)
    self.o_proj = Dense((h, hd), (d,), ("heads", "head_dim", "embed"), bias=False, **kw)

  def __call__(self, x, cos, sin, mask, cache_kv=None, cache_index=None):
    """x [B, L, D]; mask [B, L, Lk]. Without a cache Lk = L. With cache_kv = (k, v) [B, T, KV, hd], the new
    keys are written at cache_index and attention runs over the whole cache (Lk = T)."""
    q = apply_rotary(self.q_proj(x), cos, sin)
    k = apply_rotary(self.k_proj(x), cos, sin)
    v = self.v_proj(x)
    if cache_kv is not None:
      ck, cv = cache_kv
      k = jax.lax.dynamic_update_slice(ck, k.astype(ck.dtype), (0, cache_index, 0, 0))
      v = jax.lax.dynamic_update_slice(cv, v.astype(cv.dtype), (0, cache_index, 0, 0))
      k, v = shard(k, CACHE_AXES), shard(v, CACHE_AXES)
    out = masked_attention(q, k.astype(q.dtype), v.astype(q.dtype), mask)
    return self.o_proj(out), (k, v)

  def decode(self, x, cos, sin, k_cache, v_cache, valid, index):
    """One token per row: x [B, D], cos/sin [B, hd]; writes its key/value at slot `index` of the decode-layout
    cache (K [B, KV, hd, T], V [B, KV, T, hd]) and attends over the slots `valid` [B, T] marks (the new one
    included). Returns (out [B, D], (k_cache, v_cache))."""
    batch = x.shape[0]
    kv_heads, head_dim = self.k_proj.out_shape
    q = self.q_proj(x).reshape(batch, kv_heads, -1, head_dim)  # head = kv_head * groups + g
    q, k = apply_rotary(q, cos[:, None], sin[:, None]), apply_rotary(self.k_proj(x), cos, sin)
    v = self.v_proj(x)
    k_cache = shard(jax.lax.dynamic_update_slice(k_cache, k[..., None].astype(k_cache.dtype), (0, 0, 0, index)),
                    K_AXES)
    v_cache = shard(jax.lax.dynamic_update_slice(v_cache, v[:, :, None].astype(v_cache.dtype), (0, 0, index, 0)),
                    V_AXES)
    out = one_query_attention(q, k_cache, v_cache, valid)
    return self.o_proj(out.reshape(batch, -1, head_dim)), (k_cache, v_cache)


class MLP(nnx.Module):
  def __init__(self, cfg: TextConfig, *, dtype, param_dtype, rngs: nnx.Rngs):
    d, m = cfg.hidden_size, cfg.intermediate_size
    kw = dict(bias=False, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.gate_proj = Dense((d,), (m,), ("embed", "mlp"), **kw)
    self.up_proj = Dense((d,), (m,), ("embed", "mlp"), **kw)
    self.down_proj = Dense((m,), (d,), ("mlp", "embed"), **kw)

  def __call__(self, x):
    h = jax.nn.silu(self.gate_proj(x)) * self.up_proj(x)
    return self.down_proj(shard(h, ("batch", "length", "act_mlp")))


class DecoderLayer(nnx.Module):
  def __init__(self, cfg: TextConfig, *, dtype, param_dtype, rngs: nnx.Rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype)
    self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, **kw)
    self.self_attn = Attention(cfg, rngs=rngs, **kw)
    self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, **kw)
    self.mlp = MLP(cfg, rngs=rngs, **kw)

  def __call__(self, x, cos, sin, mask, cache_kv=None, cache_index=None):
    attn, kv = self.self_attn(self.input_layernorm(x), cos, sin, mask, cache_kv, cache_index)
    x = x + attn
    x = x + self.mlp(self.post_attention_layernorm(x))
    return shard(x, ("batch", "length", "act_embed")), kv

  def decode(self, x, cos, sin, k_cache, v_cache, valid, index):
    """The same layer for one token per row x [B, D] over the decode-layout cache (see `Attention.decode`)."""
    attn, kv = self.self_attn.decode(self.input_layernorm(x), cos, sin, k_cache, v_cache, valid, index)
    x = x + attn
    x = x + self.mlp(self.post_attention_layernorm(x)[:, None])[:, 0]  # the MLP takes [B, L, D]
    return shard(x, ("batch", "act_embed")), kv


def _run_layer(layer, x, cos, sin, mask):
  return layer(x, cos, sin, mask)[0]


def _run_prefix_layer(layer, xp, xn, cos_p, sin_p, cos_n, sin_n, mask_p, mask_n, group):
  """One layer over shared prefixes xp [B, P, D] and their continuations xn [B*group, N, D], which attend to their
  prefix's keys and values (computed once, repeated over the group) and to each other."""
  xp, (k, v) = layer(xp, cos_p, sin_p, mask_p)
  pad = ((0, 0), (0, xn.shape[1]), (0, 0), (0, 0))
  ck, cv = (jnp.pad(jnp.repeat(a, group, axis=0) if group > 1 else a, pad) for a in (k, v))
  xn, _ = layer(xn, cos_n, sin_n, mask_n, (ck, cv), k.shape[1])
  return xp, xn


class TextDecoder(nnx.Module):
  """Embedding, decoder layers, final norm and LM head (or the tied embedding)."""

  def __init__(self, cfg: TextConfig, *, remat_policy: str = "none", dtype, param_dtype, rngs: nnx.Rngs):
    self.cfg, self.dtype, self.remat_policy = cfg, dtype, remat_policy
    kw = dict(dtype=dtype, param_dtype=param_dtype)
    self.embed_tokens = Embed(cfg.vocab_size, cfg.hidden_size, rngs=rngs, **kw)
    self.layers = nnx.List([DecoderLayer(cfg, rngs=rngs, **kw) for _ in range(cfg.num_layers)])
    self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, **kw)
    self.lm_head = None if cfg.tie_word_embeddings else Dense(
        (cfg.hidden_size,), (cfg.vocab_size,), ("embed", "vocab"), bias=False, rngs=rngs, **kw)

  def __call__(self, x: jax.Array, positions: jax.Array, key_valid: jax.Array) -> jax.Array:
    """Final normed hidden states [B, L, D] for embeddings x [B, L, D], positions [3, B, L], key_valid [B, L]."""
    length = x.shape[1]
    causal = jnp.tril(jnp.ones((length, length), bool))
    mask = causal[None] & key_valid[:, None, :].astype(bool)
    cos, sin = mrope_cos_sin(positions, self.cfg)
    run = _run_layer
    if self.remat_policy != "none":
      run = remat(_run_layer, REMAT[self.remat_policy])
    x = shard(x, ("batch", "length", "act_embed"))
    for layer in self.layers:
      x = run(layer, x, cos, sin, mask)
    return self.norm(x)

  def with_prefix(self, xp, pos_p, valid_p, xn, pos_n, valid_n, group: int) -> tuple[jax.Array, jax.Array]:
    """Final normed hidden states of prefixes xp [B, P, D] and of their continuations xn [B*group, N, D] (each
    prefix continued by `group` consecutive rows), as if each row of xn ran after its prefix in one sequence; the
    prefix runs once, not `group` times. pos_* [3, rows, len] and valid_* [rows, len] as in __call__."""
    n_prefix, length = xp.shape[1], xn.shape[1]
    mask_p = jnp.tril(jnp.ones((n_prefix, n_prefix), bool))[None] & valid_p[:, None, :].astype(bool)
    prefix_valid = jnp.repeat(valid_p.astype(bool), group, axis=0) if group > 1 else valid_p.astype(bool)
    causal = jnp.tril(jnp.ones((length, length), bool))[None] & valid_n[:, None, :].astype(bool)
    mask_n = jnp.concatenate([jnp.broadcast_to(prefix_valid[:, None, :], (xn.shape[0], length, n_prefix)), causal],
                             axis=2)
    cos_p, sin_p = mrope_cos_sin(pos_p, self.cfg)
    cos_n, sin_n = mrope_cos_sin(pos_n, self.cfg)
    run = functools.partial(_run_prefix_layer, group=group)
    if self.remat_policy != "none":
      run = remat(run, REMAT[self.remat_policy])
    xp, xn = shard(xp, ("batch", "length", "act_embed")), shard(xn, ("batch", "length", "act_embed"))
    for layer in self.layers:
      xp, xn = run(layer, xp, xn, cos_p, sin_p, cos_n, sin_n, mask_p, mask_n)
    return self.norm(xp), self.norm(xn)

  def cached(self, x, positions, mask, cache_k, cache_v, cache_index):
    """One pass over new tokens x [B, S, D] that reads and writes the KV cache; returns (hidden, ks, vs)."""
    cos, sin = mrope_cos_sin(positions, self.cfg)
    new_k, new_v = [], []
    for layer, ck, cv in zip(self.layers, cache_k, cache_v):
      x, (k, v) = layer(x, cos, sin, mask, (ck, cv), cache_index)
      new_k.append(k)
      new_v.append(v)
    return self.norm(x), tuple(new_k), tuple(new_v)

  def decode(self, tokens, positions, cache_k, cache_v, valid, index, head=None):
    """Logits float32 [B, V] of the token after `tokens` [B] at rotary `positions` [B], writing slot `index` of
    the decode-layout caches; returns (logits, ks, vs). `head` [D, V], if given, replaces the output matrix."""
    cos, sin = rope_cos_sin(positions, self.cfg)
    x = shard(self.embed_tokens(tokens), ("batch", "act_embed"))
    new_k, new_v = [], []
    for layer, ck, cv in zip(self.layers, cache_k, cache_v):
      x, (k, v) = layer.decode(x, cos, sin, ck, cv, valid, index)
      new_k.append(k)
      new_v.append(v)
    hidden = self.norm(x)
    if head is None:
      logits = self.logits(hidden)
    else:
      logits = jnp.dot(hidden.astype(self.dtype), head.astype(self.dtype), preferred_element_type=jnp.float32)
    return logits, tuple(new_k), tuple(new_v)

  def logits(self, hidden: jax.Array) -> jax.Array:
    """float32 logits [..., V] of final hidden states."""
    if self.lm_head is None:
      out = self.embed_tokens.attend(hidden)
    else:
      out = jnp.einsum("...d,dv->...v", hidden.astype(self.dtype), self.lm_head.kernel[...].astype(self.dtype),
                       preferred_element_type=jnp.float32)
    return out

  def output_matrix(self) -> jax.Array:
    """[D, V] output projection (the transposed embedding when tied), for chunked log-prob computation."""
    if self.lm_head is None:
      return self.embed_tokens.embedding[...].T
    return self.lm_head.kernel[...]
