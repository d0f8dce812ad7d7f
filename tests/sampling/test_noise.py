"""The sampler's Gumbel noise equals jax.random.gumbel's bit for bit (geojax.sampling.noise's unrolled Threefry)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from geojax.sampling import noise
from geojax.sampling.noise import gumbel

KEYS = {"key 0": jax.random.key(0), "key 123456789": jax.random.key(123456789),
        "fold_in": jax.random.fold_in(jax.random.key(7), 5), "split": jax.random.split(jax.random.key(3))[1]}


@pytest.mark.parametrize("shape", [(8, 151936), (3, 5), (1, 2048), (2, 3, 4), (7,)])
@pytest.mark.parametrize("name", list(KEYS))
def test_gumbel_equals_jax_random_gumbel(name, shape):
  key = KEYS[name]
  assert noise._own_path(key, shape)  # not JAX's own draw behind it
  want = jax.jit(lambda k: jax.random.gumbel(k, shape, jnp.float32))(key)
  np.testing.assert_array_equal(jax.jit(lambda k: gumbel(k, shape))(key), want)


def test_gumbel_under_vmap_over_step_keys_equals_each_draw():
  # the sampler's noise drawn ahead: one key per step, fold_in(rng, t)
  rng = jax.random.key(11)
  keys = jax.vmap(lambda t: jax.random.fold_in(rng, t))(jnp.arange(6))
  ahead = jax.jit(jax.vmap(lambda k: gumbel(k, (4, 300))))(keys)
  for t in range(6):
    np.testing.assert_array_equal(ahead[t], jax.random.gumbel(jax.random.fold_in(rng, t), (4, 300), jnp.float32))


def test_other_prng_keys_take_jax_path():
  key = jax.random.key(0, impl="rbg")
  np.testing.assert_array_equal(gumbel(key, (2, 9)), jax.random.gumbel(key, (2, 9), jnp.float32))
