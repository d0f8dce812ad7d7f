"""GRPO as a learner whose roles are objects of their own, each replaceable:

  policy     the learner's train state (the parameters being trained)
  rollout    a rollout source: prompts from the loader, G completions each from a sampler, scored by the rewards
             (`RolloutSource`, or `DynamicSampling` around one)
  rewards    a RewardFunction: (texts, batch, group) -> (total [B*G], {name: [B*G]})
  reference  the frozen policy of the KL term (`ReferencePolicy`), or None without one
  advantage  (rollout, group) -> [B*G] advantages
  update     the loss of `geojax.rl.grpo_loss` (grpo.loss: PPO clip, GSPO or CISPO) on the rollout tokens exactly as
             sampled, then AdamW; grpo.updates_per_rollout passes over grpo.minibatches mini-batches (PPO epochs)

One step, in order (JAX dispatch is asynchronous, so the host works while the device computes):
  1. sample G completions per prompt on the current policy (cast and resharded for decoding: rollout.layout);
  2. dispatch the reference policy's log-probabilities of those tokens;
  3. meanwhile on the host: decode the completions, score them, group advantages;
  4. dispatch the update(s);
  5. meanwhile on the host: the rollout's metrics; then the update's metrics are fetched. The step counter
     lives on the host, so nothing else waits on the device.

One-step off-policy (rollout.off_policy): step k's rollout was sampled during update k-1 by the policy before that
update, and right after dispatching update k the learner samples rollout k+1 from a snapshot of the policy before
it (PolicySnapshot: the decode copy, taken before the update donates the parameters). On devices of its own
(rollout.devices) the sampling runs beside the update instead of after it. The ratio's denominator is then the
sampler's log-probabilities (the policy that sampled), and a checkpoint keeps the rollout sampled ahead with the
loader's position before its batch, so a resumed run samples nothing twice and goes on exactly.

Old log-probabilities (the ratio's denominator) are the trainer's own, at the parameters that sampled: with one
update on the whole rollout they equal the policy's (ratio 1, no extra pass: the loss of plain GRPO); with more,
one forward pass before the first update takes them, so the clip binds from the second update on. The sampler's
log-probabilities are not used as old log-probs: they differ from the trainer's (another program), which would put
that mismatch into the ratio on the first update. The mismatch is logged instead (mismatch/*) and optionally
corrected by truncated or masked importance sampling (grpo.tis_cap, grpo.mis_threshold), as TRL and verl do.

  learner = GRPOLearner.from_config(config, model, tokenizer, mesh, records, rewards=my_reward_fn)
  metrics = learner.train_step()      # or learner.fit() for config.grpo.steps steps with checkpoints
"""
from __future__ import annotations

import contextlib
import functools
from typing import Any, Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from geojax import runtime
from geojax.data.pipeline import make_loader, rows_per_process
from geojax.learners.learner import Learner, host_metrics
from geojax.data.batch import split_microbatches
from geojax.learners.optim import accumulate_grads, apply_update
from geojax.learners.rewards import as_reward, rewards_from_config
from geojax.learners.rollout import (DynamicSampling, Rollout, RolloutSource, Sampled, completion_logprobs,
                                     microbatched_logprobs, rollout_metrics, rollout_sequences)
from geojax.rl import DEFAULT_EPS, batch_counts, grpo_loss, reward_advantages
from geojax.config import ConfigError
from geojax.sampling import RolloutLayout, Sampler
from geojax.sampling.layout import rows_to_mesh


class ReferencePolicy:
  """The frozen policy the KL term pulls toward: a copy of the parameters GRPO started from.

  Under LoRA the parameters are the adapters: the reference is the shared frozen base (`rest`, not copied) with
  the adapters as GRPO found them, i.e. with fresh adapters (B = 0) the base with its adapters switched off, and
  after a LoRA SFT stage the SFT model. The copy is the adapters' size."""

  def __init__(self, graphdef, params, rest, group: int, n_micro: int = 1):
    self.graphdef, self.rest, self.group, self.n_micro = graphdef, rest, group, n_micro
    self.params = jax.tree.map(jnp.copy, params)
    self._logprobs = jax.jit(self._logprobs_fn, static_argnames=("grid", "prompt_len"))

  def _logprobs_fn(self, params, prompt, tokens, lengths, grid, prompt_len):
    seq = rollout_sequences(prompt, tokens, lengths, self.group)
    return microbatched_logprobs(nnx.merge(self.graphdef, params, self.rest), seq, grid, prompt_len, self.n_micro,
                                 self.group)

  def logprobs(self, sampled: Sampled) -> jax.Array:
    """[B*G, N] log-probs of the sampled completions (dispatched asynchronously)."""
    return self._logprobs(self.params, sampled.prompt, sampled.tokens, sampled.lengths, *sampled.shape(self.group))


class GroupAdvantage:
  """Advantages within each prompt's group (`geojax.rl.ADVANTAGE_ESTIMATORS[kind]`): of the total reward, or for
  "multi" of each reward apart, summed with `weights` (config.grpo.rewards). `eps` is added to the group std
  (config.grpo.adv_eps)."""

  def __init__(self, kind: str = "grpo", weights: Mapping[str, float] | None = None, eps: float = DEFAULT_EPS):
    self.kind, self.weights, self.eps = kind, dict(weights or {}), float(eps)

  def __call__(self, rollout: Rollout, group: int) -> np.ndarray:
    with runtime.host_device():  # on an accelerator these eager ops would queue behind the reference pass
      return np.asarray(reward_advantages(jnp.asarray(rollout.rewards), rollout.per_reward, self.weights, group,
                                          self.kind, eps=self.eps), np.float32)


class PolicySnapshot(NamedTuple):
  """The policy's parameters as the sampler reads them (cast and resharded for decoding, or a copy), taken before an
  update that donates them: a one-step off-policy rollout samples from it while that update runs."""
  params: Any


def policy_sampler(model, gc: ml_collections.ConfigDict, tokenizer, layout: RolloutLayout | None = None,
                   mesh=None) -> Callable:
  """(params, batch, rng) -> GenerateResult: config.grpo's sampling settings on the policy's graph, or with a
  `layout`, on the policy cast and resharded for decoding (once per rollout), the results put back on `mesh`.
  `sample.snapshot(params)` takes a PolicySnapshot that `sample` reads as it is; `sample.layout` is `layout`."""
  sampler = rollout_sampler(model if layout is None else layout.model, gc, tokenizer)

  def snapshot(params) -> PolicySnapshot:
    return PolicySnapshot(jax.tree.map(jnp.copy, params) if layout is None else layout(params))

  def sample(params, batch, rng):
    if layout is not None:  # the key (made on the training mesh) onto the rollout mesh: one mesh per program
      rng = jax.device_put(rng, jax.sharding.NamedSharding(layout.mesh, jax.sharding.PartitionSpec()))
    if isinstance(params, PolicySnapshot):
      params = params.params
    elif layout is not None:
      params = layout(params)
    with contextlib.nullcontext() if layout is None else jax.set_mesh(layout.mesh):  # its programs on its devices
      out = sampler(params, batch["input_ids"], batch["attention_mask"], batch["pixel_values"],
                    batch["image_grid_thw"], position_ids=batch["position_ids"], rng=rng)
    if layout is None or mesh is None or layout.mesh == mesh:
      return out
    return rows_to_mesh(out, mesh)

  sample.snapshot, sample.layout = snapshot, layout
  return sample


def rollout_sampler(model, gc: ml_collections.ConfigDict, tokenizer) -> Sampler:
  """A Sampler with config.grpo's sampling settings (`gc`) on `model`'s graph."""
  return Sampler(model, max_new_tokens=gc.max_new_tokens, temperature=gc.temperature, top_k=gc.top_k or None,
                 top_p=gc.top_p, eos_token_id=tokenizer.eos_id, pad_token_id=tokenizer.pad_id,
                 num_samples=gc.group_size)


def rollout_layout(config: ml_collections.ConfigDict, model, devices=None) -> RolloutLayout | None:
  """config.rollout's decode layout for `model` over `devices` (default: the rollout's, all devices or the last
  rollout.devices; None when rollout.layout is train)."""
  from geojax.experiment import DTYPES, device_split
  if config.rollout.layout != "decode":
    return None
  if devices is None:
    devices = device_split(config)[1]
  try:
    mesh = runtime.make_mesh(dict(config.rollout.mesh), devices)
  except ValueError as e:
    raise ConfigError(f"config key 'rollout.mesh' is {dict(config.rollout.mesh)}: {e}") from e
  return RolloutLayout(model, mesh, DTYPES[config.model.dtype])


class GRPOLearner(Learner):
  """GRPO from `model`; see the module docstring for the roles. `rollout` reads the only data loader."""

  def __init__(self, config: ml_collections.ConfigDict, model, mesh, rollout, *, reference: bool | ReferencePolicy
               = True, advantage: Callable | None = None, writer: runtime.MetricWriter | None = None, gaz=None):
    super().__init__("grpo", config, model, mesh, rollout.loader, writer)
    gc = self.sc
    self.group = gc.group_size
    self.rollout = rollout
    if reference is True:  # built before any restore: the reference is the model GRPO started from
      reference = (ReferencePolicy(self.graphdef, self.state["params"], self.rest, self.group, gc.grad_accum)
                   if gc.beta > 0 else None)
    self.reference = reference or None
    self.advantage = advantage or GroupAdvantage(gc.advantage, gc.rewards, gc.adv_eps)
    if gaz is None:
      from geojax.geo import Gazetteer
      gaz = Gazetteer.load()
    self.gaz = gaz
    self._step: int | None = None  # see `step`
    # rollout.off_policy: the next step's rollout, sampled while this step's update ran, and the loader's position
    # before its batch (where a checkpoint taken now resumes, the rollout's completions saved with it)
    self._pending: Sampled | None = None
    self._pending_data = None
    # update(state, prompt, tokens, lengths, advantages, ref_logprobs, sampler_logprobs, grid, prompt_len,
    #        old_logprobs=None) -> (state, metrics): the policy update on one scored rollout (jitted, donates state)
    self.update = jax.jit(self._update_fn, static_argnames=("grid", "prompt_len"), donate_argnums=(0,))

  @property
  def rewards(self):
    return getattr(self.rollout, "source", self.rollout).rewards

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict, model, tokenizer, mesh, records, *, rewards=None,
                  writer: runtime.MetricWriter | None = None, **roles) -> "GRPOLearner":
    """The learner of `config.grpo` on `records`; `rewards` (a RewardFunction or a plain function returning
    [B*G] rewards) replaces the config's rewards."""
    from geojax.experiment import example_transform
    from geojax.geo import Gazetteer
    gc = config.grpo
    dynamic = gc.dynamic_sampling and gc.max_rollouts > 1  # with one rollout there is nothing to choose from
    # each process loads and scores its own prompts, unless a role needs every prompt on every process: dynamic
    # sampling (chooses groups across the whole batch) and a reward model (runs on the batch's images)
    whole = dynamic or bool(gc.reward_model and gc.rewards.get("locatability", 0.0))
    loader = make_loader(records, example_transform(config, tokenizer, "rl"), batch_size=gc.batch_size,
                         seed=config.seed + 1, shuffle=True, num_epochs=None, worker_count=config.data.workers,
                         name="grpo", **rows_per_process(gc.batch_size, not whole))
    gaz = Gazetteer.load()
    rewards = as_reward(rewards) if rewards is not None else rewards_from_config(config, mesh, gaz)
    sampler = policy_sampler(model, gc, tokenizer, rollout_layout(config, model), mesh)
    source = RolloutSource(loader, sampler, rewards, tokenizer, gc.group_size, jax.random.key(config.seed), mesh)
    if dynamic:
      source = DynamicSampling(source, gc.batch_size, gc.max_rollouts)
    return cls(config, model, mesh, source, writer=writer, gaz=gaz, **roles)

  def loss(self, params, batch: dict, grid: tuple, prompt_len: int, counts: dict | None = None, step=0):
    gc = self.sc
    lp = completion_logprobs(self.train_model(params, step), batch, grid, prompt_len, group=self.group)
    return grpo_loss(lp, batch.get("old_logprobs"), batch.get("ref_logprobs"), batch["advantages"],
                     batch["completion_mask"], loss=gc.loss, eps_low=gc.eps_low, eps_high=gc.eps_high, beta=gc.beta,
                     kl=gc.kl if gc.beta > 0 else None, agg=gc.agg, sampler_logprobs=batch.get("sampler_logprobs"),
                     tis_cap=gc.tis_cap, mis_threshold=gc.mis_threshold, mis_level=gc.mis_level, counts=counts)

  def _step_fn(self, state, batch: dict, grid: tuple, prompt_len: int):
    """One optimizer update on `batch` (rows of the rollout), in grad_accum micro-batches normalized by the whole
    batch's counts, so that the update is the same whatever grad_accum is."""
    n_micro = self.sc.grad_accum
    loss_fn = functools.partial(self.loss, grid=grid[:len(grid) // n_micro], prompt_len=prompt_len,
                                counts=batch_counts(batch["completion_mask"], agg=self.sc.agg), step=state["step"])
    loss, metrics, grads = accumulate_grads(loss_fn, state["params"], batch, n_micro, shares=True)
    return apply_update(self.tx, state, grads, loss, metrics)

  def _update_fn(self, state, prompt, tokens, lengths, advantages, ref_logprobs, sampler_logprobs, grid, prompt_len,
                 old_logprobs=None):
    seq = rollout_sequences(prompt, tokens, lengths, self.group)
    seq["advantages"] = advantages
    if ref_logprobs is not None:
      seq["ref_logprobs"] = ref_logprobs
    if sampler_logprobs is not None:
      seq["sampler_logprobs"] = sampler_logprobs
    if old_logprobs is not None:  # off-policy: the policy that sampled is not the one updated
      seq["old_logprobs"] = old_logprobs
    n_mini, n_updates = self.sc.minibatches, self.sc.updates_per_rollout
    if n_mini * n_updates == 1:  # on-policy, old = current: no extra pass, the loss of plain GRPO
      return self._step_fn(state, seq, grid, prompt_len)
    if old_logprobs is None:
      seq["old_logprobs"] = jax.lax.stop_gradient(microbatched_logprobs(self.model(state["params"]), seq, grid,
                                                                        prompt_len, self.sc.grad_accum, self.group))
    minibatches = split_microbatches(seq, n_mini)
    step = state["step"]

    def update(state, i):
      return self._step_fn(state, jax.tree.map(lambda x: x[i], minibatches), grid[:len(grid) // n_mini], prompt_len)

    # epochs over the mini-batches in a fixed order, so that a resumed run repeats them exactly
    state, metrics = jax.lax.scan(update, state, jnp.tile(jnp.arange(n_mini), n_updates))
    metrics = {k: v.max() if k.endswith("_max") else v.min() if k.endswith("_min") else v.mean()
               for k, v in metrics.items()}
    return dict(state, step=step + 1), metrics  # one learner step, however many optimizer updates

  def train_step(self) -> dict[str, float]:
    off_policy = self.config.rollout.off_policy
    # 1-3: sample on the current policy (off-policy: take the rollout sampled during the last update), dispatch the
    # reference pass, score on the host meanwhile
    sampled, self._pending = self._pending or self.rollout.sample(self.state["params"], self.step), None
    if off_policy and sampled.logprobs is None:
      raise ValueError("rollout.off_policy takes the ratio against the sampler's log-probs; this sampler gives none")
    ref_logprobs = self.reference.logprobs(sampled) if self.reference is not None else None
    rollout = self.rollout.score(sampled)
    example = rollout.example_rows(self.group)
    advantages = np.where(example, self.advantage(rollout, self.group), 0.0).astype(np.float32)
    # off-policy: the parameters the next rollout samples from, taken before the update donates them
    snapshot = self.rollout.snapshot(self.state["params"]) if off_policy else None
    # 4. the update(s)
    old_logprobs = sampled.logprobs if off_policy else None
    self.state, metrics = self.update(self.state, sampled.prompt, sampled.tokens, sampled.lengths,
                                       runtime.put_global(advantages, self.mesh), ref_logprobs, sampled.logprobs,
                                       *sampled.shape(self.group), old_logprobs=old_logprobs)
    self._step = self.step + 1  # the update's own count, known without waiting for it
    if off_policy and self._step < self.sc.steps:  # the next step's rollout, sampled while the update runs
      self._pending_data = self.loader.get_state()
      self._pending = self.rollout.sample(snapshot, self._step)
    # 5. the host's metrics while the update runs, then the update's
    host = rollout_metrics(rollout, self.group, self.config.data.answer, self.gaz)
    host.update(self.rollout.info())
    return {**host_metrics(metrics), **host}

  @property
  def step(self) -> int:
    """The step counter, kept on the host: the device's state["step"] is read once (after a restore), not every
    step, which would wait for the update in flight."""
    if self._step is None:
      self._step = int(self.state["step"])
    return self._step

  def extra_state(self) -> dict:
    if self._pending is None:
      return {}
    pending = {"tokens": self._pending.tokens, "lengths": self._pending.lengths, "logprobs": self._pending.logprobs}
    return {"pending": pending}

  def data_state(self):
    return self._pending_data if self._pending is not None else self.loader.get_state()

  def restore(self) -> bool:
    self._step, self._pending = None, None
    if not super().restore():
      return False
    latest = self.checkpoints.latest_step()
    if self.config.rollout.off_policy and self.checkpoints.has_item(latest, "pending"):
      rows, n = self.sc.batch_size * self.group, self.sc.max_new_tokens
      template = {name: runtime.put_global(np.zeros(shape, dtype), self.mesh) for name, shape, dtype in
                  (("tokens", (rows, n), np.int32), ("lengths", (rows,), np.int32),
                   ("logprobs", (rows, n), np.float32))}
      restored, _, _ = self.checkpoints.restore({"pending": template}, latest, data=False)
      self._pending = self.rollout.replay(**restored["pending"])
    return True
