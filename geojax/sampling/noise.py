"""Gumbel noise for sampling: jax.random.gumbel's values, drawn faster on CPU.

JAX lowers its Threefry hash on CPU as a rolled loop (five passes of four rounds, each pass over the whole array),
which made the noise of a [8, 151,936] draw 6.6 ms of a 23 ms decode step. `gumbel` computes the same hash unrolled
(one fused pass) from the same counters, so the values are equal bit for bit (tests/sampling/test_noise.py): 4.6 ms.
It takes JAX's own path for keys of another PRNG, with jax_threefry_partitionable off (other counters), for 2**32
elements or more, and off CPU, where JAX's lowering is already unrolled.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from geojax.models.platform import current_platform

_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))
_PARITY = np.uint32(0x1BD11BDA)  # Threefry's key-schedule constant


def gumbel(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  """float32 Gumbel noise of `shape` for a typed PRNG key: jax.random.gumbel(key, shape, float32)."""
  if not _own_path(key, shape):
    return jax.random.gumbel(key, shape, jnp.float32)
  k1, k2 = jax.random.key_data(key)
  bits1, bits2 = _threefry2x32(k1, k2, jnp.zeros(shape, jnp.uint32), _flat_index(shape))
  return _gumbel_from_bits(bits1 ^ bits2)


def _own_path(key, shape) -> bool:
  return (current_platform() == "cpu" and jax.config.jax_threefry_partitionable
          and str(jax.random.key_impl(key)) == "threefry2x32" and int(np.prod(shape)) < 2 ** 32)


def _flat_index(shape) -> jax.Array:
  """uint32 row-major index of every element (the low counter word; the high one is 0 below 2**32 elements)."""
  index, stride = jnp.zeros(shape, jnp.uint32), 1
  for axis in reversed(range(len(shape))):
    index = index + jax.lax.broadcasted_iota(jnp.uint32, shape, axis) * np.uint32(stride)
    stride *= shape[axis]
  return index


def _rotate_left(x, r: int):
  return (x << np.uint32(r)) | (x >> np.uint32(32 - r))


def _threefry2x32(k1, k2, x1, x2):
  """Threefry-2x32 (20 rounds), the hash jax.random's threefry2x32 keys apply to their counters."""
  keys = (k1, k2, k1 ^ k2 ^ _PARITY)
  x1, x2 = x1 + keys[0], x2 + keys[1]
  for i in range(5):
    for r in _ROTATIONS[i % 2]:
      x1 = x1 + x2
      x2 = _rotate_left(x2, r) ^ x1
    x1, x2 = x1 + keys[(i + 1) % 3], x2 + keys[(i + 2) % 3] + np.uint32(i + 1)
  return x1, x2


def _gumbel_from_bits(bits):
  """-log(-log(u)) with u uniform in [tiny, 1) from 23 mantissa bits, as jax.random.uniform / gumbel make it."""
  floats = jax.lax.bitcast_convert_type((bits >> np.uint32(9)) | np.uint32(0x3F800000), jnp.float32) - 1.0
  tiny = jnp.finfo(jnp.float32).tiny
  return -jnp.log(-jnp.log(jax.lax.max(tiny, floats * (1.0 - tiny) + tiny)))
