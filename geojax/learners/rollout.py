"""Rollouts: prompts read from the loader, G completions sampled per prompt on the current policy, scored on the
host. The training pass sees the completion tokens exactly as sampled (never decoded and re-encoded), and the
sampler's log-probabilities of them (to measure and correct the rollout/trainer mismatch).

A rollout source has two halves so the caller can put device work between them: `sample(params, step)` reads
the prompts and dispatches the sampler (asynchronous), `score(sampled)` waits for the tokens and scores them on
the host. `RolloutSource` is the plain source; `DynamicSampling` (DAPO) wraps one and keeps sampling further
batches until enough groups have rewards that differ.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from geojax import runtime
from geojax.data.batch import (batch_shape, concat_examples, joined_grid, put_batch, repeat_examples,
                               split_microbatches, take_examples)
from geojax.data.mrope import next_positions
from geojax.evaluation import decode_completions
from geojax.models import grid_tuple
from geojax.models.logprobs import chunked_logprobs
from geojax.rl import group_rows, informative_groups, select_groups

PROMPT_KEYS = ("input_ids", "attention_mask", "position_ids", "pixel_values", "example_mask")
HOST_KEYS = ("example_mask", "lat", "lon")  # gathered from every process for advantages and metrics
# Dynamic sampling's extra rollouts fold the base key with this + k (step numbers stay below it), then the step.
EXTRA_ROLLOUT_STREAM = 2 ** 31


@dataclasses.dataclass
class Rollout:
  """One scored rollout on the host: the prompt batch (B examples) and its B*G completions (group-major rows)."""
  batch: dict
  tokens: np.ndarray     # [B*G, N]
  lengths: np.ndarray    # [B*G]
  texts: list
  rewards: np.ndarray    # [B*G]
  per_reward: dict
  logprobs: np.ndarray | None = None  # [B*G, N] the sampler's log-probs of the tokens (None: it gave none)

  def example_rows(self, group: int) -> np.ndarray:
    """[B*G] True on the rows of real examples, False on those of a partial batch's filler examples."""
    return np.repeat(np.asarray(self.batch["example_mask"]) > 0, group)


@dataclasses.dataclass
class Sampled:
  """A rollout whose tokens are on the device: what the reference and training passes take."""
  batch: dict            # host prompt batch
  prompt: dict           # PROMPT_KEYS of `batch` on the mesh
  tokens: jax.Array      # [B*G, N]
  lengths: jax.Array     # [B*G]
  logprobs: jax.Array | None = None  # [B*G, N] the sampler's log-probs of the tokens (None: it gave none)
  scored: Rollout | None = None  # filled by sources that score before choosing (dynamic sampling)
  shards: int = 1  # processes whose `batch`es join into the prompts (each holds its own rows), else 1

  def shape(self, group: int) -> tuple[tuple, int]:
    """(image grids of the B*G rows, prompt length): the static arguments of the jitted passes."""
    return rollout_shape(self.batch, group, self.shards)


def rollout_shape(batch: dict, group: int, shards: int = 1) -> tuple[tuple, int]:
  grid = grid_tuple(joined_grid(batch, shards))
  return tuple(g for g in grid for _ in range(group)), int(np.shape(batch["input_ids"])[1])


class RolloutSource:
  """Reads prompt batches from `loader`, samples `group` completions each with `sampler` and scores them.

  sampler(params, batch, rng) -> GenerateResult (tokens, lengths and, if it has them, logprobs: temperature 1,
  unfiltered, as geojax.sampling returns them); rewards: a geojax.learners.rewards RewardFunction. Step t samples
  with fold_in(key, t).
  """

  def __init__(self, loader, sampler: Callable, rewards: Callable, tokenizer, group: int, key: jax.Array, mesh):
    self.loader, self.sampler, self.rewards, self.tokenizer = loader, sampler, rewards, tokenizer
    self.group, self.key, self.mesh = group, key, mesh

  def _prompt(self, batch: dict) -> tuple[dict, int]:
    """`batch`'s prompts on the mesh, and the processes whose batches join into them."""
    shards = getattr(self.loader, "row_shards", 1)
    keys = [k for k in PROMPT_KEYS if batch.get(k) is not None]  # a text-only prompt has no pixel_values
    return put_batch(batch, self.mesh, keys, shards=shards), shards

  def draw(self, params, batch: dict, key: jax.Array) -> Sampled:
    prompt, shards = self._prompt(batch)
    # rows split over processes: the sampler takes the global prompts (their grid for the joined batch)
    out = self.sampler(params, batch if shards == 1 else dict(prompt, image_grid_thw=joined_grid(batch, shards)),
                       key)
    return Sampled(batch, prompt, out.tokens, out.lengths, getattr(out, "logprobs", None), shards=shards)

  def sample(self, params, step: int) -> Sampled:
    return self.draw(params, next(self.loader), jax.random.fold_in(self.key, step))

  def snapshot(self, params):
    """`params` as `sample` reads them, safe from an update that donates them (`grpo.PolicySnapshot`; a copy for a
    sampler without `snapshot`)."""
    take = getattr(self.sampler, "snapshot", None)
    return take(params) if take is not None else jax.tree.map(jnp.copy, params)

  def replay(self, tokens: jax.Array, lengths: jax.Array, logprobs: jax.Array | None) -> Sampled:
    """The loader's next batch with completions sampled for it before a checkpoint (a one-step off-policy run
    resuming): the prompts are read again, the completions are the saved ones."""
    batch = next(self.loader)
    prompt, shards = self._prompt(batch)
    return Sampled(batch, prompt, tokens, lengths, logprobs, shards=shards)

  def score(self, sampled: Sampled) -> Rollout:
    if sampled.scored is not None:
      return sampled.scored
    tokens, lengths = runtime.to_host(sampled.tokens), runtime.to_host(sampled.lengths)
    texts = decode_completions(self.tokenizer, tokens, lengths)
    logprobs = None if sampled.logprobs is None else runtime.to_host(sampled.logprobs)
    if sampled.shards == 1:
      rewards, per_reward = self.rewards(texts, sampled.batch, self.group)
      return Rollout(sampled.batch, tokens, lengths, texts, np.asarray(rewards, np.float32), per_reward, logprobs)
    # each process scores the completions of its own prompts, then the rewards are gathered
    rewards, per_reward = self.rewards(texts[runtime.process_rows(len(texts))], sampled.batch, self.group)
    rewards = runtime.gather_rows(np.asarray(rewards, np.float32))
    per_reward = {k: runtime.gather_rows(np.asarray(v)) for k, v in per_reward.items()}
    batch = {k: runtime.gather_rows(sampled.batch[k]) for k in HOST_KEYS}  # what advantages and metrics read
    batch["image_grid_thw"] = joined_grid(sampled.batch, sampled.shards)
    return Rollout(batch, tokens, lengths, texts, rewards, per_reward, logprobs)

  def info(self) -> dict[str, float]:
    return {}


class DynamicSampling:
  """DAPO's dynamic sampling over a rollout source: rollouts of further batches (at most `max_rollouts`) until
  `n_groups` groups whose rewards differ are found; uninformative groups fill a shortfall, so shapes stay static.

  The first rollout of a step draws what the plain source would; extra ones use their own key streams.
  """

  def __init__(self, source: RolloutSource, n_groups: int, max_rollouts: int):
    self.source, self.n_groups, self.max_rollouts = source, n_groups, max_rollouts
    self.loader, self.group = source.loader, source.group
    self._info: dict[str, float] = {}

  def sample(self, params, step: int) -> Sampled:
    src = self.source
    rollouts = [src.score(src.sample(params, step))]
    while informative_count(rollouts, self.group) < self.n_groups and len(rollouts) < self.max_rollouts:
      key = jax.random.fold_in(jax.random.fold_in(src.key, EXTRA_ROLLOUT_STREAM + len(rollouts)), step)
      rollouts.append(src.score(src.draw(params, next(src.loader), key)))
    rollout, self._info = select_informative(rollouts, self.group, self.n_groups)
    put = lambda x: None if x is None else runtime.put_global(x, src.mesh)  # noqa: E731
    return Sampled(rollout.batch, put_batch(rollout.batch, src.mesh, PROMPT_KEYS), put(rollout.tokens),
                   put(rollout.lengths), put(rollout.logprobs), scored=rollout)

  def score(self, sampled: Sampled) -> Rollout:
    return sampled.scored

  def info(self) -> dict[str, float]:
    return self._info


def _group_rewards(rollout: Rollout, group: int) -> np.ndarray:
  """Rewards with the groups of filler examples zeroed, so they never count as informative."""
  return np.where(rollout.example_rows(group), rollout.rewards, 0.0)


def _by_shape(rollouts: list[Rollout], group: int) -> dict[tuple, tuple[list[Rollout], int]]:
  """The rollouts grouped by batch shape (only rollouts of one shape can be joined), each group with its number
  of informative groups."""
  out: dict[tuple, tuple[list[Rollout], int]] = {}
  for r in rollouts:
    shape = batch_shape(r.batch)
    members, count = out.get(shape, ([], 0))
    out[shape] = (members + [r], count + int(informative_groups(_group_rewards(r, group), group).sum()))
  return out


def informative_count(rollouts: list[Rollout], group: int) -> int:
  """Informative groups among the rollouts whose batch shape has the most of them."""
  return max(count for _, count in _by_shape(rollouts, group).values())


def select_informative(rollouts: list[Rollout], group: int, n_groups: int) -> tuple[Rollout, dict[str, float]]:
  """`n_groups` groups of one batch shape, informative ones first (the shape with the most of them), as one
  Rollout, and the dynamic_sampling/* metrics."""
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
      per_reward={k: np.concatenate([np.asarray(r.per_reward[k]) for r in chosen])[rows] for k in chosen[0].per_reward},
      logprobs=None if any(r.logprobs is None for r in chosen) else np.concatenate([r.logprobs for r in chosen])[rows])
  seen = sum(int((np.asarray(r.batch["example_mask"]) > 0).sum()) for r in rollouts)
  found = sum(count for _, count in by_shape.values())
  return merged, {"dynamic_sampling/rollouts": float(len(rollouts)),
                  "dynamic_sampling/informative_frac": found / max(seen, 1),
                  "dynamic_sampling/filled_frac": float(1.0 - np.mean(informative))}


# ------------------------------------------------------------------------------------------------ device side
def rollout_sequences(prompt: dict, tokens: jax.Array, lengths: jax.Array, group: int) -> dict:
  """Prompt (each example repeated G times) + sampled completion tokens as training sequences, on device.

  M-RoPE positions of generated text continue from the prompt's next position, as in generation. pixel_values stay
  the prompts' own (each image once): `completion_logprobs` runs the vision tower once per prompt and repeats the
  features over its group.
  """
  rows = repeat_examples({k: v for k, v in prompt.items() if k != "pixel_values"}, group)
  pos = rows["position_ids"]
  n_new = tokens.shape[1]
  completion_mask = (jnp.arange(n_new)[None, :] < lengths[:, None]).astype(jnp.int32)
  start = next_positions(pos, rows["attention_mask"])  # [B*G]
  new_pos = jnp.broadcast_to((start[:, None] + jnp.arange(n_new)[None, :])[None], (3,) + tokens.shape)
  seq = {
      "input_ids": jnp.concatenate([rows["input_ids"], tokens.astype(rows["input_ids"].dtype)], axis=1),
      "attention_mask": jnp.concatenate([rows["attention_mask"], completion_mask.astype(rows["attention_mask"].dtype)],
                                        axis=1),
      "position_ids": jnp.concatenate([pos, new_pos.astype(pos.dtype)], axis=2),
      "completion_mask": completion_mask.astype(jnp.float32) * rows["example_mask"][:, None],
  }
  if prompt.get("pixel_values") is not None:  # text prompts have none
    seq["pixel_values"] = prompt["pixel_values"]
  return seq


def completion_logprobs(model, seq: dict, grid: tuple, prompt_len: int, chunk_size: int = 256,
                        group: int = 1) -> jax.Array:
  """[B*G, N] log-probabilities of the completion tokens of `seq` (rollout_sequences) under `model`.

  `grid` holds the image grids of the rows, each image's G times in a run (`Sampled.shape`). seq["pixel_values"] holds
  each prompt's image once (rollout_sequences), or once per row (then each row is its own prompt); G is read from
  the shapes; without images (text prompts) it is `group`, the rows of each prompt in `seq` (rollout_sequences
  repeats each prompt G times; 1: every row its own prompt). The G rows of a prompt share it, so the prompt and its
  image run through the model once
  (`QwenVL.prefix_hidden_states`: the same values as G full sequences, up to rounding), and the LM head runs on the
  completion positions only.

  The completion is read as text: a sampled token that happens to be the image-pad id was sampled with its text
  embedding, and is read with it here too.
  """
  ids, mask, pos = seq["input_ids"], seq["attention_mask"], seq["position_ids"]
  pixels = seq.get("pixel_values")
  group = _group_of(grid, pixels.shape[0]) if pixels is not None and grid else group
  hp, hn = model.prefix_hidden_states(ids[::group, :prompt_len], mask[::group, :prompt_len],
                                      pos[:, ::group, :prompt_len], pixels, grid[::group] if grid else None,
                                      ids[:, prompt_len:-1], mask[:, prompt_len:-1], pos[:, :, prompt_len:-1], group)
  last = jnp.repeat(hp[:, -1:], group, axis=0) if group > 1 else hp[:, -1:]  # predicts the first completion token
  return chunked_logprobs(jnp.concatenate([last, hn], axis=1), model.language_model.output_matrix(),
                          ids[:, prompt_len:], chunk_size=chunk_size, compute_dtype=model.dtype, checkpoint=False)


def microbatched_logprobs(model, seq: dict, grid: tuple, prompt_len: int, n_micro: int, group: int = 1) -> jax.Array:
  """completion_logprobs of `seq` in `n_micro` equal micro-batches one after another (a `jax.lax.map`), so that a
  forward-only pass (the reference policy, the old policy of several updates per rollout) holds one micro-batch's
  activations, as the update does (grad_accum). Each micro-batch holds whole groups (n_micro divides the prompts)."""
  if n_micro == 1:
    return completion_logprobs(model, seq, grid, prompt_len, group=group)
  micro = split_microbatches(seq, n_micro)
  out = jax.lax.map(lambda mb: completion_logprobs(model, mb, grid[:len(grid) // n_micro], prompt_len, group=group),
                    micro)
  return out.reshape(-1, out.shape[-1])


def _group_of(grid: tuple, n_patches: int) -> int:
  """G from the per-row grids and the number of patch rows given (each prompt's image once: G; once per row: 1)."""
  total = sum(t * h * w for t, h, w in grid)
  group = total // n_patches if n_patches else 1
  if group < 1 or group * n_patches != total or len(grid) % group or any(
      grid[i] != grid[i - i % group] for i in range(len(grid))):
    raise ValueError(f"{n_patches} patch rows fit neither one image per row nor one per group of grids {grid}")
  return group


# ------------------------------------------------------------------------------------------------ metrics
def rollout_metrics(rollout: Rollout, group: int, answer_format: str, gaz) -> dict[str, Any]:
  """Rewards, response length and the evaluation's distance metrics (same names, same definitions: an invalid
  answer counts as the farthest possible) of the sampled completions of real examples."""
  from geojax.geo import GeoMetrics, parse_answers
  example = rollout.example_rows(group)
  rewards = rollout.rewards
  m = {"reward": float(rewards[example].mean()),
       "reward_std_in_group": float(rewards.reshape(-1, group).std(axis=1).mean()),
       "response_len": float(rollout.lengths[example].mean())}
  for name, value in rollout.per_reward.items():
    m[f"reward_{name}"] = float(np.asarray(value)[example].mean())
  parsed = parse_answers([t for t, keep in zip(rollout.texts, example) if keep], answer_format, gaz)
  true_lat = np.repeat(np.asarray(rollout.batch["lat"]), group)[example]
  true_lon = np.repeat(np.asarray(rollout.batch["lon"]), group)[example]
  metrics = GeoMetrics()
  metrics.update(parsed.lat, parsed.lon, true_lat, true_lon, valid=parsed.coord_valid)
  result = metrics.result()
  m["valid_answer_frac"] = float(parsed.coord_valid.mean()) if len(true_lat) else 0.0
  m.update({k: result[k] for k in ("median_km", "acc_200km", "acc_750km", "geoscore")})
  return m
