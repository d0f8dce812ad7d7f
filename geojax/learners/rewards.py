"""Rewards behind one protocol: (completion texts, prompt batch, group size) -> (total [B*G], {name: [B*G]}).

Rows are group-major (prompt b's G completions in rows b*G .. b*G+G-1), as the sampler returns them. The geo
rewards of `geojax.geo` (weighted and combined by `score`), GLOBE's locatability reward model and any function a
user writes are all implementations; `CombinedRewards` joins several by sum or product of their totals.
"""
from __future__ import annotations

from typing import Callable, Mapping, Protocol, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from geojax.data.chat import LOCATABILITY_USER
from geojax.geo import GeoTargets, score

LOCATABILITY = "locatability"
Scores = tuple[np.ndarray, dict[str, np.ndarray]]


class RewardFunction(Protocol):
  def __call__(self, texts: Sequence[str], batch: Mapping, group: int) -> Scores:
    """Total reward float32 [B*G] and each named component [B*G] of the completions `texts` of `batch`."""


def _per_row(values, group: int) -> list:
  return [v for v in np.asarray(values, dtype=object) for _ in range(group)]


class GeoRewards:
  """Weighted `geojax.geo` rewards (names from geojax.geo.REWARDS), combined by "sum" or "product"."""

  def __init__(self, weights: Mapping[str, float], params: Mapping[str, Mapping] | None = None,
               combine: str = "sum", answer_format: str = "auto", gaz=None):
    from geojax.geo import Gazetteer
    self.weights = {k: float(v) for k, v in weights.items()}
    self.params = {name: dict(kwargs) for name, kwargs in (params or {}).items()}
    self.combine, self.answer_format = combine, answer_format
    self.gaz = gaz if gaz is not None else Gazetteer.load()

  def __call__(self, texts: Sequence[str], batch: Mapping, group: int) -> Scores:
    targets = GeoTargets.from_coordinates(
        np.repeat(np.asarray(batch["lat"]), group), np.repeat(np.asarray(batch["lon"]), group), self.gaz,
        clues=_per_row(batch["clues"], group), country=_per_row(batch["country"], group),
        admin1=_per_row(batch["admin1"], group), city=_per_row(batch["city"], group))
    total, per = score(texts, targets, self.weights, fmt=self.answer_format, combine=self.combine, gaz=self.gaz,
                       params=self.params)
    return total.astype(np.float32), per


class LocatabilityReward:
  """GLOBE's locatability reward: weight x P(yes) / (P(yes) + P(no)) of a VLM asked whether the image is
  locatable, the same for a prompt's G completions."""

  QUESTION = LOCATABILITY_USER  # the prompt `locatability` a reward model is trained on (configs/globe.py)

  def __init__(self, path: str, weight: float, dtype=jnp.float32, mesh=None):
    from geojax.data.tokenizer import load_tokenizer
    from geojax.models import load_hf
    self.weight = float(weight)
    self.tokenizer = load_tokenizer(path)
    self.model = load_hf(path, dtype=dtype, mesh=mesh)
    self.yes = self.tokenizer.encode("yes")[0]
    self.no = self.tokenizer.encode("no")[0]

  def probabilities(self, batch: Mapping) -> np.ndarray:
    """[B] P(yes) of the batch's images, asked with this model's own prompt around the same image patches."""
    from geojax.data.chat import encode_chat
    from geojax.data.mrope import rope_index
    from geojax.models import grid_tuple
    n_image = int(np.prod(batch["image_grid_thw"][0])) // 4
    ids = np.asarray(encode_chat(self.tokenizer, None, self.QUESTION, n_image), np.int32)
    input_ids = np.tile(ids[None], (len(batch["image_grid_thw"]), 1))
    pos, _ = rope_index(input_ids, None, np.asarray(batch["image_grid_thw"]), spatial_merge_size=2,
                        image_token_id=self.tokenizer.image_pad_id)
    logits = self.model(input_ids, None, batch["pixel_values"], grid_tuple(batch["image_grid_thw"]), pos)[:, -1]
    pair = jax.nn.log_softmax(jnp.stack([logits[:, self.yes], logits[:, self.no]], -1), axis=-1)
    return np.asarray(jnp.exp(pair[:, 0]))

  def __call__(self, texts: Sequence[str], batch: Mapping, group: int) -> Scores:
    p = np.repeat(self.probabilities(batch), group).astype(np.float32)
    return self.weight * p, {LOCATABILITY: p}


class FunctionReward:
  """A plain function (texts, batch, group) -> [B*G] rewards as a named reward."""

  def __init__(self, fn: Callable[[Sequence[str], Mapping, int], np.ndarray], name: str = "custom",
               weight: float = 1.0):
    self.fn, self.name, self.weight = fn, name, float(weight)

  def __call__(self, texts: Sequence[str], batch: Mapping, group: int) -> Scores:
    value = np.asarray(self.fn(texts, batch, group), np.float32)
    if value.shape != (len(texts),):
      raise ValueError(f"reward {self.name!r} returned shape {value.shape}; expected ({len(texts)},)")
    return self.weight * value, {self.name: value}


class CombinedRewards:
  """Several reward functions as one: their totals summed or multiplied, their components side by side."""

  def __init__(self, functions: Sequence[RewardFunction], combine: str = "sum"):
    if combine not in ("sum", "product"):
      raise ValueError(f"combine must be 'sum' or 'product', got {combine!r}")
    self.functions, self.combine = list(functions), combine

  def __call__(self, texts: Sequence[str], batch: Mapping, group: int) -> Scores:
    total, per = None, {}
    for fn in self.functions:
      value, parts = fn(texts, batch, group)
      total = value if total is None else total + value if self.combine == "sum" else total * value
      per.update(parts)
    return np.asarray(total, np.float32), per


def as_reward(reward) -> RewardFunction:
  """A RewardFunction from a reward object, or a plain function returning [B*G] rewards."""
  if isinstance(reward, (GeoRewards, LocatabilityReward, FunctionReward, CombinedRewards)):
    return reward
  return FunctionReward(reward, getattr(reward, "__name__", "custom"))


def rewards_from_config(config: ml_collections.ConfigDict, mesh=None, gaz=None) -> RewardFunction:
  """The rewards of `config.grpo`: geo rewards by name and, when grpo.reward_model is set, locatability."""
  from geojax.experiment import DTYPES
  gc = config.grpo
  geo = GeoRewards({k: v for k, v in gc.rewards.items() if k != LOCATABILITY}, gc.reward_params, gc.combine,
                   config.data.answer, gaz)
  weight = float(gc.rewards.get(LOCATABILITY, 0.0))
  if not (gc.reward_model and weight):
    return geo
  return CombinedRewards([geo, LocatabilityReward(gc.reward_model, weight, DTYPES[config.model.dtype], mesh)],
                         gc.combine)
