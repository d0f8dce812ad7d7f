"""Dynamic sampling: which groups are informative, static-size selection, refilling from several rollouts."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from geojax.rl import InformativeGroupPool, group_rows, informative_groups, select_groups, take_rows

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


def test_group_rows_and_take_rows():
  rows = group_rows(np.array([1, 3]), 3)
  np.testing.assert_array_equal(rows, [3, 4, 5, 9, 10, 11])
  batch = {"input_ids": np.arange(15 * 2).reshape(15, 2), "position_ids": np.zeros((3, 15, 2)),
           "city": [f"c{i}" for i in range(15)]}
  taken = take_rows(batch, rows)
  np.testing.assert_array_equal(taken["input_ids"][:, 0], rows * 2)
  assert taken["position_ids"].shape == (3, 6, 2)
  assert taken["city"] == ["c3", "c4", "c5", "c9", "c10", "c11"]


def test_pool_refills_a_batch_over_rollouts():
  pool = InformativeGroupPool(group_size=3)
  batch = {"ids": np.arange(15), "position_ids": np.tile(np.arange(15)[None, :, None], (3, 1, 4)),
           "city": [str(i) for i in range(15)]}
  assert pool.add(REWARDS, batch) == 3
  assert len(pool) == 3
  second = {"ids": np.arange(100, 115), "position_ids": batch["position_ids"] + 100,
            "city": [str(i) for i in range(100, 115)]}
  assert pool.add(REWARDS[::-1].copy(), second) == 3  # groups 0, 1, 3 of the reversed rollout vary
  out = pool.take(4)  # three groups of the first rollout, then the first informative one of the second
  np.testing.assert_array_equal(out["ids"], [3, 4, 5, 9, 10, 11, 12, 13, 14, 100, 101, 102])
  assert out["city"] == [str(i) for i in out["ids"]]
  np.testing.assert_array_equal(out["position_ids"][0, :, 0], out["ids"])
  np.testing.assert_array_equal(out["rewards"], np.r_[REWARDS[3:6], REWARDS[9:15], REWARDS[::-1][:3]])
  assert len(pool) == 2 and pool.seen_groups == 10 and pool.kept_groups == 6
  out = pool.take(2)
  np.testing.assert_array_equal(out["ids"], [103, 104, 105, 109, 110, 111])
  assert len(pool) == 0
  with pytest.raises(ValueError, match="holds 0 groups"):
    pool.take(1)
