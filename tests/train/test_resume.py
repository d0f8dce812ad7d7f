"""Checkpoints: a resumed run reproduces the uninterrupted one exactly; a NaN stops the run with the last good
checkpoint intact; an interrupted save never becomes the latest checkpoint."""
import os
import shutil

import jax.numpy as jnp
import numpy as np
import pytest

from geojax import runtime, train
from tests.train.helpers import losses, tiny_config


def _truncate_checkpoints(workdir: str, stage: str, keep_through: int) -> None:
  """Leaves the stage's checkpoints up to `keep_through`, as if the run had been killed right after it."""
  ckpt = os.path.join(workdir, stage, "checkpoints")
  for name in os.listdir(ckpt):
    if name.isdigit() and int(name) > keep_through:
      shutil.rmtree(os.path.join(ckpt, name))


def test_resume_gives_the_same_losses_as_an_uninterrupted_run(tmp_path, builtin_dir):
  full = str(tmp_path / "full")
  train.train(tiny_config(full, builtin_dir))
  sft_full, grpo_full = losses(full, "sft"), losses(full, "grpo")
  assert sorted(sft_full) == [1, 2, 3, 4] and sorted(grpo_full) == [1, 2, 3]

  # "Kill" the run after GRPO step 1: its checkpoints 2, 3 are gone; the SFT stage is complete.
  resumed = str(tmp_path / "resumed")
  shutil.copytree(full, resumed)
  _truncate_checkpoints(resumed, "grpo", 1)
  os.remove(os.path.join(resumed, "grpo", "metrics.jsonl"))
  train.train(tiny_config(resumed, builtin_dir))
  grpo_resumed = losses(resumed, "grpo")
  assert sorted(grpo_resumed) == [2, 3]
  for step in (2, 3):
    np.testing.assert_allclose(grpo_resumed[step], grpo_full[step], rtol=1e-5, atol=1e-7)
  for key in ("reward", "response_len", "kl"):
    np.testing.assert_allclose(losses(resumed, "grpo", key)[3], losses(full, "grpo", key)[3], rtol=1e-5, atol=1e-7)

  # The same in the middle of SFT (its data iterator position and optimizer state come back too).
  mid_sft = str(tmp_path / "mid_sft")
  shutil.copytree(full, mid_sft)
  _truncate_checkpoints(mid_sft, "sft", 2)
  shutil.rmtree(os.path.join(mid_sft, "grpo"))
  os.remove(os.path.join(mid_sft, "sft", "metrics.jsonl"))
  train.train(tiny_config(mid_sft, builtin_dir, stages=("sft",)))
  sft_resumed = losses(mid_sft, "sft")
  assert sorted(sft_resumed) == [3, 4]
  for step in (3, 4):
    np.testing.assert_allclose(sft_resumed[step], sft_full[step], rtol=1e-5, atol=1e-7)


def test_nan_loss_stops_with_a_clear_error_and_the_last_good_checkpoint(tmp_path, builtin_dir, monkeypatch):
  from geojax.learners import sft
  real_update = sft.apply_update

  def poisoned(tx, state, grads, loss, metrics):  # the loss of step 3 (state step 2 -> 3) becomes NaN
    return real_update(tx, state, grads, jnp.where(state["step"] >= 2, jnp.nan, loss), metrics)

  monkeypatch.setattr(sft, "apply_update", poisoned)
  workdir = str(tmp_path / "run")
  config = tiny_config(workdir, builtin_dir, stages=("sft",))
  with pytest.raises(runtime.NonFiniteError, match=r"loss is nan at step 3"):
    train.train(config)
  monkeypatch.setattr(sft, "apply_update", real_update)
  checkpoints = runtime.Checkpointer(os.path.join(workdir, "sft", "checkpoints"))
  assert checkpoints.latest_step() == 2
  checkpoints.close()
  # ... and the run resumes from it once the cause is fixed.
  train.train(tiny_config(workdir, builtin_dir, stages=("sft",)))
  assert sorted(losses(workdir, "sft")) == [1, 2, 3, 4]


def test_interrupted_save_is_not_the_latest(tmp_path):
  directory = str(tmp_path / "ckpt")
  checkpoints = runtime.Checkpointer(directory)
  state = {"w": jnp.arange(4.0)}
  checkpoints.save(1, {"params": state}, data_state={"pos": 1})
  checkpoints.close()
  # What a kill in the middle of writing step 2 leaves behind: Orbax's temporary directory, never renamed.
  partial = os.path.join(directory, "2.orbax-checkpoint-tmp-1234")
  os.makedirs(os.path.join(partial, "params"))
  with open(os.path.join(partial, "params", "garbage"), "w") as f:
    f.write("half-written")
  checkpoints = runtime.Checkpointer(directory)
  assert checkpoints.latest_step() == 1
  restored, data_state, record = checkpoints.restore({"params": state})
  np.testing.assert_array_equal(restored["params"]["w"], np.arange(4.0))
  assert data_state == {"pos": 1} and record["step"] == 1
  checkpoints.close()
