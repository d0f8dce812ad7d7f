"""The GRPO learner's update: the same whatever grad_accum is, several updates per rollout (old log-probs taken
before the first, so the clip binds), and the rollout/trainer mismatch logged and corrected."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from geojax import experiment
from geojax.config_schema import validate
from geojax.config import ConfigError
from geojax.learners import GRPOLearner
from tests.train.helpers import assert_same_first_adam_step, tiny_config


def scramble(texts, batch, group):
  """A reward that differs between a group's completions (different texts), so advantages are not zero."""
  return np.array([sum(map(ord, t)) % 7 / 7 for t in texts])


def build(config):
  mesh = experiment.setup_runtime(config)
  tokenizer = experiment.load_tokenizer_for(config)
  with jax.set_mesh(mesh):
    model = experiment.build_model(config, tokenizer, mesh)
    records = experiment.load_records(config, "train")
    learner = GRPOLearner.from_config(config, model, tokenizer, mesh, records, rewards=scramble)
  learner.state = jax.tree.map(jnp.copy, learner.state)  # updates donate it; learners built alike share buffers
  return learner, mesh


def update_inputs(learner):
  """The arguments of learner.update for one rollout of the learner's current policy."""
  sampled = learner.rollout.sample(learner.state["params"], learner.step)
  ref = learner.reference.logprobs(sampled)
  rollout = learner.rollout.score(sampled)
  advantages = np.where(rollout.example_rows(learner.group), learner.advantage(rollout, learner.group), 0.0)
  return (sampled.prompt, sampled.tokens, sampled.lengths, jnp.asarray(advantages, jnp.float32), ref,
          sampled.logprobs, *sampled.shape(learner.group))


@pytest.mark.parametrize("agg", ["token-mean", "sequence-mean-token-scale"])
def test_update_is_the_same_whatever_grad_accum(tmp_path, builtin_dir, agg):
  """Completions of unequal lengths in micro-batches of one prompt: the whole batch's loss and update."""
  learners = {n: build(tiny_config(str(tmp_path / str(n)), builtin_dir,
                                   **{"grpo.agg": agg, "grpo.grad_accum": n, "grpo.beta": 0.04}))
              for n in (1, 2)}
  (one, mesh), (two, _) = learners[1], learners[2]
  with jax.set_mesh(mesh):
    prompt, tokens, _, _, *rest = update_inputs(one)
    # random-init completions never stop early: give the rows unequal lengths (micro-batches of 16 and 26 tokens)
    lengths = jnp.asarray([8, 3, 5, 0, 8, 8, 2, 8], jnp.int32)
    advantages = jnp.asarray([1.0, -0.5, 0.3, 2.0, -1.0, 0.7, -0.2, -1.3])
    results = {n: learner.update(learner.state, prompt, tokens, lengths, advantages, *rest)
               for n, (learner, _) in learners.items()}
  states = {n: r[0] for n, r in results.items()}
  metrics = {n: r[1] for n, r in results.items()}
  assert float(metrics[2]["valid_tokens"]) == 42
  # Adam's first update is lr g / (|g| + eps), ~lr = 3.3e-5 per entry (first warmup step): compared to 0.15% of it
  assert_same_first_adam_step(states[1], states[2], atol=5e-8)
  for key in ("loss", "pg_loss", "kl", "grad_norm", "valid_tokens", "ratio_max", "mismatch/kl"):
    np.testing.assert_allclose(float(metrics[2][key]), float(metrics[1][key]), rtol=2e-5, atol=1e-9, err_msg=key)
  one.close(), two.close()


def test_several_updates_per_rollout_bind_the_clip(tmp_path, builtin_dir):
  """Two passes over two mini-batches: four optimizer updates on one rollout, one learner step. Old log-probs
  come from before the first update, so later updates see ratios != 1 and a tight clip binds."""
  config = tiny_config(str(tmp_path), builtin_dir, **{
      "grpo.updates_per_rollout": 2, "grpo.minibatches": 2, "grpo.eps_low": 1e-5, "grpo.eps_high": 1e-5,
      "grpo.lr": 1e-3, "grpo.warmup_steps": 0, "grpo.tis_cap": 2.0, "grpo.mis_threshold": 1.5,
      "grpo.mis_level": "sequence"})
  validate(config)
  learner, mesh = build(config)
  with jax.set_mesh(mesh):
    steps = [learner.train_step() for _ in range(2)]
  learner.close()
  assert learner.step == 2
  count = [int(x) for x in jax.tree.leaves(learner.state["opt_state"]) if getattr(x, "dtype", None) == jnp.int32]
  assert count and set(count) == {8}  # 2 steps x 2 passes x 2 mini-batches
  for m in steps:
    assert all(np.isfinite(v) for v in m.values()), m
    assert m["clip_frac"] > 0 and m["ratio_max"] > 1 + 1e-5
    assert 0 <= m["mismatch/mis_dropped_frac"] <= 1 and 0 <= m["mismatch/tis_capped_frac"] <= 1
    assert m["mismatch/ratio_min"] <= 1 <= m["mismatch/ratio_max"] and m["mismatch/kl"] >= 0


@pytest.mark.parametrize("override, message", [
    ({"grpo.loss": "ppo"}, "grpo.loss"),
    ({"grpo.agg": "sequence-mean-token-sum-norm"}, r"grpo\.agg.*now 'sequence-mean-token-scale'"),
    ({"grpo.minibatches": 3}, r"grpo\.minibatches"),
    ({"grpo.minibatches": 2, "grpo.grad_accum": 2, "grpo.batch_size": 2}, r"grpo\.minibatches"),
    ({"grpo.updates_per_rollout": 0}, r"grpo\.updates_per_rollout"),
    ({"grpo.tis_cap": 0.5}, r"grpo\.tis_cap"),
    ({"grpo.mis_threshold": 1.0}, r"grpo\.mis_threshold"),
    ({"grpo.mis_level": "group"}, r"grpo\.mis_level"),
    ({"grpo.adv_eps": -1.0}, r"grpo\.adv_eps"),
])
def test_bad_values_name_the_key(override, message):
  config = tiny_config("/tmp/unused", "/tmp/unused", **override)
  with pytest.raises(ConfigError, match=message):
    validate(config, reads_data=False)


def test_new_keys_default_to_plain_grpo():
  g = tiny_config("/tmp/unused", "/tmp/unused").grpo
  assert (g.loss, g.updates_per_rollout, g.minibatches, g.tis_cap, g.mis_threshold, g.adv_eps) == (
      "grpo", 1, 1, 0.0, 0.0, 1e-4)


def test_advantage_eps_is_a_config_value():
  """Near-equal rewards: TRL's 1e-4 (the default) and Tunix's 1e-6 give different advantages; GroupAdvantage uses
  the one it is given (the learner passes grpo.adv_eps)."""
  from geojax.learners import GroupAdvantage, Rollout
  from geojax.rl import group_advantages
  rewards = np.array([0.5, 0.5 + 1e-5, 0.5, 0.5 - 1e-5], np.float32)
  rollout = Rollout({}, None, None, [], rewards, {"exp_distance": rewards})
  for eps in (1e-4, 1e-6):
    np.testing.assert_allclose(GroupAdvantage("grpo", eps=eps)(rollout, 4), group_advantages(rewards, 4, eps=eps))
  papers, tunix = GroupAdvantage()(rollout, 4), GroupAdvantage(eps=1e-6)(rollout, 4)
  assert np.abs(tunix - papers).max() > 0.5


def test_advantages_run_on_the_host_cpu_whatever_the_default_device():
  """GroupAdvantage's eager ops go to this host's CPU device (`runtime.host_device`), not the default device: on an
  accelerator they would queue behind the reference pass and hold back the update's dispatch. Here the default is
  set to the last of 8 CPU devices and the ops must still land on the first."""
  import jax
  import jax.numpy as jnp
  from geojax import runtime
  from geojax.learners import GroupAdvantage, Rollout
  cpu = jax.local_devices(backend="cpu")
  assert len(cpu) == 8
  rewards = np.array([0.1, 0.9, 0.4, 0.4], np.float32)
  with jax.default_device(cpu[-1]):
    with runtime.host_device():
      assert jnp.ones(2).devices() == {cpu[0]}
    assert jnp.ones(2).devices() == {cpu[-1]}
    advantages = GroupAdvantage()(Rollout({}, None, None, [], rewards, {"exp_distance": rewards}), 4)
  assert isinstance(advantages, np.ndarray) and advantages.dtype == np.float32
