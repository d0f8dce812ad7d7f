"""Train a VLM to geolocate photos: supervised fine-tuning, then GRPO, then evaluation.

  python -m geojax.train --config=configs/default.py                 # tiny model, built-in data, ~10 min CPU
  python -m geojax.train --config=configs/geo_r.py --config.model.hf_path=/models/Qwen2.5-VL-7B-Instruct
  python -m geojax.train --config=configs/default.py:ci --config.grpo.steps=8

Stages run in the order of `config.stages`; each keeps its own Orbax checkpoints in <workdir>/<stage>/checkpoints
(params, optimizer state, step, RNG and the data-iterator state, saved asynchronously, atomically) and resumes
from the latest complete one; a finished stage is skipped on rerun. The model is evaluated before the first
stage (when eval_before) and after each stage; the tables land in <workdir>/results.md.

The GRPO step, in order (JAX dispatch is asynchronous, so the host works while the device computes):
  1. sample G completions per prompt (geojax.sampling.generate) on the current policy;
  2. dispatch the reference policy's log-probabilities of those tokens (for the KL term);
  3. meanwhile on the host: decode the completions, score them (geojax.geo.score), group advantages;
  4. dispatch the update: GRPO loss of the rollout tokens exactly as sampled (never re-tokenized text).
With grpo.dynamic_sampling (DAPO), steps 1 and 3 repeat on further batches until grpo.batch_size groups whose
rewards differ are found (at most grpo.max_rollouts rollouts; uninformative groups fill any shortfall), then 2 and
4 run on the chosen groups.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from flax import nnx

from geojax import config as gconfig
from geojax import eval as geval
from geojax import runtime
from geojax.data.batching import batch_shape, concat_examples, take_examples
from geojax.data.pipeline import make_loader
from geojax.geo import GeoTargets, Gazetteer, format_table, score
from geojax.models import grid_tuple
from geojax.models.logprobs import token_logprobs
from geojax.rl import (ADVANTAGE_ESTIMATORS, AGGREGATIONS, KL_ESTIMATORS, group_advantages, group_rows, grpo_loss,
                       informative_groups, select_groups)
from geojax.runtime.metrics import summary
from geojax.sampling import generate
from geojax.sft import next_token_targets, sft_loss, trainable_mask

STAGES = ("sft", "grpo")
LOCATABILITY = "locatability"


# ------------------------------------------------------------------------------------------------ config checks
def check_config(c: ml_collections.ConfigDict) -> None:
  """Rejects a bad config before any work, naming the key."""
  from geojax.data.chat import ANSWER_FORMATS, PROMPTS
  from geojax.geo import REWARDS
  from geojax.models.presets import PRESETS
  for stage in c.stages:
    if stage not in STAGES:
      raise gconfig.ConfigError(f"config key 'stages' holds {stage!r}; expected stages from {list(STAGES)}")
  gconfig.check_choice(c, "runtime.distributed", ("auto", "on", "off"))
  gconfig.check_choice(c, "runtime.matmul_precision", ("default", "highest", "high", "bfloat16"))
  for axis, size in c.runtime.mesh.items():
    if not isinstance(size, int) or (size < 1 and size != -1):
      raise gconfig.ConfigError(f"config key 'runtime.mesh.{axis}' is {size!r}; expected a size >= 1 or -1")
  gconfig.check_choice(c, "model.preset", ["tiny", *PRESETS])
  gconfig.check_choice(c, "model.dtype", list(geval.DTYPES))
  gconfig.check_choice(c, "model.param_dtype", list(geval.DTYPES))
  if c.model.preset != "tiny" and not c.model.hf_path:
    raise gconfig.ConfigError(f"config key 'model.hf_path' is empty: preset {c.model.preset!r} needs pretrained "
                              "weights (a local Hugging Face directory)")
  if c.model.hf_path and not os.path.isdir(c.model.hf_path):
    raise gconfig.ConfigError(f"config key 'model.hf_path' is {c.model.hf_path!r}: not a directory")
  gconfig.check_choice(c, "data.source", ("builtin", "arrayrecord"))
  if c.data.source == "arrayrecord" and not c.data.dir:
    raise gconfig.ConfigError("config key 'data.dir' is empty: data.source 'arrayrecord' reads its shards from it")
  gconfig.check_choice(c, "data.prompt", sorted(PROMPTS))
  gconfig.check_choice(c, "data.answer", ANSWER_FORMATS)
  gconfig.check_range(c, "data.max_prompt_len", 8)
  gconfig.check_range(c, "data.decimals", 0, 8)
  gconfig.check_range(c, "data.workers", 0)
  for stage in ("sft", "grpo"):
    gconfig.check_range(c, f"{stage}.steps", 0)
    gconfig.check_range(c, f"{stage}.batch_size", 1)
    gconfig.check_range(c, f"{stage}.grad_accum", 1)
    if c[stage].batch_size % c[stage].grad_accum:
      raise gconfig.ConfigError(f"config key '{stage}.grad_accum' ({c[stage].grad_accum}) must divide "
                                f"'{stage}.batch_size' ({c[stage].batch_size})")
    gconfig.check_range(c, f"{stage}.lr", 0.0)
    gconfig.check_range(c, f"{stage}.warmup_steps", 0)
    gconfig.check_range(c, f"{stage}.warmup_ratio", 0.0, 1.0)
    gconfig.check_choice(c, f"{stage}.schedule", ("cosine", "constant", "linear"))
    gconfig.check_range(c, f"{stage}.min_lr_ratio", 0.0, 1.0)
    gconfig.check_range(c, f"{stage}.weight_decay", 0.0)
    gconfig.check_range(c, f"{stage}.b1", 0.0, 1.0)
    gconfig.check_range(c, f"{stage}.b2", 0.0, 1.0)
    gconfig.check_range(c, f"{stage}.grad_clip", 0.0)
  gconfig.check_range(c, "sft.max_target_len", 1)
  g = c.grpo
  gconfig.check_range(c, "grpo.group_size", 2)
  gconfig.check_range(c, "grpo.temperature", 0.0)
  if g.temperature == 0:
    raise gconfig.ConfigError("config key 'grpo.temperature' is 0: greedy samples of a group are identical")
  gconfig.check_range(c, "grpo.top_k", 0)
  gconfig.check_range(c, "grpo.top_p", 0.0, 1.0)
  gconfig.check_range(c, "grpo.max_new_tokens", 1)
  gconfig.check_range(c, "grpo.beta", 0.0)
  gconfig.check_choice(c, "grpo.kl", sorted(KL_ESTIMATORS))
  gconfig.check_range(c, "grpo.eps_low", 0.0, 1.0)
  gconfig.check_range(c, "grpo.eps_high", 0.0)
  gconfig.check_choice(c, "grpo.advantage", sorted(k for k in ADVANTAGE_ESTIMATORS if k != "multi"))
  gconfig.check_choice(c, "grpo.agg", sorted(AGGREGATIONS))
  gconfig.check_range(c, "grpo.max_rollouts", 1)
  gconfig.check_choice(c, "grpo.combine", ("sum", "product"))
  for name, weight in g.rewards.items():
    if name not in REWARDS and name != LOCATABILITY:
      raise gconfig.ConfigError(f"config key 'grpo.rewards.{name}' is not a reward; known: "
                                f"{sorted([*REWARDS, LOCATABILITY])}")
    if not isinstance(weight, (int, float)):
      raise gconfig.ConfigError(f"config key 'grpo.rewards.{name}' is {weight!r}; expected a number")
  if not any(w for n, w in g.rewards.items() if n != LOCATABILITY):
    raise gconfig.ConfigError("config key 'grpo.rewards' has no reward with a non-zero weight")
  if g.reward_model and not os.path.isdir(g.reward_model):
    raise gconfig.ConfigError(f"config key 'grpo.reward_model' is {g.reward_model!r}: not a directory")
  gconfig.check_range(c, "eval.batch_size", 1)
  gconfig.check_range(c, "eval.num_examples", 0)
  gconfig.check_range(c, "eval.max_new_tokens", 1)
  gconfig.check_range(c, "eval.every", 0)
  gconfig.check_range(c, "checkpoint.every", 1)
  gconfig.check_range(c, "checkpoint.keep", 1)
  gconfig.check_range(c, "log.every", 1)


# ------------------------------------------------------------------------------------------------ optimizer
def learning_rate_schedule(sc: ml_collections.ConfigDict) -> optax.Schedule:
  """Linear warmup (warmup_ratio of the steps when > 0, else warmup_steps), then cosine / linear / constant."""
  steps = max(int(sc.steps), 1)
  warmup = int(round(sc.warmup_ratio * steps)) if sc.warmup_ratio > 0 else int(sc.warmup_steps)
  warmup = min(warmup, steps)
  peak, end = float(sc.lr), float(sc.lr) * float(sc.min_lr_ratio)
  decay_steps = max(steps - warmup, 1)
  if sc.schedule == "cosine":
    after = optax.cosine_decay_schedule(peak, decay_steps, alpha=sc.min_lr_ratio)
  elif sc.schedule == "linear":
    after = optax.linear_schedule(peak, end, decay_steps)
  else:
    after = optax.constant_schedule(peak)
  if warmup == 0:
    return after
  return optax.join_schedules([optax.linear_schedule(peak / warmup, peak, warmup - 1) if warmup > 1
                               else optax.constant_schedule(peak), after], [warmup])


def make_optimizer(sc: ml_collections.ConfigDict, trainable) -> optax.GradientTransformation:
  """AdamW with global-norm clipping and the schedule above; frozen parameters (mask False) never change."""
  tx = optax.chain(optax.clip_by_global_norm(sc.grad_clip) if sc.grad_clip > 0 else optax.identity(),
                   optax.adamw(learning_rate_schedule(sc), b1=sc.b1, b2=sc.b2, weight_decay=sc.weight_decay))
  labels = jax.tree.map(lambda t: "train" if t else "frozen", trainable)
  return optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)


# ------------------------------------------------------------------------------------------------ batches
def split_microbatches(batch: dict, n: int) -> dict:
  """Adds a leading microbatch axis of size n (position_ids keep [3, ...] per microbatch)."""
  def one(key, x):
    if key == "position_ids":
      return x.reshape(x.shape[0], n, x.shape[1] // n, *x.shape[2:]).swapaxes(0, 1)
    return x.reshape(n, x.shape[0] // n, *x.shape[1:])
  return {k: one(k, v) for k, v in batch.items()}


def accumulate_grads(loss_fn: Callable, params, batch: dict, n_micro: int):
  """Mean loss, metrics and gradients over n_micro equal microbatches (a scan, so memory is one microbatch)."""
  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  if n_micro == 1:
    (loss, metrics), grads = grad_fn(params, batch)
    return loss, metrics, grads
  micro = split_microbatches(batch, n_micro)

  def body(carry, mb):
    (loss, metrics), grads = grad_fn(params, mb)
    return jax.tree.map(jnp.add, carry, (loss, metrics, grads)), None

  first = jax.tree.map(lambda x: x[0], micro)
  zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(grad_fn, params, first))
  (loss, metrics), grads = zeros
  (loss, metrics, grads), _ = jax.lax.scan(body, (loss, metrics, grads), micro)
  scale = 1.0 / n_micro
  return loss * scale, jax.tree.map(lambda m: m * scale, metrics), jax.tree.map(lambda g: g * scale, grads)


def apply_update(tx, state: dict, grads, loss, metrics) -> tuple[dict, dict]:
  updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
  params = optax.apply_updates(state["params"], updates)
  metrics = dict(metrics, loss=loss, grad_norm=optax.tree.norm(grads))
  return {"params": params, "opt_state": opt_state, "step": state["step"] + 1}, metrics


def _repeat_images(pixel_values: jax.Array, n_images: int, times: int) -> jax.Array:
  """[n*P, D] patches of n same-grid images -> each image's block repeated `times` times (row-major groups)."""
  per = pixel_values.shape[0] // n_images
  x = pixel_values.reshape(n_images, per, -1)
  return jnp.repeat(x, times, axis=0).reshape(n_images * times * per, -1)


def rollout_sequences(prompt: dict, tokens: jax.Array, lengths: jax.Array, group: int) -> dict:
  """Prompt (repeated G times) + sampled completion tokens as training sequences, all on device.

  The completion is used token for token as sampled (no decode / re-encode). M-RoPE positions of generated
  text continue from the prompt's largest position, as in generation.
  """
  ids = jnp.repeat(prompt["input_ids"], group, axis=0)
  mask = jnp.repeat(prompt["attention_mask"], group, axis=0)
  pos = jnp.repeat(prompt["position_ids"], group, axis=1)
  n_new = tokens.shape[1]
  completion_mask = (jnp.arange(n_new)[None, :] < lengths[:, None]).astype(jnp.int32)
  start = jnp.max(pos, axis=(0, 2)) + 1  # [B*G]
  new_pos = jnp.broadcast_to((start[:, None] + jnp.arange(n_new)[None, :])[None], (3,) + tokens.shape)
  weight = jnp.repeat(prompt["example_mask"], group, axis=0)
  return {
      "input_ids": jnp.concatenate([ids, tokens.astype(ids.dtype)], axis=1),
      "attention_mask": jnp.concatenate([mask, completion_mask.astype(mask.dtype)], axis=1),
      "position_ids": jnp.concatenate([pos, new_pos.astype(pos.dtype)], axis=2),
      "pixel_values": _repeat_images(prompt["pixel_values"], prompt["input_ids"].shape[0], group),
      "completion_mask": completion_mask.astype(jnp.float32) * weight[:, None],
  }


def completion_logprobs(model, seq: dict, grid: tuple, prompt_len: int, chunk_size: int = 256) -> jax.Array:
  """[B*G, N] log-probabilities of the completion tokens of `seq` (rollout_sequences) under `model`."""
  ids = seq["input_ids"]
  lp = token_logprobs(model, ids[:, :-1], ids[:, 1:], seq["attention_mask"][:, :-1], seq["pixel_values"], grid,
                      seq["position_ids"][:, :, :-1], chunk_size=chunk_size)
  return lp[:, prompt_len - 1:]


# ------------------------------------------------------------------------------------------------ stage runner
class Stage:
  """What SFT and GRPO share: functional train state, optimizer, checkpoints, logging, resume."""

  def __init__(self, name: str, config: ml_collections.ConfigDict, model, mesh, writer: runtime.MetricWriter):
    self.name, self.config, self.sc, self.mesh, self.writer = name, config, config[name], mesh, writer
    self.dir = os.path.join(config.workdir, name)
    os.makedirs(self.dir, exist_ok=True)
    self.graphdef, params, self.rest = nnx.split(model, nnx.Param, ...)
    self.trainable = trainable_mask(params, freeze_vision=self.sc.freeze_vision)
    self.tx = make_optimizer(self.sc, self.trainable)
    self.state = {"params": params, "opt_state": self.tx.init(params), "step": jnp.zeros((), jnp.int32)}
    self.checkpoints = runtime.Checkpointer(os.path.join(self.dir, "checkpoints"), config.checkpoint.keep,
                                            config.checkpoint.async_save)
    self.schedule = learning_rate_schedule(self.sc)
    self.history = os.path.join(self.dir, "metrics.jsonl")  # one JSON line per step (process 0)

  def model(self, params=None):
    return nnx.merge(self.graphdef, self.state["params"] if params is None else params, self.rest)

  @property
  def step(self) -> int:
    return int(self.state["step"])

  def restore(self, loader) -> bool:
    """Loads the latest complete checkpoint of this stage (state and data position); False if none."""
    latest = self.checkpoints.latest_step()
    if latest is None:
      return False
    restored, data_state, _ = self.checkpoints.restore(
        {"params": self.state["params"], "train": {"opt_state": self.state["opt_state"], "step": self.state["step"]}})
    self.state = {"params": restored["params"], **restored["train"]}
    if data_state is not None and loader is not None:
      loader.set_state(data_state)
    self.writer.log(f"[{self.name}] resumed from step {latest}")
    return True

  def save(self, data_state, record: dict) -> None:
    self.checkpoints.save(self.step, {"params": self.state["params"],
                                      "train": {"opt_state": self.state["opt_state"], "step": self.state["step"]}},
                          data_state=data_state, record=record)

  def log(self, metrics: dict, start_time: float, start_step: int) -> None:
    step = self.step
    metrics = dict(metrics, lr=float(self.schedule(step - 1)))
    self.writer.write(step, metrics, prefix=f"{self.name}/")
    if jax.process_index() == 0:
      with open(self.history, "a") as f:
        f.write(json.dumps({"step": step, **{k: v for k, v in metrics.items() if math.isfinite(v)}}) + "\n")
    if step % self.config.log.every == 0 or step == self.sc.steps:
      rate = (step - start_step) / max(time.time() - start_time, 1e-9)
      keys = ["loss", "grad_norm", "reward", "kl", "clip_frac", "response_len", "nll", "distance_km", "lr"]
      self.writer.log(f"[{self.name}] step {step}/{self.sc.steps} {summary(metrics, keys)} ({rate:.2f} steps/s)")

  def close(self) -> None:
    self.checkpoints.close()
    self.writer.flush()


def _host_metrics(metrics: dict) -> dict[str, float]:
  return {k: float(runtime.to_host(v)) for k, v in metrics.items()}


def _shard_batch(batch: dict, mesh, keys) -> dict:
  return runtime.put_global({k: np.asarray(batch[k]) for k in keys}, mesh)


# ------------------------------------------------------------------------------------------------ SFT
SFT_KEYS = ("input_ids", "attention_mask", "position_ids", "pixel_values", "loss_mask", "example_mask")


def run_sft(config, model, tokenizer, mesh, writer, train_records, evaluate_fn) -> Any:
  """Supervised fine-tuning on the answer texts (loss on answer tokens only). Returns the trained model."""
  stage = Stage("sft", config, model, mesh, writer)
  sc = stage.sc
  loader = make_loader(train_records, geval.example_transform(config, tokenizer, "sft"), batch_size=sc.batch_size,
                       seed=config.seed, shuffle=True, num_epochs=None, worker_count=config.data.workers,
                       shard_index=0, shard_count=1, name="sft")
  stage.restore(loader)
  if stage.step >= sc.steps:
    stage.close()
    return stage.model()

  def loss_fn(params, batch, grid):
    m = nnx.merge(stage.graphdef, params, stage.rest)
    mask = batch["loss_mask"] * batch["example_mask"][:, None]
    targets, target_mask = next_token_targets(batch["input_ids"], mask)
    lp = token_logprobs(m, batch["input_ids"], targets, batch["attention_mask"], batch["pixel_values"], grid,
                        batch["position_ids"])
    return sft_loss(lp, targets, target_mask)

  @functools.partial(jax.jit, static_argnames=("grid",), donate_argnums=(0,))
  def train_step(state, batch, grid):
    micro_grid = grid[:len(grid) // sc.grad_accum]
    loss, metrics, grads = accumulate_grads(functools.partial(loss_fn, grid=micro_grid), state["params"], batch,
                                            sc.grad_accum)
    return apply_update(stage.tx, state, grads, loss, metrics)

  return _train_loop(stage, loader, lambda batch: _sft_step(stage, train_step, batch), evaluate_fn)


def _sft_step(stage: Stage, train_step, batch) -> dict:
  grid = grid_tuple(batch["image_grid_thw"])
  stage.state, metrics = train_step(stage.state, _shard_batch(batch, stage.mesh, SFT_KEYS), grid)
  return _host_metrics(metrics)


def _train_loop(stage: Stage, loader, step_fn, evaluate_fn):
  """Steps until sc.steps: NaN guard, metrics, periodic checkpoints and evaluation. Returns the model."""
  sc, cc = stage.sc, stage.config.checkpoint
  start_step, start_time = stage.step, time.time()
  bar = runtime.progress(sc.steps, initial=start_step, desc=stage.name, enabled=stage.config.log.progress)
  try:
    while stage.step < sc.steps:
      metrics = step_fn(next(loader))
      data_state = loader.get_state()  # after every batch this step read: what a resume continues from
      runtime.check_finite(stage.step, metrics)
      stage.log(metrics, start_time, start_step)
      bar.update(1)
      if stage.step % cc.every == 0 or stage.step == sc.steps:
        stage.save(data_state, {k: v for k, v in metrics.items() if math.isfinite(v)})
      every = stage.config.eval.every
      if every and stage.step % every == 0 and stage.step < sc.steps:
        result = evaluate_fn(stage.model(), f"{stage.name} step {stage.step}", None)
        stage.writer.write(stage.step, result, prefix=f"eval_{stage.name}/")
  finally:
    bar.close()
    stage.close()
    if hasattr(loader, "close"):
      loader.close()
  return stage.model()


# ------------------------------------------------------------------------------------------------ GRPO
PROMPT_KEYS = ("input_ids", "attention_mask", "position_ids", "pixel_values", "example_mask")
# Dynamic sampling's extra rollouts fold base_key with this + k (step numbers stay below it), then with the step.
EXTRA_ROLLOUT_STREAM = 2 ** 31


class RewardModel:
  """GLOBE's locatability reward: P(yes) / (P(yes) + P(no)) of a VLM asked whether the image is locatable."""

  QUESTION = ("Is the location of this image identifiable from its visual content (landmarks, signs, "
              "landscape)? Answer yes or no.")

  def __init__(self, path: str, config: ml_collections.ConfigDict, mesh):
    from geojax.data.batching import ExampleTransform
    from geojax.models import load_hf
    self.tokenizer = geval.load_tokenizer(path)
    self.model = load_hf(path, dtype=geval.DTYPES[config.model.dtype], mesh=mesh)
    self.transform = ExampleTransform(self.tokenizer, prompt=config.data.prompt, mode="rl",
                                      min_pixels=config.data.min_pixels, max_pixels=config.data.max_pixels,
                                      max_prompt_len=config.data.max_prompt_len + 64)
    self.yes = self.tokenizer.encode("yes")[0]
    self.no = self.tokenizer.encode("no")[0]

  def __call__(self, batch: dict) -> np.ndarray:
    """[B] locatability of the batch's images, from its own prompt with the question (same images)."""
    from geojax.data.chat import encode_chat
    from geojax.data.mrope import rope_index
    n_image = int(np.prod(batch["image_grid_thw"][0])) // 4
    ids = np.asarray(encode_chat(self.tokenizer, None, self.QUESTION, n_image), np.int32)
    b = len(batch["image_grid_thw"])
    input_ids = np.tile(ids[None], (b, 1))
    pos, _ = rope_index(input_ids, None, np.asarray(batch["image_grid_thw"]), spatial_merge_size=2,
                        image_token_id=self.tokenizer.image_pad_id)
    logits = self.model(input_ids, None, batch["pixel_values"], grid_tuple(batch["image_grid_thw"]), pos)[:, -1]
    pair = jax.nn.log_softmax(jnp.stack([logits[:, self.yes], logits[:, self.no]], -1), axis=-1)
    return np.asarray(jnp.exp(pair[:, 0]))


def compute_rewards(texts: list[str], batch: dict, group: int, gc: ml_collections.ConfigDict, answer_fmt: str,
                    gaz, locatability: np.ndarray | None) -> tuple[np.ndarray, dict[str, np.ndarray]]:
  """Total reward [B*G] and each named reward, scored on the host by geojax.geo.score."""
  keep = lambda values: [v for v in np.asarray(values, dtype=object) for _ in range(group)]
  targets = GeoTargets.from_coordinates(np.repeat(np.asarray(batch["lat"]), group),
                                        np.repeat(np.asarray(batch["lon"]), group), gaz,
                                        clues=keep(batch["clues"]), country=keep(batch["country"]),
                                        admin1=keep(batch["admin1"]), city=keep(batch["city"]))
  weights = {k: float(v) for k, v in gc.rewards.items() if k != LOCATABILITY}
  params = {name: dict(kwargs) for name, kwargs in gc.reward_params.items()}
  total, per = score(texts, targets, weights, fmt=answer_fmt, combine=gc.combine, gaz=gaz, params=params)
  weight = float(gc.rewards.get(LOCATABILITY, 0.0))
  if locatability is not None and weight:
    per[LOCATABILITY] = np.repeat(locatability, group).astype(np.float32)
    total = total + weight * per[LOCATABILITY] if gc.combine == "sum" else total * weight * per[LOCATABILITY]
  return total.astype(np.float32), per


def run_grpo(config, model, tokenizer, mesh, writer, train_records, evaluate_fn) -> Any:
  """GRPO from `model` (also the frozen KL reference). Returns the trained model."""
  stage = Stage("grpo", config, model, mesh, writer)
  gc = stage.sc
  group = gc.group_size
  ref_params = jax.tree.map(jnp.copy, stage.state["params"]) if gc.beta > 0 else None
  loader = make_loader(train_records, geval.example_transform(config, tokenizer, "rl"), batch_size=gc.batch_size,
                       seed=config.seed + 1, shuffle=True, num_epochs=None, worker_count=config.data.workers,
                       shard_index=0, shard_count=1, name="grpo")
  stage.restore(loader)
  if stage.step >= gc.steps:
    stage.close()
    return stage.model()
  gaz = Gazetteer.load()
  reward_model = RewardModel(gc.reward_model, config, mesh) if gc.reward_model else None
  base_key = jax.random.key(config.seed)
  kl = gc.kl if gc.beta > 0 else None

  @functools.partial(jax.jit, static_argnames=("grid", "prompt_len"))
  def reference_logprobs(params, prompt, tokens, lengths, grid, prompt_len):
    seq = rollout_sequences(prompt, tokens, lengths, group)
    return completion_logprobs(nnx.merge(stage.graphdef, params, stage.rest), seq, grid, prompt_len)

  def loss_fn(params, batch, grid, prompt_len):
    m = nnx.merge(stage.graphdef, params, stage.rest)
    lp = completion_logprobs(m, batch, grid, prompt_len)
    return grpo_loss(lp, None, batch.get("ref_logprobs"), batch["advantages"], batch["completion_mask"],
                     eps_low=gc.eps_low, eps_high=gc.eps_high, beta=gc.beta, kl=kl, agg=gc.agg)

  @functools.partial(jax.jit, static_argnames=("grid", "prompt_len"), donate_argnums=(0,))
  def train_step(state, prompt, tokens, lengths, advantages, ref_logprobs, grid, prompt_len):
    seq = rollout_sequences(prompt, tokens, lengths, group)
    seq["advantages"] = advantages
    if ref_logprobs is not None:
      seq["ref_logprobs"] = ref_logprobs
    n_micro = gc.grad_accum
    micro_grid = grid[:len(grid) // n_micro]
    loss, metrics, grads = accumulate_grads(
        functools.partial(loss_fn, grid=micro_grid, prompt_len=prompt_len), state["params"], seq, n_micro)
    return apply_update(stage.tx, state, grads, loss, metrics)

  def sample(batch, rng):
    return generate(stage.model(), batch["input_ids"], batch["attention_mask"], batch["pixel_values"],
                    batch["image_grid_thw"], position_ids=batch["position_ids"], max_new_tokens=gc.max_new_tokens,
                    temperature=gc.temperature, top_k=gc.top_k or None, top_p=gc.top_p, rng=rng,
                    eos_token_id=tokenizer.eos_id, pad_token_id=tokenizer.pad_id, num_samples=group)

  def score_rollout(batch, tokens_host, lengths_host):
    texts = geval.decode_completions(tokenizer, tokens_host, lengths_host)
    locatability = reward_model(batch) if reward_model is not None else None
    rewards, per_reward = compute_rewards(texts, batch, group, gc, config.data.answer, gaz, locatability)
    return Rollout(batch, tokens_host, lengths_host, texts, rewards, per_reward)

  def dispatch_reference(batch, prompt, tokens, lengths):
    """The frozen reference's log-probs of the rollout tokens (None without a KL term); asynchronous."""
    if ref_params is None:
      return None
    return reference_logprobs(ref_params, prompt, tokens, lengths, *_rollout_shape(batch, group))

  def plain_rollout(batch, step):
    """One rollout; the reference pass is dispatched before the host scores rewards, so the two overlap."""
    out = sample(batch, jax.random.fold_in(base_key, step))
    prompt = _shard_batch(batch, mesh, PROMPT_KEYS)
    ref_lp = dispatch_reference(batch, prompt, out.tokens, out.lengths)
    rollout = score_rollout(batch, runtime.to_host(out.tokens), runtime.to_host(out.lengths))
    return rollout, prompt, out.tokens, out.lengths, ref_lp, {}

  def dynamic_rollout(batch, step):
    """DAPO's dynamic sampling: rollouts of further batches until batch_size informative groups are found."""
    def scored(batch, key):
      out = sample(batch, key)
      return score_rollout(batch, runtime.to_host(out.tokens), runtime.to_host(out.lengths))

    # The first rollout draws what the plain path would; extra ones use their own key streams.
    rollouts = [scored(batch, jax.random.fold_in(base_key, step))]
    while _informative_count(rollouts, group) < gc.batch_size and len(rollouts) < gc.max_rollouts:
      extra_key = jax.random.fold_in(jax.random.fold_in(base_key, EXTRA_ROLLOUT_STREAM + len(rollouts)), step)
      rollouts.append(scored(next(loader), extra_key))
    rollout, info = _select_informative(rollouts, group, gc.batch_size)
    prompt = _shard_batch(rollout.batch, mesh, PROMPT_KEYS)
    tokens, lengths = runtime.put_global(rollout.tokens, mesh), runtime.put_global(rollout.lengths, mesh)
    return rollout, prompt, tokens, lengths, dispatch_reference(rollout.batch, prompt, tokens, lengths), info

  dynamic = gc.dynamic_sampling and gc.max_rollouts > 1  # with one rollout there is nothing to choose from

  def step_fn(batch) -> dict:
    # 1-3: sample on the current policy, reference log-probs, rewards on the host
    rollout, prompt, tokens, lengths, ref_lp, info = (dynamic_rollout if dynamic else plain_rollout)(
        batch, stage.step)
    batch = rollout.batch
    example = _example_rows(batch, group)
    advantages = np.asarray(group_advantages(jnp.asarray(rollout.rewards), group, gc.advantage), np.float32)
    advantages = np.where(example, advantages, 0.0).astype(np.float32)
    # 4. the update
    stage.state, metrics = train_step(stage.state, prompt, tokens, lengths, runtime.put_global(advantages, mesh),
                                      ref_lp, *_rollout_shape(batch, group))
    metrics = _host_metrics(metrics)
    metrics.update(_rollout_metrics(rollout.rewards, rollout.per_reward, rollout.lengths, rollout.texts, batch,
                                    group, config, gaz, example))
    metrics.update(info)
    return metrics

  return _train_loop(stage, loader, step_fn, evaluate_fn)


@dataclasses.dataclass
class Rollout:
  """One rollout on the host: the prompt batch (B examples) and its B*G scored completions (group-major rows)."""
  batch: dict
  tokens: np.ndarray     # [B*G, N]
  lengths: np.ndarray    # [B*G]
  texts: list
  rewards: np.ndarray    # [B*G]
  per_reward: dict


def _rollout_shape(batch: dict, group: int) -> tuple[tuple, int]:
  """(per-row image grids of the B*G rollout rows, prompt length): the static arguments of the jitted passes."""
  grid = grid_tuple(batch["image_grid_thw"])
  return tuple(g for g in grid for _ in range(group)), int(np.asarray(batch["input_ids"]).shape[1])


def _example_rows(batch: dict, group: int) -> np.ndarray:
  """[B*G] True on the rollout rows of real examples, False on those of a partial batch's filler examples."""
  return np.repeat(np.asarray(batch["example_mask"]) > 0, group)


def _group_rewards(rollout: Rollout, group: int) -> np.ndarray:
  """Rewards with the groups of filler examples zeroed, so they never count as informative."""
  return np.where(_example_rows(rollout.batch, group), rollout.rewards, 0.0)


def _n_informative(rollout: Rollout, group: int) -> int:
  return int(informative_groups(_group_rewards(rollout, group), group).sum())


def _by_shape(rollouts: list[Rollout], group: int) -> dict[tuple, tuple[list[Rollout], int]]:
  """The rollouts grouped by batch shape (only rollouts of one shape can be joined), each group with its number
  of informative groups."""
  out: dict[tuple, tuple[list[Rollout], int]] = {}
  for r in rollouts:
    shape = batch_shape(r.batch)
    members, count = out.get(shape, ([], 0))
    out[shape] = (members + [r], count + _n_informative(r, group))
  return out


def _informative_count(rollouts: list[Rollout], group: int) -> int:
  """Informative groups among the rollouts whose batch shape has the most of them."""
  return max(count for _, count in _by_shape(rollouts, group).values())


def _select_informative(rollouts: list[Rollout], group: int, n_groups: int) -> tuple[Rollout, dict[str, float]]:
  """`n_groups` groups of one batch shape, informative ones first (the shape with the most of them), as one
  Rollout; uninformative groups fill a shortfall, so shapes stay static."""
  by_shape = _by_shape(rollouts, group)
  chosen, _ = max(by_shape.values(), key=lambda entry: entry[1])
  rewards = np.concatenate([_group_rewards(r, group) for r in chosen])
  index, informative = select_groups(rewards, group, n_groups)
  rows = group_rows(index, group)
  texts = [t for r in chosen for t in r.texts]
  merged = Rollout(
      batch=take_examples(concat_examples([r.batch for r in chosen]), index),
      tokens=np.concatenate([r.tokens for r in chosen])[rows],
      lengths=np.concatenate([r.lengths for r in chosen])[rows],
      texts=[texts[i] for i in rows],
      rewards=np.concatenate([r.rewards for r in chosen])[rows],
      per_reward={k: np.concatenate([np.asarray(r.per_reward[k]) for r in chosen])[rows] for k in chosen[0].per_reward})
  seen = sum(int((np.asarray(r.batch["example_mask"]) > 0).sum()) for r in rollouts)
  found = sum(count for _, count in by_shape.values())
  return merged, {"dynamic_sampling/rollouts": float(len(rollouts)),
                  "dynamic_sampling/informative_frac": found / max(seen, 1),
                  "dynamic_sampling/filled_frac": float(1.0 - np.mean(informative))}


def _rollout_metrics(rewards, per_reward, lengths, texts, batch, group, config, gaz, example) -> dict[str, float]:
  """Rewards, response length and distance statistics of the sampled completions (real examples only)."""
  from geojax.geo import haversine_km_np, parse_answers
  m = {"reward": float(rewards[example].mean()), "reward_std_in_group":
       float(rewards.reshape(-1, group).std(axis=1).mean()),
       "response_len": float(lengths[example].mean())}
  for name, value in per_reward.items():
    m[f"reward_{name}"] = float(np.asarray(value)[example].mean())
  parsed = parse_answers(texts, config.data.answer, None)
  lat, lon = np.repeat(np.asarray(batch["lat"]), group), np.repeat(np.asarray(batch["lon"]), group)
  valid = parsed.coord_valid & example
  m["valid_answer_frac"] = float(valid.sum() / max(example.sum(), 1))
  if valid.any():
    d = haversine_km_np(parsed.lat[valid], parsed.lon[valid], lat[valid], lon[valid])
    m["distance_km"] = float(np.median(d))
    m["acc_750km"] = float((d <= 750).sum() / max(example.sum(), 1))
  return m


# ------------------------------------------------------------------------------------------------ main
def train(config: ml_collections.ConfigDict) -> dict[str, dict]:
  """Runs the stages of `config` with evaluations; returns {row label: metrics} (also in workdir/results.*)."""
  check_config(config)
  mesh = geval.setup_runtime(config)
  os.makedirs(config.workdir, exist_ok=True)
  writer = runtime.MetricWriter(os.path.join(config.workdir, "tb") if config.log.tensorboard else None)
  results: dict[str, dict] = {}
  start = time.time()
  with jax.set_mesh(mesh):
    tokenizer = geval.load_tokenizer_for(config)
    train_records = geval.load_records(config, "train")
    eval_records = geval.load_records(config, config.eval.split)
    writer.log(f"data: {len(train_records)} train / {len(eval_records)} {config.eval.split} records; "
               f"devices: {jax.device_count()} ({jax.process_count()} processes), mesh {dict(mesh.shape)}")
    model = geval.build_model(config, tokenizer, mesh)

    def evaluate_fn(m, label, out_dir):
      t0 = time.time()
      result = geval.evaluate(m, tokenizer, eval_records, config, out_dir, label)
      writer.log(f"[eval] {label}: median {result['median_km']:.0f} km, acc@750km {result['acc_750km']:.1%} "
                 f"({time.time() - t0:.0f}s)")
      return result

    def record(label, m, slug):
      results[label] = evaluate_fn(m, label, os.path.join(config.workdir, f"eval_{slug}"))
      writer.write(len(results), results[label], prefix=f"eval/{slug}/")
      _write_results(config.workdir, results)

    if config.eval_before:
      record("untrained" if not config.model.hf_path else "base", model, "start")
    for name in config.stages:
      run = run_sft if name == "sft" else run_grpo
      model = run(config, model, tokenizer, mesh, writer, train_records, evaluate_fn)
      if config.eval.at_stage_end:
        record(f"after {name.upper()}", model, name)
  writer.close()
  if jax.process_index() == 0:
    print(f"\n{config.eval.split} split, {results[next(iter(results))]['n'] if results else 0} examples, "
          f"wall time {time.time() - start:.0f}s\n{format_table(results)}", flush=True)
  return results


def _write_results(workdir: str, results: dict) -> None:
  if jax.process_index() != 0:
    return
  with open(os.path.join(workdir, "results.json"), "w") as f:
    json.dump(results, f, indent=2)
  with open(os.path.join(workdir, "results.md"), "w") as f:
    f.write(format_table(results) + "\n")


def main(argv: list[str]) -> None:
  del argv
  from absl import flags
  logging.set_verbosity(logging.WARNING)  # keep Orbax's per-save INFO lines off the console
  try:
    train(flags.FLAGS.config)
  except gconfig.ConfigError as e:
    raise SystemExit(f"error: {e}") from None
  except runtime.NonFiniteError as e:
    raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
  gconfig.define_config_flag()
  gconfig.run(main)
