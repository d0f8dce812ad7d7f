"""The Qwen2 language decoder with multimodal rotary positions (M-RoPE) and a static-shape KV cache.

Each layer has two paths over the same parameters: `__call__` for a sequence (training, scoring, prefill, the general
cached pass; cache [B, T, KV, hd]) and `decode` for one token per row over the sampler's decode-layout cache
(K [B, KV, hd, T], V [B, KV, T, hd]), which is cheaper per step on CPU, where a small model's step is a chain of
tiny kernels: neither attention dot transposes the cache and the rotary angles come from one position per row.

The layers are one `geojax.models.scan.stack` (parameters [num_layers, ...]) and every path runs them as a scan, so
the program holds one layer however deep the model is. The KV caches are stacked the same way, [num_layers, ...]
(`STACKED`), and carried through the scan: each layer writes its new keys and values in place.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from geojax.models import scan
from geojax.models.attention import Mask, attention
from geojax.models.config import TextConfig
from geojax.models.layers import Dense, Embed, RMSNorm, apply_rotary, inverse_frequencies, one_query_attention
from geojax.models.scan import REMAT  # noqa: F401  (the remat policies by name; re-exported)
from geojax.models.sharding import shard

CACHE_AXES = ("batch", "cache_length", "kv_heads", "head_dim")  # the sequence path's cache
K_AXES = ("batch", "kv_heads", "head_dim", "cache_length")  # the decode layout
V_AXES = ("batch", "kv_heads", "cache_length", "head_dim")


def stacked(axes: tuple[str, ...]) -> tuple[str, ...]:
  """Logical axes of a cache stacked over layers ([num_layers, ...] with the per-layer `axes`)."""
  return (scan.LAYERS, *axes)


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

  def __call__(self, x, cos, sin, mask: Mask, cache_kv=None, cache_index=None):
    """x [B, L, D]; mask: which of the Lk keys each query sees. Without a cache Lk = L. With cache_kv = (k, v)
    [B, T, KV, hd], the new keys are written at cache_index and attention runs over the whole cache (Lk = T)."""
    q = apply_rotary(self.q_proj(x), cos, sin)
    k = apply_rotary(self.k_proj(x), cos, sin)
    v = self.v_proj(x)
    if cache_kv is not None:
      ck, cv = cache_kv
      k = jax.lax.dynamic_update_slice(ck, k.astype(ck.dtype), (0, cache_index, 0, 0))
      v = jax.lax.dynamic_update_slice(cv, v.astype(cv.dtype), (0, cache_index, 0, 0))
      k, v = shard(k, CACHE_AXES), shard(v, CACHE_AXES)
    out = attention(q, k.astype(q.dtype), v.astype(q.dtype), mask)
    return self.o_proj(out), (k, v)

  def decode(self, x, cos, sin, k_cache, v_cache, valid, index, layer):
    """One token per row: x [B, D], cos/sin [B, hd]; writes its key/value at slot `index` of layer `layer` of the
    stacked decode-layout caches (K [N, B, KV, hd, T], V [N, B, KV, T, hd]; in place, so that a scan over layers
    copies no cache), or of this layer's own caches (K [B, KV, hd, T], V [B, KV, T, hd]) when `layer` is None, and
    attends over that layer's slots `valid` [B, T] marks (the new one included). Returns
    (out [B, D], (k_cache, v_cache))."""
    batch = x.shape[0]
    kv_heads, head_dim = self.k_proj.out_shape
    q = self.q_proj(x).reshape(batch, kv_heads, -1, head_dim)  # head = kv_head * groups + g
    q, k = apply_rotary(q, cos[:, None], sin[:, None]), apply_rotary(self.k_proj(x), cos, sin)
    v = self.v_proj(x)
    if layer is None:
      k_cache = shard(jax.lax.dynamic_update_slice(k_cache, k[..., None].astype(k_cache.dtype), (0, 0, 0, index)),
                      K_AXES)
      v_cache = shard(jax.lax.dynamic_update_slice(v_cache, v[:, :, None].astype(v_cache.dtype), (0, 0, index, 0)),
                      V_AXES)
      out = one_query_attention(q, k_cache, v_cache, valid)
    else:
      k_cache = shard(jax.lax.dynamic_update_slice(k_cache, k[None, ..., None].astype(k_cache.dtype),
                                                   (layer, 0, 0, 0, index)), stacked(K_AXES))
      v_cache = shard(jax.lax.dynamic_update_slice(v_cache, v[None, :, :, None].astype(v_cache.dtype),
                                                   (layer, 0, 0, index, 0)), stacked(V_AXES))
      out = one_query_attention(q, k_cache[layer], v_cache[layer], valid)
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

  def decode(self, x, cos, sin, k_cache, v_cache, valid, index, layer):
    """The same layer for one token per row x [B, D] over the stacked decode-layout caches (`Attention.decode`)."""
    attn, kv = self.self_attn.decode(self.input_layernorm(x), cos, sin, k_cache, v_cache, valid, index, layer)
    x = x + attn
    x = x + self.mlp(self.post_attention_layernorm(x)[:, None])[:, 0]  # the MLP takes [B, L, D]
    return shard(x, ("batch", "act_embed")), kv


def _run_prefix_layer(layer, xp, xn, cos_p, sin_p, cos_n, sin_n, mask_p, mask_n, group):
  """One layer over shared prefixes xp [B, P, D] and their continuations xn [B*group, N, D], which attend to their
  prefix's keys and values (computed once, repeated over the group) and to each other."""
  xp, (k, v) = layer(xp, cos_p, sin_p, mask_p)
  pad = ((0, 0), (0, xn.shape[1]), (0, 0), (0, 0))
  ck, cv = (jnp.pad(jnp.repeat(a, group, axis=0) if group > 1 else a, pad) for a in (k, v))
  xn, _ = layer(xn, cos_n, sin_n, mask_n, (ck, cv), k.shape[1])
  return xp, xn


def _write_slots(caches, layer_cache, layer, start, count: int, axis: int, axes):
  """The stacked caches [N, ...] with slots [start, start + count) of layer `layer` (along that layer's `axis`)
  copied from `layer_cache`, the layer's cache after its pass: only the new entries are written, in place."""
  new = jax.lax.dynamic_slice_in_dim(layer_cache, start, count, axis=axis)
  corner = [0] * caches.ndim
  corner[0], corner[axis + 1] = layer, start
  return shard(jax.lax.dynamic_update_slice(caches, new[None].astype(caches.dtype), corner), stacked(axes))


class TextDecoder(nnx.Module):
  """Embedding, decoder layers (one `scan.stack`), final norm and LM head (or the tied embedding)."""

  def __init__(self, cfg: TextConfig, *, remat_policy: str = "none", attention: str = "auto", dtype, param_dtype,
               rngs: nnx.Rngs):
    self.cfg, self.dtype, self.remat_policy, self.attention = cfg, dtype, remat_policy, attention
    kw = dict(dtype=dtype, param_dtype=param_dtype)
    self.embed_tokens = Embed(cfg.vocab_size, cfg.hidden_size, rngs=rngs, **kw)
    self.layers = scan.stack([DecoderLayer(cfg, rngs=rngs, **kw) for _ in range(cfg.num_layers)])
    self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, **kw)
    self.lm_head = None if cfg.tie_word_embeddings else Dense(
        (cfg.hidden_size,), (cfg.vocab_size,), ("embed", "vocab"), bias=False, rngs=rngs, **kw)

  def __call__(self, x: jax.Array, positions: jax.Array, key_valid: jax.Array) -> jax.Array:
    """Final normed hidden states [B, L, D] for embeddings x [B, L, D], positions [3, B, L], key_valid [B, L]."""
    mask = Mask.from_valid(key_valid, causal=True, backend=self.attention)
    cos, sin = mrope_cos_sin(positions, self.cfg)

    def body(layer, x, _):
      return layer(x, cos, sin, mask)[0], None

    x, _ = scan.scan(self.layers, body, shard(x, ("batch", "length", "act_embed")), remat_policy=self.remat_policy)
    return self.norm(x)

  def with_prefix(self, xp, pos_p, valid_p, xn, pos_n, valid_n, group: int) -> tuple[jax.Array, jax.Array]:
    """Final normed hidden states of prefixes xp [B, P, D] and of their continuations xn [B*group, N, D] (each
    prefix continued by `group` consecutive rows), as if each row of xn ran after its prefix in one sequence; the
    prefix runs once, not `group` times. pos_* [3, rows, len] and valid_* [rows, len] as in __call__."""
    n_prefix = xp.shape[1]
    mask_p = Mask.from_valid(valid_p, causal=True, backend=self.attention)
    prefix_valid = jnp.repeat(valid_p.astype(bool), group, axis=0) if group > 1 else valid_p.astype(bool)
    # each continuation token sees its prefix and the continuation up to itself: causal, offset by the prefix
    mask_n = Mask.from_valid(valid_n, jnp.concatenate([prefix_valid, valid_n.astype(bool)], axis=1), causal=True,
                             offset=n_prefix, backend=self.attention)
    cos_p, sin_p = mrope_cos_sin(pos_p, self.cfg)
    cos_n, sin_n = mrope_cos_sin(pos_n, self.cfg)

    def body(layer, carry, _):
      return _run_prefix_layer(layer, *carry, cos_p, sin_p, cos_n, sin_n, mask_p, mask_n, group), None

    carry = shard(xp, ("batch", "length", "act_embed")), shard(xn, ("batch", "length", "act_embed"))
    (xp, xn), _ = scan.scan(self.layers, body, carry, remat_policy=self.remat_policy)
    return self.norm(xp), self.norm(xn)

  def cached(self, x, positions, mask: Mask, cache_k, cache_v, cache_index):
    """One pass over new tokens x [B, S, D] that reads and writes the KV caches (stacked over layers,
    [num_layers, B, T, KV, hd]); returns (hidden, cache_k, cache_v). `mask` says which cache slots each new token
    sees."""
    cos, sin = mrope_cos_sin(positions, self.cfg)
    steps = x.shape[1]

    def body(layer, carry, i):
      x, ks, vs = carry
      x, (k, v) = layer(x, cos, sin, mask, (ks[i], vs[i]), cache_index)
      return (x, _write_slots(ks, k, i, cache_index, steps, 1, CACHE_AXES),
              _write_slots(vs, v, i, cache_index, steps, 1, CACHE_AXES)), None

    (x, cache_k, cache_v), _ = scan.scan(self.layers, body, (x, cache_k, cache_v), jnp.arange(self.cfg.num_layers))
    return self.norm(x), cache_k, cache_v

  def decode(self, tokens, positions, cache_k, cache_v, valid, index, head=None, layers=None):
    """Logits float32 [B, V] of the token after `tokens` [B] at rotary `positions` [B], writing slot `index` of
    the decode-layout caches (stacked over layers: K [num_layers, B, KV, hd, T], V [num_layers, B, KV, T, hd]);
    returns (logits, cache_k, cache_v). `head` [D, V], if given, replaces the output matrix. `layers` (from
    `layer_list`), if given, run one after another in place of the scan over the stacked layers, over the stacked
    caches or per-layer ones (tuples of each layer's K and V, `decode_cache(per_layer=True)`): with copies made
    once before a decode loop and per-layer caches, no step slices weights or a cache out of a stack (which XLA:CPU
    copies)."""
    cos, sin = rope_cos_sin(positions, self.cfg)
    x = shard(self.embed_tokens(tokens), ("batch", "act_embed"))

    def body(layer, carry, i):
      x, ks, vs = carry
      x, (ks, vs) = layer.decode(x, cos, sin, ks, vs, valid, index, i)
      return (x, ks, vs), None

    if layers is None:
      (x, cache_k, cache_v), _ = scan.scan(self.layers, body, (x, cache_k, cache_v), jnp.arange(self.cfg.num_layers))
    elif isinstance(cache_k, tuple):  # per-layer caches
      ks, vs = list(cache_k), list(cache_v)
      for i, layer in enumerate(layers):
        (x, ks[i], vs[i]), _ = body(layer, (x, ks[i], vs[i]), None)
      cache_k, cache_v = tuple(ks), tuple(vs)
    else:
      for i, layer in enumerate(layers):
        (x, cache_k, cache_v), _ = body(layer, (x, cache_k, cache_v), i)
    hidden = self.norm(x)
    if head is None:
      logits = self.logits(hidden)
    else:
      logits = jnp.dot(hidden.astype(self.dtype), head.astype(self.dtype), preferred_element_type=jnp.float32)
    return logits, cache_k, cache_v

  def layer_list(self) -> list[DecoderLayer]:
    """The layers as separate modules (slices of the stacked parameters, copied once), for `decode` on CPU."""
    return [scan.layer(self.layers, i) for i in range(self.cfg.num_layers)]

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
