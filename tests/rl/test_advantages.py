"""Advantage estimators vs float64 NumPy loops and torch (the code path of Geo-R's and GLOBE's TRL)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from geojax.rl import ADVANTAGE_ESTIMATORS, group_advantages


def reference_advantages(rewards, group_size, kind, weights=None, eps=1e-4):
  """One group at a time, one element at a time, float64."""
  rewards = np.asarray(rewards, np.float64)
  out = np.zeros(rewards.shape[0])
  for start in range(0, rewards.shape[0], group_size):
    group = rewards[start:start + group_size]
    for i in range(group_size):
      if kind == "grpo":
        mean = sum(group) / group_size
        std = (sum((g - mean) ** 2 for g in group) / (group_size - 1)) ** 0.5
        out[start + i] = (group[i] - mean) / (std + eps)
      elif kind == "drgrpo":
        out[start + i] = group[i] - sum(group) / group_size
      elif kind == "rloo":
        others = [group[j] for j in range(group_size) if j != i]
        out[start + i] = group[i] - sum(others) / len(others)
      elif kind == "multi":
        total = 0.0
        for r, w in enumerate(weights):
          column = group[:, r]
          mean = column.mean()
          std = np.sqrt(((column - mean) ** 2).sum() / (group_size - 1))
          total += w * (column[i] - mean) / (std + eps)
        out[start + i] = total
  return out


def test_registry_names():
  assert {"grpo", "drgrpo", "rloo", "multi"} <= set(ADVANTAGE_ESTIMATORS)


@pytest.mark.parametrize("kind", ["grpo", "drgrpo", "rloo"])
@pytest.mark.parametrize("group_size", [2, 4, 16])
def test_matches_float64_reference(kind, group_size):
  rng = np.random.default_rng(group_size)
  rewards = rng.uniform(0, 2, size=6 * group_size)
  rewards[:group_size] = 0.7  # one group with zero variance
  expected = reference_advantages(rewards, group_size, kind)
  with jax.enable_x64(True):
    got64 = np.asarray(group_advantages(jnp.asarray(rewards), group_size, kind))
  got32 = np.asarray(group_advantages(rewards.astype(np.float32), group_size, kind))
  assert got32.dtype == np.float32
  # the loop reference itself rounds: equal rewards give it ~1e-16 / 1e-4, ours exactly 0
  np.testing.assert_allclose(got64, expected, rtol=1e-12, atol=1e-10)
  np.testing.assert_allclose(got32, expected, rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(got32[:group_size], 0.0)


def test_grpo_matches_torch_std_formula():
  """TRL: (r - mean) / (std + 1e-4) with torch.std's default unbiased estimate."""
  rewards = torch.tensor([[1.0, 0.25, 0.0, 0.5], [0.3, 0.3, 0.9, 0.1]], dtype=torch.float64)
  expected = (rewards - rewards.mean(1, keepdim=True)) / (rewards.std(1, keepdim=True) + 1e-4)
  with jax.enable_x64(True):
    got = group_advantages(jnp.asarray(rewards.numpy().reshape(-1)), 4, "grpo")
  np.testing.assert_allclose(np.asarray(got), expected.numpy().reshape(-1), rtol=1e-12)


def test_hand_computed():
  rewards = np.array([1.0, 0.0, 0.0, 1.0, 3.0, 1.0], np.float32)
  # group 1: mean .5, unbiased std sqrt(1/3); group 2 (G=2): mean 2, std sqrt(2)
  np.testing.assert_allclose(group_advantages(rewards[:4], 4, "grpo"),
                             np.array([1, -1, -1, 1]) * 0.5 / (3 ** -0.5 + 1e-4), rtol=1e-6)
  np.testing.assert_allclose(group_advantages(rewards[4:], 2, "drgrpo"), [1.0, -1.0])
  np.testing.assert_allclose(group_advantages(rewards[4:], 2, "rloo"), [2.0, -2.0])
  np.testing.assert_allclose(group_advantages(rewards[:4], 4, "rloo"), [2 / 3, -2 / 3, -2 / 3, 2 / 3], rtol=1e-6)


@pytest.mark.parametrize("weights", [None, [1.0, 0.5, 0.2]])
def test_multi_reward_matches_reference(weights):
  rng = np.random.default_rng(3)
  rewards = np.stack([rng.uniform(0, 1, 32), rng.integers(0, 2, 32), rng.uniform(0, 3000, 32)], axis=1)
  rewards[4:8, 1] = 1.0  # one reward constant within a group
  expected = reference_advantages(rewards, 4, "multi", weights=weights or [1.0, 1.0, 1.0])
  with jax.enable_x64(True):
    got64 = np.asarray(group_advantages(jnp.asarray(rewards), 4, "multi", weights=weights))
  got32 = np.asarray(group_advantages(rewards.astype(np.float32), 4, "multi", weights=weights))
  np.testing.assert_allclose(got64, expected, rtol=1e-12, atol=1e-12)
  np.testing.assert_allclose(got32, expected, rtol=1e-4, atol=1e-4)


def test_multi_reward_scale_invariant_per_column():
  """Normalizing each reward in its group makes the result independent of a reward's units (up to eps)."""
  rng = np.random.default_rng(4)
  rewards = rng.uniform(0, 1, (16, 2))
  scaled = rewards * np.array([1.0, 1000.0])
  a = group_advantages(rewards, 4, "multi", eps=0.0)
  b = group_advantages(scaled, 4, "multi", eps=0.0)
  np.testing.assert_allclose(a, b, rtol=1e-4)


def test_jit_and_errors():
  fn = jax.jit(group_advantages, static_argnames=("group_size", "kind"))
  np.testing.assert_allclose(fn(jnp.arange(8.0), group_size=4, kind="drgrpo"), [-1.5, -.5, .5, 1.5] * 2)
  with pytest.raises(ValueError, match="unknown advantage kind"):
    group_advantages(jnp.zeros(4), 2, "ppo")
  with pytest.raises(ValueError, match="whole number of groups"):
    group_advantages(jnp.zeros(5), 2)
  with pytest.raises(ValueError, match=">= 2"):
    group_advantages(jnp.zeros(4), 1)
  with pytest.raises(ValueError, match=r"\[B, R\]"):
    group_advantages(jnp.zeros(4), 2, "multi")
  with pytest.raises(ValueError, match="no reward weights"):
    group_advantages(jnp.zeros(4), 2, "grpo", weights=[1.0])
  with pytest.raises(ValueError, match="reward weights for"):
    group_advantages(jnp.zeros((4, 2)), 2, "multi", weights=[1.0])
