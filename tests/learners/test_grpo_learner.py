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


def test_grpo_learner_steps_on_text_prompts(tmp_path, builtin_dir):
  """Prompts without images (no pixel_values, an empty image grid) go through the rollout, the reference and the
  update: the path scripts/bench_tunix.py measures against Tunix."""
  import itertools
  from geojax.learners import as_reward, policy_sampler
  config = tiny_config(str(tmp_path), builtin_dir)
  mesh = experiment.setup_runtime(config)
  tokenizer = experiment.load_tokenizer_for(config)
  ids = np.asarray([tokenizer.encode("Where was this photo taken?")] * 2, np.int32)
  b, n = ids.shape
  batch = {"input_ids": ids, "attention_mask": np.ones((b, n), np.int32),
           "position_ids": np.broadcast_to(np.arange(n, dtype=np.int32), (3, b, n)).copy(), "pixel_values": None,
           "image_grid_thw": np.zeros((0, 3), np.int32), "example_mask": np.ones((b,), np.int32),
           "lat": np.zeros((b,), np.float32), "lon": np.zeros((b,), np.float32)}
  g = config.grpo.group_size
  with jax.set_mesh(mesh):
    model = experiment.build_model(config, tokenizer, mesh)
    source = RolloutSource(itertools.repeat(batch), policy_sampler(model, config.grpo, tokenizer),
                           as_reward(lambda texts, batch, group: [len(t) / 10 for t in texts]), tokenizer, g,
                           jax.random.key(0), mesh)
    learner = GRPOLearner(config, model, mesh, source)
    m = learner.train_step()
    learner.close()
  assert learner.step == 1 and np.isfinite(m["loss"]) and np.isfinite(m["kl"])
