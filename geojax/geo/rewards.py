"""Rewards of Geo-R and GLOBE (plus a hierarchy and an exponential distance reward) as batched jnp functions.

Every reward takes `batch`, a mapping of jnp arrays built by `reward_batch` (parsed answer + targets), and
keyword parameters, and returns float32 [B]. Malformed answers score 0. `score` is what the trainer calls.

By default the rewards read the answer through geojax's lenient parser (`geojax.geo.parse`: any letter case,
fullwidth colons, LOC pairs anywhere in the text), so they credit answers the papers' released code scores 0.
With `strict=True` (`grpo.reward_params.<name>.strict`) the Geo-R and GLOBE rewards score the raw completion
exactly as their releases do, apart from three release bugs (see `release_loc`, `release_visual_fraction`,
`geo_r_format`); the release_* functions below are that scoring, read from the released code.
"""
from __future__ import annotations

import ast
import dataclasses
import math
import re
import warnings
from typing import Callable, Mapping, Sequence

import jax.numpy as jnp
import numpy as np

from geojax.geo.distance import haversine_km
from geojax.geo.parse import ParsedAnswers, parse_answers, valid_coordinate

MAX_DISTANCE_KM = 20000.0
GLOBE_NAME_RATIO = 0.7
GEOSCORE_TAU_KM = 1492.7


@dataclasses.dataclass
class GeoTargets:
  """Ground truth per example: coordinate, level names and ids (from the coordinate's nearest city), clues."""
  lat: np.ndarray  # float32 [B]
  lon: np.ndarray
  country: list  # names (GLOBE's accuracy compares these strings)
  admin1: list
  city: list
  country_id: np.ndarray  # int32 [B]
  admin1_id: np.ndarray
  city_id: np.ndarray  # gazetteer row of the nearest city
  clues: list  # list[str] per example

  def __len__(self) -> int:
    return len(self.lat)

  @classmethod
  def from_coordinates(cls, lat, lon, gaz=None, clues=None, country=None, admin1=None, city=None) -> "GeoTargets":
    """Targets from coordinates by reverse geocoding; names given explicitly (a dataset's own labels)
    replace the gazetteer's where non-empty."""
    from geojax.geo.chain import levels_of_row
    if gaz is None:
      from geojax.geo.gazetteer import Gazetteer
      gaz = Gazetteer.load()
    lat = np.atleast_1d(np.asarray(lat, np.float32))
    lon = np.atleast_1d(np.asarray(lon, np.float32))
    rows = gaz.nearest_np(lat, lon).astype(np.int32)
    levels = [levels_of_row(gaz, int(r)) for r in rows]
    given = {"country": country, "admin1": admin1, "city": city}
    names = {}
    for k, key in enumerate(("country", "admin1", "city")):
      names[key] = [lv[k] for lv in levels]
      if given[key] is not None:
        names[key] = [str(g) if isinstance(g, str) and g.strip() else d for g, d in zip(given[key], names[key])]
    return cls(lat=lat, lon=lon, country=names["country"], admin1=names["admin1"], city=names["city"],
               country_id=gaz.country_id[rows].astype(np.int32), admin1_id=gaz.admin1_id[rows].astype(np.int32),
               city_id=rows, clues=[_clue_list(c) for c in (clues if clues is not None else [None] * len(lat))])


def _clue_list(clues) -> list[str]:
  """A clue list from a list / array / single string / None."""
  if clues is None:
    return []
  if isinstance(clues, str):
    return [clues]
  try:
    return [str(c) for c in clues]
  except TypeError:
    return []


# ---------------------------------------------------------------------------------------------- host-side parts
def globe_name_match(pred: str, truth: str, ratio: float = GLOBE_NAME_RATIO) -> bool:
  """GLOBE: one name is a case-insensitive substring of the other and len(short) / len(long) >= ratio."""
  if not isinstance(pred, str) or not isinstance(truth, str):
    return False
  a, b = pred.strip().lower(), truth.strip().lower()
  if not a or not b:
    return False
  short, long = sorted((a, b), key=len)
  return short in long and len(short) / len(long) >= ratio


def visual_fraction(think: str, clues: Sequence[str]) -> float:
  """GLOBE visual match: fraction of the distinct clue entities that appear (case-insensitively) in the
  reasoning."""
  clues = sorted({c.strip().lower() for c in clues if isinstance(c, str) and c.strip()})
  if not clues or not isinstance(think, str):
    return 0.0
  text = think.lower()
  return sum(c in text for c in clues) / len(clues)


# ---------------------------------------------------------------- the releases' scoring, for strict=True
# GLOBE: lingli1996/GLOBE examples/train/grpo/globe/plugin.py (GeoLocAccuracyV2ORM, GeoVisalEntityMatching2ORM,
# MathFormat). Geo-R: aialt/geo-r src/open-r1-multimodal/src/open_r1/vlm_modules/qwen_module.py (loc_reward,
# extract_loc_from_string, distance_to_reward), the rewards grpo_rec.py trains with.
_RELEASE_ANSWER_RE = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)  # case-sensitive; the first block
# Case-sensitive, ASCII colon, no word boundary ('ethnicity: x' is a city), and \s* may cross newlines.
_RELEASE_FIELD_RE = {"country": re.compile(r"country:\s*([^\n]+)"), "city": re.compile(r"city:\s*([^\n]+)")}
_RELEASE_FORMAT_RE = re.compile(r"<think>.*?</think>\s*<answer>.*?</answer>\Z", re.DOTALL)  # used with match()
GEO_R_RELEASE_RADIUS_KM = 6371.0


def release_globe_names(text: str) -> tuple[str, str]:
  """GLOBE release: (country, city) of the first case-sensitive <answer> block, stripped and lower-cased;
  '' where a field is missing. No length cap and no punctuation stripping ('us.' stays 'us.')."""
  m = _RELEASE_ANSWER_RE.search(text)
  body = m.group(1).strip() if m else ""
  fields = [_RELEASE_FIELD_RE[key].search(body) for key in ("country", "city")]
  return tuple(f.group(1).strip().lower() if f else "" for f in fields)


def release_name_match(pred: str, truth: str, ratio: float = GLOBE_NAME_RATIO) -> bool:
  """GLOBE release: `pred` (a field of `release_globe_names`) and the truth, lower-cased, one inside the other
  with length ratio >= ratio; the truth is not stripped and the ratio uses its length before lower-casing."""
  if not pred or not isinstance(truth, str):
    return False
  p, t = pred.lower(), truth.lower()
  return (p in t and len(pred) / len(truth) >= ratio) or (t in p and len(truth) / len(pred) >= ratio)


def release_visual_fraction(text: str, clues: Sequence[str]) -> float:
  """GLOBE release: fraction of the distinct lower-cased clues found in the text before the first </think>
  (the whole text without one; <think> tags removed). Clues are not stripped. Release bug not reproduced: an
  empty clue string, found in any text, counted as matched."""
  think = text.split("</think>", 1)[0].replace("<think>", "").lower()
  tags = {c.lower() for c in clues} - {""}
  return sum(t in think for t in tags) / len(tags) if tags else 0.0


def release_globe_format(text: str) -> bool:
  """GLOBE release: the whole completion (untruncated) matches ^<think>.*?</think>\\s*<answer>.*?</answer>$."""
  return _RELEASE_FORMAT_RE.match(text) is not None


def release_loc(text: str) -> tuple[float, float]:
  """Geo-R release: the whole completion is read with ast.literal_eval and must be a dict whose 'LOC' (that key
  exactly) unpacks into two ints / floats / bools, e.g. "{'LOC': [48.85, 2.35]}" ((NaN, NaN) otherwise: code
  fences, text around the dict, other keys; the release scores those 0). The pair is returned even when it is
  not a coordinate on Earth: the release's reward for those is a bug `geo_r_distance` does not reproduce."""
  try:
    with warnings.catch_warnings():  # literal_eval warns on escapes like '\d'; as errors they would change the result
      warnings.simplefilter("ignore")
      data = ast.literal_eval(text)
    lat, lon = data.get("LOC")
    if isinstance(lat, (int, float)) and isinstance(lon, (int, float)):  # what math.radians accepts
      return float(lat), float(lon)
  except Exception:  # as the release: anything unreadable scores 0
    pass
  return math.nan, math.nan


def release_distance_reward(lat: float, lon: float, true_lat: float, true_lon: float, first_km: float = 750.0,
                            second_km: float = 3000.0, last_km: float = MAX_DISTANCE_KM) -> float:
  """Geo-R release: the piecewise-linear reward of the float64 haversine distance (R 6371 km, the release's
  formula and operation order), rounded to 4 decimals; 0 where the release's math fails (asin of a > 1)."""
  try:
    p1, l1, p2, l2 = (math.radians(x) for x in (lat, lon, true_lat, true_lon))
    a = math.sin((p2 - p1) / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin((l2 - l1) / 2) ** 2
    d = 2 * math.asin(math.sqrt(a)) * GEO_R_RELEASE_RADIUS_KM
  except (ValueError, OverflowError):
    return 0.0
  if d <= first_km:
    r = 1.0 - (d / first_km) * 0.5
  elif d <= second_km:
    r = 0.5 - ((d - first_km) / (second_km - first_km)) * 0.3
  elif d <= last_km:
    r = 0.2 - ((d - second_km) / (last_km - second_km)) * 0.2
  else:
    r = 0.0
  return round(r, 4)


def _release_fields(texts: Sequence, targets: GeoTargets) -> dict:
  """The strict rewards' inputs, from the raw completions (non-strings read as '')."""
  texts = [t if isinstance(t, str) else "" for t in texts]
  names = [release_globe_names(t) for t in texts]
  loc = np.array([release_loc(t) for t in texts], np.float64).reshape(len(texts), 2)
  return {
    "release_country_match": jnp.asarray([release_name_match(c, g) for (c, _), g in zip(names, targets.country)],
                                         bool),
    "release_city_match": jnp.asarray([release_name_match(c, g) for (_, c), g in zip(names, targets.city)], bool),
    "release_visual_frac": jnp.asarray([release_visual_fraction(t, c) for t, c in zip(texts, targets.clues)],
                                       jnp.float32),
    "release_globe_format_ok": jnp.asarray([release_globe_format(t) for t in texts], bool),
    # float64 numpy, read on the host by geo_r_distance(strict=True): the release computes in float64.
    "release_lat": loc[:, 0], "release_lon": loc[:, 1],
    "release_true_lat": np.asarray(targets.lat, np.float64), "release_true_lon": np.asarray(targets.lon, np.float64),
  }


def _release(batch, key: str):
  if key not in batch:
    raise KeyError(f"strict=True needs batch[{key!r}]: build the batch with reward_batch(parsed, targets, texts)")
  return batch[key]


def reward_batch(parsed: ParsedAnswers, targets: GeoTargets, texts: Sequence[str] | None = None
                 ) -> dict[str, jnp.ndarray]:
  """The arrays every reward reads (host string matching done here, once). With the raw completions `texts`,
  also the release_* fields the strict rewards read."""
  n = len(parsed)
  return {
    "pred_lat": jnp.asarray(np.nan_to_num(parsed.lat), jnp.float32),
    "pred_lon": jnp.asarray(np.nan_to_num(parsed.lon), jnp.float32),
    "coord_valid": jnp.asarray(parsed.coord_valid),
    "coord_from_text": jnp.asarray(parsed.coord_from_text),
    "n_coords": jnp.asarray(parsed.n_coords),
    "format_ok": jnp.asarray(parsed.format_ok),
    "globe_format_ok": jnp.asarray(parsed.globe_format_ok),
    "pred_country_id": jnp.asarray(parsed.country_id),
    "pred_admin1_id": jnp.asarray(parsed.admin1_id),
    "pred_city_id": jnp.asarray(parsed.city_id),
    "country_match": jnp.asarray([globe_name_match(parsed.country[i], targets.country[i]) for i in range(n)], bool),
    "city_match": jnp.asarray([globe_name_match(parsed.city[i], targets.city[i]) for i in range(n)], bool),
    "visual_frac": jnp.asarray([visual_fraction(parsed.think[i], targets.clues[i]) for i in range(n)], jnp.float32),
    "true_lat": jnp.asarray(targets.lat, jnp.float32),
    "true_lon": jnp.asarray(targets.lon, jnp.float32),
    "true_country_id": jnp.asarray(targets.country_id),
    "true_admin1_id": jnp.asarray(targets.admin1_id),
    "true_city_id": jnp.asarray(targets.city_id),
    **(_release_fields(texts, targets) if texts is not None else {}),
  }


# -------------------------------------------------------------------------------------------------- jnp rewards
def _distance(batch) -> jnp.ndarray:
  return haversine_km(batch["pred_lat"], batch["pred_lon"], batch["true_lat"], batch["true_lon"])


def piecewise_distance_reward(d: jnp.ndarray, first_km: float = 750.0, second_km: float = 3000.0,
                              last_km: float = MAX_DISTANCE_KM) -> jnp.ndarray:
  """Geo-R: linear 1 -> 0.5 over [0, first], 0.5 -> 0.2 over [first, second], 0.2 -> 0 over [second, last]."""
  r = jnp.interp(d, jnp.array([0.0, first_km, second_km, last_km]), jnp.array([1.0, 0.5, 0.2, 0.0]))
  return jnp.where(d <= last_km, r, 0.0).astype(jnp.float32)


def geo_r_distance(batch, first_km: float = 750.0, second_km: float = 3000.0, strict: bool = False) -> jnp.ndarray:
  """Geo-R distance reward, released-code breakpoints (750 / 3000 km); 0 without a valid coordinate.

  Lenient (default): the coordinate the answer format's parser finds (a LOC pair anywhere in the text, any key
  case or quoting, in code fences; a '(lat, lon)' pair; names geocoded), distance in float32.
  strict: the release's scoring on the host (`release_loc`, `release_distance_reward`): only a completion that is
  a whole Python dict literal with the key 'LOC' scores, float64, rounded to 4 decimals. As in lenient mode,
  a pair off the Earth (|lat| > 90 or |lon| > 180) scores 0; the release scores it (a bug).
  """
  if strict:
    columns = [np.asarray(_release(batch, k)) for k in ("release_lat", "release_lon", "release_true_lat",
                                                          "release_true_lon")]
    return jnp.asarray([release_distance_reward(lat, lon, tl, tn, first_km, second_km) if valid_coordinate(lat, lon)
                        else 0.0 for lat, lon, tl, tn in zip(*(c.tolist() for c in columns))], jnp.float32)
  return jnp.where(batch["coord_valid"], piecewise_distance_reward(_distance(batch), first_km, second_km), 0.0)


def geo_r_distance_paper(batch, first_km: float = 750.0, second_km: float = 2500.0,
                         strict: bool = False) -> jnp.ndarray:
  """Geo-R distance reward, paper breakpoints (750 / 2500 km); strict: the release's parsing and arithmetic
  (see `geo_r_distance`) at these breakpoints."""
  return geo_r_distance(batch, first_km, second_km, strict)


def geo_r_format(batch, strict: bool = False) -> jnp.ndarray:
  """1 iff the answer holds exactly one '(lat, lon)' pair (the paper's rule). The release's only format reward is
  a regex for a four-integer bounding box, which never matches a coordinate (a bug): `strict` is accepted, so
  that every Geo-R reward takes it, and changes nothing."""
  del strict
  return (batch["n_coords"] == 1).astype(jnp.float32)


def globe_accuracy(batch, strict: bool = False) -> jnp.ndarray:
  """GLOBE: 1.0 when city and country names match, 0.2 when only the country does, else 0.

  Lenient (default): names from the answer format's parser (any letter case of the labels and of <answer>, a
  fullwidth colon, trailing '.,;' stripped, 'Country: X / City: Y' chains without tags) and `globe_name_match`.
  strict: the release (`release_globe_names`, `release_name_match`): lower-case 'country:' / 'city:' in the
  first lower-case <answer> block, names compared as written ('US.' does not match 'US').
  """
  if strict:
    country, city = _release(batch, "release_country_match"), _release(batch, "release_city_match")
  else:
    country, city = batch["country_match"], batch["city_match"]
  return jnp.where(country & city, 1.0, jnp.where(country, 0.2, 0.0)).astype(jnp.float32)


def globe_visual(batch, strict: bool = False) -> jnp.ndarray:
  """GLOBE: fraction of the example's clue entities named in the reasoning.

  Lenient (default): `visual_fraction` of the reasoning the answer format's parser finds (none outside the
  'globe' format), clues stripped. strict: `release_visual_fraction` of the raw text before the first
  </think> (the whole text without one), except that an empty clue is not counted as matched.
  """
  return (_release(batch, "release_visual_frac") if strict else batch["visual_frac"]).astype(jnp.float32)


def globe_format(batch, strict: bool = False) -> jnp.ndarray:
  """GLOBE: 1 iff the completion matches ^<think>.*?</think>\\s*<answer>.*?</answer>$ (DOTALL; like the
  release, nothing may follow </answer>). Lenient mode reads the first 20,000 characters (parse.MAX_CHARS);
  strict the whole completion, as the release does."""
  return (_release(batch, "release_globe_format_ok") if strict else batch["globe_format_ok"]).astype(jnp.float32)


def exp_distance(batch, tau_km: float = GEOSCORE_TAU_KM) -> jnp.ndarray:
  """exp(-d / tau): GeoScore / 5000 at the default tau."""
  return jnp.where(batch["coord_valid"], jnp.exp(-_distance(batch) / tau_km), 0.0).astype(jnp.float32)


def hierarchy(batch, gaz=None, consistency_weight: float = 0.25) -> jnp.ndarray:
  """Levels of the predicted coordinate (its nearest city) against the truth, plus text/coordinate agreement.

  levels = mean of [country ok, state ok, city ok] (state ids are per country, city = same name and state);
  consistency = fraction of the levels named in the text that the coordinate's nearest city agrees with
  (0 when nothing is named). Reward = (1 - w) levels + w consistency; 0 without a valid coordinate.
  """
  if gaz is None:
    from geojax.geo.gazetteer import Gazetteer
    gaz = Gazetteer.load()
  row = gaz.nearest(batch["pred_lat"], batch["pred_lon"])
  country_of = jnp.asarray(gaz.country_id)
  admin1_of = jnp.asarray(gaz.admin1_id)
  city_key = jnp.asarray(gaz.city_key)
  country = country_of[row]
  admin1 = admin1_of[row]
  city = city_key[row]
  levels = ((country == batch["true_country_id"]).astype(jnp.float32)
            + (admin1 == batch["true_admin1_id"]).astype(jnp.float32)
            + (city == city_key[batch["true_city_id"]]).astype(jnp.float32)) / 3.0
  named = [(batch["pred_country_id"], country, None), (batch["pred_admin1_id"], admin1, None),
           (batch["pred_city_id"], city, city_key)]
  agree = jnp.zeros_like(levels)
  count = jnp.zeros_like(levels)
  for named_id, coord_id, key in named:
    is_named = named_id >= 0
    named_value = key[jnp.maximum(named_id, 0)] if key is not None else named_id
    agree = agree + jnp.where(is_named & (named_value == coord_id), 1.0, 0.0)
    count = count + is_named.astype(jnp.float32)
  consistency = jnp.where(count > 0, agree / jnp.maximum(count, 1.0), 0.0)
  total = (1.0 - consistency_weight) * levels + consistency_weight * consistency
  return jnp.where(batch["coord_valid"], total, 0.0).astype(jnp.float32)


REWARDS: dict[str, Callable[..., jnp.ndarray]] = {
  "geo_r_distance": geo_r_distance,
  "geo_r_distance_paper": geo_r_distance_paper,
  "geo_r_format": geo_r_format,
  "globe_accuracy": globe_accuracy,
  "globe_visual": globe_visual,
  "globe_format": globe_format,
  "hierarchy": hierarchy,
  "exp_distance": exp_distance,
}
_NEEDS_GAZETTEER = {"hierarchy"}


def score(completions: Sequence[str], targets: GeoTargets, weights: Mapping[str, float], fmt: str = "auto",
          combine: str = "sum", gaz=None, params: Mapping[str, Mapping] | None = None):
  """Rewards of a batch of completions.

  weights: reward name -> weight (names from REWARDS; zero weights are skipped).
  combine: 'sum' -> sum_i w_i r_i (GLOBE, Geo-R code); 'product' -> prod_i w_i r_i (Geo-R paper:
  distance x format). params: per-reward keyword arguments, e.g. {'exp_distance': {'tau_km': 500}} or
  {'globe_accuracy': {'strict': True}} (the release's scoring of the raw completion, whatever `fmt`).
  Returns (total float32 [B], {name: float32 [B]}) as numpy arrays.
  """
  unknown = sorted(set(weights) - set(REWARDS))
  if unknown:
    raise KeyError(f"unknown reward(s) {unknown}; known: {sorted(REWARDS)}")
  if combine not in ("sum", "product"):
    raise ValueError(f"combine must be 'sum' or 'product', got {combine!r}")
  if len(completions) != len(targets):
    raise ValueError(f"{len(completions)} completions for {len(targets)} targets")
  if gaz is None:
    from geojax.geo.gazetteer import Gazetteer
    gaz = Gazetteer.load()
  params = params or {}
  strict = any(dict(params.get(name) or {}).get("strict") for name, weight in weights.items() if weight)
  batch = reward_batch(parse_answers(completions, fmt, gaz), targets, completions if strict else None)
  per_reward = {}
  total = np.zeros(len(completions), np.float32) if combine == "sum" else np.ones(len(completions), np.float32)
  for name, weight in weights.items():
    if not weight:
      continue
    kwargs = dict(params.get(name, {}))
    if name in _NEEDS_GAZETTEER:
      kwargs.setdefault("gaz", gaz)
    value = np.asarray(REWARDS[name](batch, **kwargs), np.float32)
    per_reward[name] = value
    total = total + weight * value if combine == "sum" else total * (weight * value)
  return total.astype(np.float32), per_reward
