"""GRPO with dynamic sampling (DAPO): which groups are kept, and a resumed run equal to an uninterrupted one."""
import os
import shutil

import numpy as np

from geojax import learners, train
from tests.train.helpers import losses, tiny_config

GROUP = 4


def _rollout(example_ids, group_rewards, grid=(1, 4, 4), example_mask=None):
  """A Rollout of len(example_ids) prompts whose tokens and fields carry the example id, so rows can be traced."""
  ids = np.asarray(example_ids)
  b, patches = len(ids), int(np.prod(grid))
  batch = {
      "input_ids": np.repeat(ids[:, None], 6, axis=1).astype(np.int32),
      "attention_mask": np.ones((b, 6), np.int32),
      "position_ids": np.broadcast_to(ids[None, :, None], (3, b, 6)).astype(np.int32),
      "pixel_values": np.repeat(ids, patches)[:, None].astype(np.float32) * np.ones((1, 8), np.float32),
      "image_grid_thw": np.tile(np.asarray(grid, np.int32), (b, 1)),
      "example_mask": np.ones(b, np.float32) if example_mask is None else np.asarray(example_mask, np.float32),
      "lat": ids.astype(np.float32),
      "city": np.array([f"c{i}" for i in ids], dtype=object),
  }
  rewards = np.concatenate([np.asarray(r, np.float32) for r in group_rewards])
  tokens = np.repeat(ids, GROUP)[:, None] * np.ones((1, 3), np.int32)
  texts = [f"t{i}" for i in np.repeat(ids, GROUP)]
  logprobs = -tokens.astype(np.float32) / 100  # the sampler's log-probs, traced by example id too
  return learners.Rollout(batch, tokens, np.full(b * GROUP, 3, np.int32), texts, rewards, {"exp_distance": rewards},
                          logprobs)


FLAT, VARIED = [0.5] * GROUP, [0.1, 0.9, 0.5, 0.5]


def test_keeps_informative_groups_in_order_and_aligns_every_field():
  rollouts = [_rollout([10, 11], [FLAT, VARIED]), _rollout([20, 21], [VARIED, FLAT])]
  assert learners.informative_count(rollouts, GROUP) == 2
  merged, info = learners.select_informative(rollouts, GROUP, 2)
  np.testing.assert_array_equal(merged.batch["lat"], [11, 20])
  np.testing.assert_array_equal(merged.tokens[:, 0], [11] * GROUP + [20] * GROUP)
  np.testing.assert_array_equal(merged.logprobs, -merged.tokens.astype(np.float32) / 100)
  np.testing.assert_array_equal(merged.batch["pixel_values"][:, 0], [11] * 16 + [20] * 16)
  np.testing.assert_array_equal(merged.batch["position_ids"][:, :, 0], [[11, 20]] * 3)
  assert merged.texts == ["t11"] * GROUP + ["t20"] * GROUP
  np.testing.assert_array_equal(merged.rewards, np.float32(VARIED * 2))
  np.testing.assert_array_equal(merged.per_reward["exp_distance"], merged.rewards)
  assert info == {"dynamic_sampling/rollouts": 2.0, "dynamic_sampling/informative_frac": 0.5,
                  "dynamic_sampling/filled_frac": 0.0}


def test_shortfall_is_filled_and_filler_examples_never_count():
  # Example 31 varies but is a filler row of its batch (example_mask 0): it must not be picked as informative.
  rollouts = [_rollout([30, 31], [FLAT, VARIED], example_mask=[1, 0]), _rollout([40, 41], [VARIED, FLAT])]
  assert learners.informative_count(rollouts, GROUP) == 1
  merged, info = learners.select_informative(rollouts, GROUP, 2)
  np.testing.assert_array_equal(merged.batch["lat"], [40, 30])  # the informative group first, then a filler group
  assert info["dynamic_sampling/filled_frac"] == 0.5


def test_only_batches_of_one_shape_are_joined():
  rollouts = [_rollout([50, 51], [VARIED, FLAT]), _rollout([60, 61], [VARIED, VARIED], grid=(1, 2, 8))]
  assert learners.informative_count(rollouts, GROUP) == 2
  merged, _ = learners.select_informative(rollouts, GROUP, 2)
  np.testing.assert_array_equal(merged.batch["lat"], [60, 61])
  np.testing.assert_array_equal(merged.batch["image_grid_thw"], [[1, 2, 8]] * 2)


def test_dynamic_sampling_run_resumes_exactly(tmp_path, builtin_dir):
  """A step may read several batches; the checkpointed data position must come after all of them."""
  extra = dict(stages=("grpo",), **{"grpo.dynamic_sampling": True, "grpo.max_rollouts": 3})
  full = str(tmp_path / "full")
  train.train(tiny_config(full, builtin_dir, **extra))
  assert sorted(losses(full, "grpo")) == [1, 2, 3]
  rollouts = losses(full, "grpo", "dynamic_sampling/rollouts")
  assert all(1 <= r <= 3 for r in rollouts.values())
  resumed = str(tmp_path / "resumed")
  shutil.copytree(full, resumed)
  for name in os.listdir(os.path.join(resumed, "grpo", "checkpoints")):
    if name.isdigit() and int(name) > 1:
      shutil.rmtree(os.path.join(resumed, "grpo", "checkpoints", name))
  os.remove(os.path.join(resumed, "grpo", "metrics.jsonl"))
  train.train(tiny_config(resumed, builtin_dir, **extra))
  for key in ("loss", "reward", "dynamic_sampling/rollouts"):
    again, before = losses(resumed, "grpo", key), losses(full, "grpo", key)
    assert sorted(again) == [2, 3]
    for step in (2, 3):
      np.testing.assert_allclose(again[step], before[step], rtol=1e-5, atol=1e-7, err_msg=f"{key} step {step}")
