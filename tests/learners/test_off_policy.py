"""One-step off-policy GRPO (rollout.off_policy): rollout k+1 is sampled by the policy before update k, while that
update runs (on devices of the rollout's own with rollout.devices); the ratio is taken against the sampler's
log-probs; a resumed run goes on exactly."""
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from geojax import config as gconfig
from geojax import experiment, train
from geojax.config_schema import validate
from geojax.learners import GRPOLearner
from tests.train.helpers import losses, tiny_config

# 4 of the suite's 8 CPU devices train, the other 4 sample (tensor-parallel over 2, rows over 2)
APART = {"rollout.off_policy": True, "rollout.layout": "decode", "rollout.devices": 4, "rollout.mesh.tensor": 2}


def build(config):
  mesh = experiment.setup_runtime(config)
  tokenizer = experiment.load_tokenizer_for(config)
  with jax.set_mesh(mesh):
    model = experiment.build_model(config, tokenizer, mesh)
    learner = GRPOLearner.from_config(config, model, tokenizer, mesh, experiment.load_records(config, "train"))
  return learner, mesh


def test_next_rollout_is_sampled_by_the_policy_before_the_update(tmp_path, builtin_dir):
  # so that update 1 moves the policy visibly, even when every completion of rollout 1 earns the same reward (zero
  # advantages, zero gradient: which happens depends on the processor's rounding): the decay moves every weight
  fast = {"grpo.lr": 1e-2, "grpo.warmup_steps": 0, "grpo.weight_decay": 0.1}
  learner, mesh = build(tiny_config(str(tmp_path / "apart"), builtin_dir, **APART, **fast))
  assert mesh.devices.size == 4 and set(mesh.devices.flat).isdisjoint(learner.rollout.sampler.layout.mesh.devices.flat)
  on, _ = build(tiny_config(str(tmp_path / "on"), builtin_dir, **fast))
  with jax.set_mesh(mesh):
    before = jax.tree.map(jnp.copy, learner.state["params"])
    first = learner.train_step()
    pending = learner._pending
    # rollout 2 (step index 1): the parameters before update 1, step 1's key, the loader's next batch
    again = learner.rollout.sampler(before, pending.batch, jax.random.fold_in(learner.rollout.key, 1))
    np.testing.assert_array_equal(np.asarray(pending.tokens), np.asarray(again.tokens))
    np.testing.assert_array_equal(np.asarray(pending.lengths), np.asarray(again.lengths))
    second = learner.train_step()
    learner.close()
  with jax.set_mesh(on.mesh):
    on_first = on.train_step()
    on.close()
  # Step 1 samples on-policy: its loss is the on-policy learner's (the ratio against the sampler's log-probs is 1 up
  # to the sampler/trainer rounding), and the same completions (same key, same weights) earn the same rewards.
  assert first["reward"] == on_first["reward"]
  np.testing.assert_allclose(first["loss"], on_first["loss"], rtol=1e-4, atol=1e-6)
  # Step 2 updates the policy after update 1 on completions of the policy before it: the ratio moves off 1.
  assert abs(first["ratio_max"] - 1) < 1e-4 and second["ratio_max"] - 1 > 10 * abs(first["ratio_max"] - 1)


def test_off_policy_resume_is_exact(tmp_path, builtin_dir):
  """Killed after step 2, the run resumes with the rollout it had sampled ahead (saved with the checkpoint) and the
  loader before that rollout's batch: steps 3-4 are the uninterrupted run's."""
  extra = dict(APART, stages=("grpo",), **{"grpo.steps": 4})
  full = str(tmp_path / "full")
  train.train(tiny_config(full, builtin_dir, **extra))
  resumed = str(tmp_path / "resumed")
  shutil.copytree(full, resumed)
  ckpt = os.path.join(resumed, "grpo", "checkpoints")
  for name in os.listdir(ckpt):
    if name.isdigit() and int(name) > 2:
      shutil.rmtree(os.path.join(ckpt, name))
  assert os.path.isdir(os.path.join(ckpt, "2", "pending"))
  os.remove(os.path.join(resumed, "grpo", "metrics.jsonl"))
  train.train(tiny_config(resumed, builtin_dir, **extra))
  assert sorted(losses(resumed, "grpo")) == [3, 4]
  for key in ("loss", "reward", "response_len", "kl", "ratio_max"):
    for step in (3, 4):
      assert losses(resumed, "grpo", key)[step] == losses(full, "grpo", key)[step], (key, step)


@pytest.mark.parametrize("extra, match", [
    ({"rollout.devices": 2}, r"'rollout.devices' is 2: rollouts on devices of their own need rollout.layout"),
    ({"rollout.off_policy": True, "grpo.tis_cap": 2.0}, r"'grpo.tis_cap' is 2.0: with rollout.off_policy"),
    ({"rollout.off_policy": True, "grpo.dynamic_sampling": True}, r"'grpo.dynamic_sampling' is True"),
])
def test_settings_off_policy_cannot_honour_are_refused(tmp_path, builtin_dir, extra, match):
  with pytest.raises(gconfig.ConfigError, match=match):
    validate(tiny_config(str(tmp_path), builtin_dir, **extra))


def test_rollout_devices_must_leave_training_some(tmp_path, builtin_dir):
  config = tiny_config(str(tmp_path), builtin_dir, **dict(APART, **{"rollout.devices": 8}))
  with pytest.raises(gconfig.ConfigError, match=r"'rollout.devices' is 8: 8 rollout devices leave none"):
    experiment.setup_runtime(config)
