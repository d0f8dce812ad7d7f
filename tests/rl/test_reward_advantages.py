"""reward_advantages: the total reward for single-reward kinds, each scored reward apart for "multi"."""
import numpy as np
import pytest

from geojax.rl import group_advantages, reward_advantages


def test_single_reward_kinds_use_the_total():
  rng = np.random.default_rng(0)
  total = rng.uniform(0, 1, 8).astype(np.float32)
  per_reward = {"a": rng.uniform(0, 1, 8).astype(np.float32)}
  np.testing.assert_array_equal(reward_advantages(total, per_reward, {"a": 1.0}, 4, "rloo"),
                                group_advantages(total, 4, "rloo"))


def test_multi_takes_the_columns_by_name_with_their_weights():
  rng = np.random.default_rng(1)
  dist, fmt = rng.uniform(0, 3000, 8), rng.integers(0, 2, 8).astype(np.float64)
  weights = {"fmt": 0.5, "dist": 2.0, "unscored": 1.0}  # a weighted reward that was not scored is not a column
  got = reward_advantages(dist + fmt, {"dist": dist, "fmt": fmt}, weights, 4, "multi")
  expected = group_advantages(np.stack([dist, fmt], 1), 4, "multi", weights=[2.0, 0.5])
  np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_multi_needs_a_weight_per_scored_reward():
  with pytest.raises(ValueError, match="missing"):
    reward_advantages(np.zeros(4), {"a": np.zeros(4), "b": np.zeros(4)}, {"a": 1.0}, 2, "multi")
