"""Small building blocks shared by the text decoder and the vision tower: dense, embedding, norms, rotary."""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

Shape = Sequence[int]


def param(rngs: nnx.Rngs | None, shape: Shape, axes: Sequence[str | None], init: str, dtype) -> nnx.Param:
  """A Param with logical axis names; init is "normal" (std 0.02), "zeros" or "ones"."""
  shape = tuple(shape)
  if init == "normal":
    value = 0.02 * jax.random.normal(rngs.params(), shape, dtype)
  elif init == "zeros":
    value = jnp.zeros(shape, dtype)
  else:
    value = jnp.ones(shape, dtype)
  return nnx.Param(value, logical_axes=tuple(axes))


class Dense(nnx.Module):
  """y = x . W (+ b) contracting the last `len(in_shape)` dims of x; kernel [*in_shape, *out_shape]."""

  def __init__(self, in_shape: Shape, out_shape: Shape, axes: Sequence[str | None], *, bias: bool,
               dtype, param_dtype, rngs: nnx.Rngs):
    self.in_shape, self.out_shape = tuple(in_shape), tuple(out_shape)
    self.dtype = dtype
    self.kernel = param(rngs, self.in_shape + self.out_shape, axes, "normal", param_dtype)
    self.bias = param(rngs, self.out_shape, axes[len(self.in_shape):], "zeros", param_dtype) if bias else None

    self.lora = nnx.data(None)  # a low-rank adapter, under LoRA (geojax.models.lora)

  def __call__(self, x: jax.Array) -> jax.Array:
    n_in = len(self.in_shape)
    dims = ((tuple(range(x.ndim - n_in, x.ndim)), tuple(range(n_in))), ((), ()))
    if isinstance(self.kernel, nnx.Variable):
      y = jax.lax.dot_general(x.astype(self.dtype), self.kernel[...].astype(self.dtype), dims)
    else:  # QLoRA's frozen quantized kernel (geojax.models.lora.QuantizedKernel)
      y = self.kernel.dot_general(x.astype(self.dtype), dims).astype(self.dtype)
    if self.bias is not None:
      y = y + self.bias[...].astype(self.dtype)
    if self.lora is not None:
      y = y + self.lora(x)
    return y


class Embed(nnx.Module):
  def __init__(self, vocab: int, dim: int, *, dtype, param_dtype, rngs: nnx.Rngs):
    self.dtype = dtype
    self.embedding = param(rngs, (vocab, dim), ("vocab", "embed"), "normal", param_dtype)

  def __call__(self, ids: jax.Array) -> jax.Array:
    return jnp.take(self.embedding[...], ids, axis=0).astype(self.dtype)

  def attend(self, x: jax.Array) -> jax.Array:
    """Logits with the (tied) embedding matrix, accumulated in float32."""
    return jnp.einsum("...d,vd->...v", x.astype(self.dtype), self.embedding[...].astype(self.dtype),
                      preferred_element_type=jnp.float32)


class RMSNorm(nnx.Module):
  """weight * x / rms(x), normalised in float32 like transformers' Qwen2RMSNorm."""

  def __init__(self, dim: int, eps: float, *, dtype, param_dtype, axis_name: str = "norm"):
    self.eps, self.dtype = eps, dtype
    self.weight = param(None, (dim,), (axis_name,), "ones", param_dtype)

  def __call__(self, x: jax.Array) -> jax.Array:
    x32 = x.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    return self.weight[...].astype(self.dtype) * normed.astype(self.dtype)


class LayerNorm(nnx.Module):
  """Standard LayerNorm with weight and bias (Qwen2-VL vision tower), computed in float32."""

  def __init__(self, dim: int, eps: float, *, dtype, param_dtype, axis_name: str = "norm"):
    self.eps, self.dtype = eps, dtype
    self.weight = param(None, (dim,), (axis_name,), "ones", param_dtype)
    self.bias = param(None, (dim,), (axis_name,), "zeros", param_dtype)

  def __call__(self, x: jax.Array) -> jax.Array:
    x32 = x.astype(jnp.float32)
    mean = jnp.mean(x32, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
    y = (x32 - mean) * jax.lax.rsqrt(var + self.eps)
    return (y * self.weight[...].astype(jnp.float32) + self.bias[...].astype(jnp.float32)).astype(self.dtype)


ACTIVATIONS = {
    "silu": jax.nn.silu,
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
}


def rotate_half(x: jax.Array) -> jax.Array:
  half = x.shape[-1] // 2
  return jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)


def apply_rotary(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
  """Rotate x [..., heads, head_dim] by cos/sin [..., head_dim] (broadcast over heads), in float32."""
  x32 = x.astype(jnp.float32)
  out = x32 * cos[..., None, :] + rotate_half(x32) * sin[..., None, :]
  return out.astype(x.dtype)


def inverse_frequencies(dim: int, theta: float) -> np.ndarray:
  """1 / theta^(2i/dim) for i < dim/2, in float32 as transformers computes it."""
  exponent = np.arange(0, dim, 2, dtype=np.float32) / np.float32(dim)
  return (np.float32(1.0) / (np.float32(theta) ** exponent)).astype(np.float32)


def masked_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array) -> jax.Array:
  """Softmax attention with grouped KV heads.

  q [..., Lq, H, D], k/v [..., Lk, KV, D], mask broadcastable to [..., Lq, Lk] (True = attend).
  Scores and softmax in float32; returns [..., Lq, H, D] in q's dtype.
  """
  *lead, lq, heads, dim = q.shape
  kv_heads = k.shape[-2]
  groups = heads // kv_heads
  q = q.reshape(*lead, lq, kv_heads, groups, dim)
  scores = jnp.einsum("...qkgd,...skd->...kgqs", q, k, preferred_element_type=jnp.float32) * (dim ** -0.5)
  mask = mask[..., None, None, :, :]
  scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
  probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
  out = jnp.einsum("...kgqs,...skd->...qkgd", probs, v)
  return out.reshape(*lead, lq, heads, dim)


def one_query_attention(q: jax.Array, k: jax.Array, v: jax.Array, valid: jax.Array) -> jax.Array:
  """`masked_attention` for one query per row over a decode-layout cache: q [B, KV, G, D], k [B, KV, D, T],
  v [B, KV, T, D], valid [B, T]. Returns [B, KV, G, D] in q's dtype.

  Keys are stored with T last so the query-key dot reads T contiguously and neither dot transposes the cache
  (XLA:CPU ran the [B, T, KV, D] batched dot ~3x slower)."""
  scores = jnp.einsum("bkgd,bkdt->bkgt", q, k.astype(q.dtype), preferred_element_type=jnp.float32)
  scores = scores * (q.shape[-1] ** -0.5)
  scores = jnp.where(valid[:, None, None, :], scores, jnp.finfo(jnp.float32).min)
  probs = jax.nn.softmax(scores, axis=-1).astype(q.dtype)
  return jnp.einsum("bkgt,bktd->bkgd", probs, v.astype(q.dtype))
