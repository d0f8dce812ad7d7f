"""A GRPO learner built and stepped through the public API, with a reward function written by the user."""
import jax
import numpy as np
from flax import nnx

from geojax import experiment
from geojax.learners import GRPOLearner, ReferencePolicy, RolloutSource
from tests.train.helpers import tiny_config


def test_grpo_learner_steps_with_a_custom_reward(tmp_path, builtin_dir):
  config = tiny_config(str(tmp_path), builtin_dir)
  mesh = experiment.setup_runtime(config)
  tokenizer = experiment.load_tokenizer_for(config)
  seen = []

  def digits(texts, batch, group):
    """Share of digit characters: random-init completions already earn some of it."""
    seen.append((len(texts), group, len(batch["lat"])))
    return np.array([sum(c.isdigit() for c in t) / max(len(t), 1) for t in texts])

  with jax.set_mesh(mesh):
    model = experiment.build_model(config, tokenizer, mesh)
    records = experiment.load_records(config, "train")
    learner = GRPOLearner.from_config(config, model, tokenizer, mesh, records, rewards=digits)
    assert isinstance(learner.rollout, RolloutSource) and isinstance(learner.reference, ReferencePolicy)
    before = jax.tree.map(np.asarray, nnx.state(model, nnx.Param))
    steps = [learner.train_step() for _ in range(2)]
    learner.close()
  b, g = config.grpo.batch_size, config.grpo.group_size
  assert seen == [(b * g, g, b)] * 2 and learner.step == 2
  for m in steps:
    assert m["reward_digits"] == m["reward"] and np.isfinite(m["loss"]) and "kl" in m
  after = jax.tree.map(np.asarray, nnx.state(learner.model(), nnx.Param))
  changed = [not np.array_equal(x, y) for x, y in zip(jax.tree.leaves(before), jax.tree.leaves(after))]
  assert any(changed)
  # The reference stays where GRPO started.
  for x, y in zip(jax.tree.leaves(before), jax.tree.leaves(learner.reference.params)):
    np.testing.assert_array_equal(x, np.asarray(y))
