"""The sampler's one-token decode step: the same math as `TextDecoder` with a KV cache, laid out for decoding.

`QwenVL.decode_step` runs the general cached pass (any number of new tokens, cache [B, T, KV, hd]). For one
token per row inside the sampler's while loop this module does the same computation with fewer, cheaper XLA ops,
which is what bounds a small model's decode on CPU (a toy step is a few hundred microseconds of tiny kernels):

  - the cache is kept as K [B, KV, hd, T] and V [B, KV, T, hd], so both attention dots read it with no transpose
    and the query-key dot has the T axis contiguous (XLA:CPU ran the [B, T, KV, hd] batched dot ~3x slower);
  - for small unsharded models, the q/k/v kernels and the gate/up kernels are concatenated once per generate
    call (before the loop, so loop-invariant): one dot each instead of three and two. Big models skip it (their
    step streams the weights from memory either way, and the concatenated copy would cost memory);
  - rotary angles come from the single position of the new token (all three M-RoPE axes are equal there).

The parameters, their names and the model's public API are untouched: the norms, the output and down
projections, the embedding and the LM head are the model's own modules; `prepare` only reads kernels.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from geojax.models.layers import apply_rotary, inverse_frequencies
from geojax.models.sharding import rules_context, shard
from geojax.models.text import TextDecoder

K_AXES = ("batch", "kv_heads", "head_dim", "cache_length")
V_AXES = ("batch", "kv_heads", "cache_length", "head_dim")

# Concatenate q/k/v and gate/up kernels only while the concatenated copies stay below this size: small models
# are bound by the number of kernels per step, big ones by streaming weights (fusing would only add a copy).
FUSE_MAX_BYTES = 64 * 2 ** 20


class LayerWeights(NamedTuple):
  """Decode-time views of one decoder layer's projections (None where the model's own Dense is used)."""
  qkv_kernel: jax.Array | None  # [D, (H + 2 KV) * hd]
  qkv_bias: jax.Array | None    # [(H + 2 KV) * hd]
  gate_up_kernel: jax.Array | None  # [D, 2 M]


class DecodeWeights(NamedTuple):
  layers: tuple[LayerWeights, ...]
  head: jax.Array | None  # [D, V] output matrix to use instead of the model's (the CPU copy of a tied one)


def supports(model) -> bool:
  """True when `model` has the QwenVL text decoder this fast path is written for."""
  return isinstance(getattr(model, "language_model", None), TextDecoder)


def _fused_bytes(text: TextDecoder) -> int:
  cfg = text.cfg
  per_layer = cfg.hidden_size * ((cfg.num_heads + 2 * cfg.num_kv_heads) * cfg.head_dim + 2 * cfg.intermediate_size)
  return per_layer * cfg.num_layers * jnp.dtype(text.dtype).itemsize


def prepare(text: TextDecoder, head: jax.Array | None = None) -> DecodeWeights:
  """Loop-invariant decode weights (call inside the jitted function, before the loop)."""
  if _fused_bytes(text) > FUSE_MAX_BYTES or not jax.sharding.get_abstract_mesh().empty:
    # (a sharded model keeps its per-projection shardings)
    return DecodeWeights(tuple(LayerWeights(None, None, None) for _ in text.layers), head)
  dtype = text.dtype
  flat = lambda dense: dense.kernel[...].astype(dtype).reshape(dense.kernel.shape[0], -1)
  layers = []
  for layer in text.layers:
    attn, mlp = layer.self_attn, layer.mlp
    projections = (attn.q_proj, attn.k_proj, attn.v_proj)
    qkv = jnp.concatenate([flat(p) for p in projections], axis=1)
    bias = jnp.concatenate([p.bias[...].astype(dtype).reshape(-1) for p in projections])
    gate_up = jnp.concatenate([flat(mlp.gate_proj), flat(mlp.up_proj)], axis=1)
    layers.append(LayerWeights(qkv, bias, gate_up))
  return DecodeWeights(tuple(layers), head)


def to_decode_cache(cache: dict) -> dict:
  """The model's prefilled cache (k, v [B, T, KV, hd]) in the decode layout (K [B, KV, hd, T], V [B, KV, T, hd])."""
  k = tuple(shard(jnp.transpose(k, (0, 2, 3, 1)), K_AXES) for k in cache["k"])
  v = tuple(shard(jnp.transpose(v, (0, 2, 1, 3)), V_AXES) for v in cache["v"])
  return dict(cache, k=k, v=v)


def _rotary(text: TextDecoder, positions: jax.Array) -> tuple[jax.Array, jax.Array]:
  """cos/sin [B, hd] of one position per row (M-RoPE with equal t/h/w positions is plain RoPE)."""
  inv_freq = jnp.asarray(inverse_frequencies(text.cfg.head_dim, text.cfg.rope_theta))
  angles = positions.astype(jnp.float32)[:, None] * inv_freq
  angles = jnp.concatenate([angles, angles], axis=-1)
  return jnp.cos(angles), jnp.sin(angles)


def _project_qkv(layer, weights: LayerWeights, h: jax.Array, cfg):
  """q [B, KV, G, hd], k [B, KV, hd], v [B, KV, hd] of normed hidden states h [B, D] (before rotary)."""
  batch = h.shape[0]
  kv, hd, groups = cfg.num_kv_heads, cfg.head_dim, cfg.num_heads // cfg.num_kv_heads
  attn = layer.self_attn
  if weights.qkv_kernel is None:
    q, k, v = attn.q_proj(h), attn.k_proj(h), attn.v_proj(h)
  else:
    qkv = jnp.dot(h.astype(weights.qkv_kernel.dtype), weights.qkv_kernel) + weights.qkv_bias
    q, k, v = jnp.split(qkv, [cfg.num_heads * hd, (cfg.num_heads + kv) * hd], axis=-1)
  return q.reshape(batch, kv, groups, hd), k.reshape(batch, kv, hd), v.reshape(batch, kv, hd)


def _mlp(layer, weights: LayerWeights, h: jax.Array) -> jax.Array:
  mlp = layer.mlp
  if weights.gate_up_kernel is None:
    gate, up = mlp.gate_proj(h), mlp.up_proj(h)
  else:
    gate, up = jnp.split(jnp.dot(h.astype(weights.gate_up_kernel.dtype), weights.gate_up_kernel), 2, axis=-1)
  return mlp.down_proj(shard(jax.nn.silu(gate) * up, ("batch", "act_mlp")))


def _attend(q, k_cache, v_cache, valid, dtype):
  """Softmax attention of one query per row over the cache (masked_attention's math for Lq = 1)."""
  scores = jnp.einsum("bkgd,bkdt->bkgt", q, k_cache.astype(q.dtype), preferred_element_type=jnp.float32)
  scores = scores * (q.shape[-1] ** -0.5)
  scores = jnp.where(valid[:, None, None, :], scores, jnp.finfo(jnp.float32).min)
  probs = jax.nn.softmax(scores, axis=-1).astype(dtype)
  return jnp.einsum("bkgt,bktd->bkgd", probs, v_cache.astype(dtype))


def step(model, weights: DecodeWeights, tokens: jax.Array, cache: dict) -> tuple[jax.Array, dict]:
  """Logits float32 [B, V] of the token after `tokens` [B], and the cache (decode layout) with it written.

  Same contract as `QwenVL.decode_step(tokens, None, cache)`: writes slot cache["index"] at position
  cache["next_pos"], then advances both.
  """
  text: TextDecoder = model.language_model
  cfg = text.cfg
  index, positions = cache["index"], cache["next_pos"]
  batch = tokens.shape[0]
  valid = jax.lax.dynamic_update_slice(cache["valid"], jnp.ones((batch, 1), bool), (0, index))
  cos, sin = _rotary(text, positions)
  new_k, new_v = [], []
  with rules_context(model.config.sharding_rules):
    x = shard(text.embed_tokens(tokens), ("batch", "act_embed"))
    for layer, lw, k_cache, v_cache in zip(text.layers, weights.layers, cache["k"], cache["v"]):
      q, k, v = _project_qkv(layer, lw, layer.input_layernorm(x), cfg)
      q, k = apply_rotary(q, cos[:, None], sin[:, None]), apply_rotary(k, cos, sin)
      k_cache = shard(jax.lax.dynamic_update_slice(k_cache, k[..., None].astype(k_cache.dtype), (0, 0, 0, index)),
                      K_AXES)
      v_cache = shard(jax.lax.dynamic_update_slice(v_cache, v[:, :, None].astype(v_cache.dtype), (0, 0, index, 0)),
                      V_AXES)
      out = _attend(q, k_cache, v_cache, valid, q.dtype)
      x = x + layer.self_attn.o_proj(out.reshape(batch, cfg.num_heads, cfg.head_dim))
      x = x + _mlp(layer, lw, layer.post_attention_layernorm(x))
      x = shard(x, ("batch", "act_embed"))
      new_k.append(k_cache)
      new_v.append(v_cache)
    hidden = text.norm(x)
    if weights.head is None:
      logits = text.logits(hidden)
    else:
      logits = jnp.dot(hidden.astype(text.dtype), weights.head.astype(text.dtype),
                       preferred_element_type=jnp.float32)
  cache = dict(cache, k=tuple(new_k), v=tuple(new_v), valid=valid, index=index + 1, next_pos=positions + 1)
  return logits, cache
