"""Dynamic sampling: which groups are informative, static-size selection (the trainer's use: tests/train)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from geojax.rl import group_rows, informative_groups, select_groups

# 5 groups of 3: constant, varied, constant, varied, varied
REWARDS = np.array([1, 1, 1, 0, 1, 0, 0.5, 0.5, 0.5, 0.2, 0.2, 0.3, 2, 0, 0], np.float32)


def test_informative_groups_numpy_and_jax():
  expected = [False, True, False, True, True]
  np.testing.assert_array_equal(informative_groups(REWARDS, 3), expected)
  got = jax.jit(informative_groups, static_argnums=1)(jnp.asarray(REWARDS), 3)
  assert isinstance(got, jax.Array)
  np.testing.assert_array_equal(got, expected)
  # several rewards: informative if any column varies
  matrix = np.stack([REWARDS, np.r_[np.zeros(12), 0, 0, 1]], axis=1)
  np.testing.assert_array_equal(informative_groups(matrix, 3), expected)
  matrix = np.stack([np.zeros(15), np.r_[0, 1, 0, np.zeros(12)]], axis=1)
  np.testing.assert_array_equal(informative_groups(matrix, 3), [True, False, False, False, False])


def test_tolerance():
  assert not informative_groups(np.array([0.3, 0.3 + 1e-8]), 2)[0]
  assert informative_groups(np.array([0.3, 0.3 + 1e-8]), 2, tol=0.0)[0]


@pytest.mark.parametrize("as_jax", [False, True])
def test_select_groups_informative_first_then_refill(as_jax):
  rewards = jnp.asarray(REWARDS) if as_jax else REWARDS
  index, informative = select_groups(rewards, 3, 2)
  np.testing.assert_array_equal(index, [1, 3])
  np.testing.assert_array_equal(informative, [True, True])
  index, informative = select_groups(rewards, 3, 4)  # only 3 informative: refilled with the first constant one
  np.testing.assert_array_equal(index, [1, 3, 4, 0])
  np.testing.assert_array_equal(informative, [True, True, True, False])
  with pytest.raises(ValueError, match="candidates"):
    select_groups(rewards, 3, 6)


def test_select_groups_jits():
  fn = jax.jit(select_groups, static_argnums=(1, 2))
  index, informative = fn(jnp.asarray(REWARDS), 3, 3)
  np.testing.assert_array_equal(index, [1, 3, 4])
  assert bool(informative.all())


def test_group_rows():
  np.testing.assert_array_equal(group_rows(np.array([1, 3]), 3), [3, 4, 5, 9, 10, 11])
  np.testing.assert_array_equal(group_rows(jnp.asarray([0]), 2), [0, 1])
