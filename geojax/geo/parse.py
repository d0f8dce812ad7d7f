"""Model answers -> arrays. Parsers never raise: anything unreadable becomes an invalid entry."""
from __future__ import annotations

import dataclasses
import math
import re
from typing import Sequence

import numpy as np

from geojax.geo import chain

FORMATS = ("chain", "globe", "loc", "latlon", "auto")
MAX_CHARS = 20000  # longer completions are truncated before parsing (bounded regex time)

# GLOBE's format rule; as in its release, the answer must end the text (\Z: no trailing newline allowed).
GLOBE_FORMAT_RE = re.compile(r"^<think>.*?</think>\s*<answer>.*?</answer>\Z", re.DOTALL)
_ANSWER_RE = re.compile(r"<answer>(.*?)</answer>", re.DOTALL | re.IGNORECASE)
_GLOBE_FIELD_RE = {
  "country": re.compile(r"\bcountry\s*[:：]\s*([^\n<]*)", re.IGNORECASE),
  "state": re.compile(r"\b(?:state|province|region)\s*[:：]\s*([^\n<]*)", re.IGNORECASE),
  "city": re.compile(r"\bcity\s*[:：]\s*([^\n<]*)", re.IGNORECASE),
}
_NUMBER = chain._NUMBER
_BARE_PAIR_RE = re.compile(rf"^\s*({_NUMBER})\s*,\s*({_NUMBER})\s*$")
_LOC_RE = re.compile(rf"""['"]?LOC['"]?\s*:\s*\[\s*({_NUMBER})\s*,\s*({_NUMBER})\s*\]""", re.IGNORECASE)


@dataclasses.dataclass
class ParsedAnswers:
  """Batch of parsed answers (numpy). Ids are -1 when a name is missing or unknown (or no gazetteer)."""
  lat: np.ndarray  # float32 [B], NaN when invalid
  lon: np.ndarray
  coord_valid: np.ndarray  # bool [B]: finite, |lat| <= 90, |lon| <= 180
  coord_from_text: np.ndarray  # bool [B]: the coordinate was written (not geocoded from names)
  n_coords: np.ndarray  # int32 [B]: coordinate pairs found in the answer
  format_ok: np.ndarray  # bool [B]: the format's own rule (see `parse_answers`)
  globe_format_ok: np.ndarray  # bool [B]: GLOBE's <think>/<answer> regex, whatever the format
  country_id: np.ndarray  # int32 [B]
  admin1_id: np.ndarray
  city_id: np.ndarray
  country: list  # str per answer ('' when missing)
  admin1: list
  city: list
  think: list  # reasoning text ('' when none)

  def __len__(self) -> int:
    return len(self.lat)


def valid_coordinate(lat: float, lon: float) -> bool:
  return math.isfinite(lat) and math.isfinite(lon) and abs(lat) <= 90.0 and abs(lon) <= 180.0


def _first(pattern: re.Pattern, text: str) -> str:
  m = pattern.search(text)
  return m.group(1).strip().strip(".,;").strip() if m else ""


def _detect(text: str) -> str:
  lower = text.lower()
  if "<answer" in lower or "<think" in lower:
    # A Geo-R LOC dictionary in GLOBE's tags ("<answer>{'LOC': [..]}</answer>") is read as fmt='loc' reads it:
    # the answer is the first <answer> block, or without one everything after the reasoning.
    answers = _ANSWER_RE.findall(text)
    answer = answers[0] if answers else re.split("</think>", text, maxsplit=1, flags=re.IGNORECASE)[-1]
    return "loc" if "loc" in answer.lower() and _LOC_RE.search(answer) else "globe"
  if "loc" in lower and _LOC_RE.search(text):
    return "loc"
  if "country" in lower or "coordinates" in lower:
    return "chain"
  return "latlon"


def _parse_one(text: str, fmt: str) -> dict:
  """Fields of one answer; format_ok per format:
  chain: exactly one coordinate pair (Geo-R's format reward; names optional);
  globe: the GLOBE regex on the whole completion (names from the first <answer> block); loc: exactly one LOC pair;
  latlon: exactly one pair."""
  out = {"lat": math.nan, "lon": math.nan, "n": 0, "ok": False, "country": "", "admin1": "", "city": "",
         "think": ""}
  text = text[:MAX_CHARS]
  out["globe_ok"] = bool(GLOBE_FORMAT_RE.match(text))
  if fmt == "auto":
    fmt = _detect(text)
  if fmt == "globe":
    out["ok"] = out["globe_ok"]
    # As GLOBE's release: the reasoning is everything before the first </think>, without <think> tags,
    # and the answer is the first <answer> block.
    out["think"] = text.split("</think>", 1)[0].replace("<think>", "").strip()
    answers = _ANSWER_RE.findall(text)
    body = answers[0] if answers else ""
    out["country"] = _first(_GLOBE_FIELD_RE["country"], body)
    out["admin1"] = _first(_GLOBE_FIELD_RE["state"], body)
    out["city"] = _first(_GLOBE_FIELD_RE["city"], body)
    pairs = list(chain.PAIR_RE.finditer(body))
    out["n"] = len(pairs)
    if pairs:
      out["lat"], out["lon"] = chain.pair_value(pairs[0])
  elif fmt == "chain":
    parsed = chain.parse_chain(text)
    out.update(lat=parsed.lat, lon=parsed.lon, n=parsed.n_coords, ok=parsed.n_coords == 1,
               country=parsed.country, admin1=parsed.state, city=parsed.city)
  elif fmt == "loc":
    pairs = _LOC_RE.findall(text)
    out["n"] = len(pairs)
    out["ok"] = len(pairs) == 1
    if pairs:
      out["lat"], out["lon"] = float(pairs[0][0]), float(pairs[0][1])
  elif fmt == "latlon":
    pairs = list(chain.PAIR_RE.finditer(text))
    out["n"] = len(pairs)
    out["ok"] = len(pairs) == 1
    if pairs:
      out["lat"], out["lon"] = chain.pair_value(pairs[0])
    elif len(text) < 100 and (bare := _BARE_PAIR_RE.match(text)):  # '48.85, 2.35' without parentheses
      out["n"], out["ok"] = 1, True
      out["lat"], out["lon"] = float(bare.group(1)), float(bare.group(2))
  else:
    raise ValueError(f"unknown answer format {fmt!r}; expected one of {FORMATS}")
  return out


def parse_answers(texts: Sequence[str], fmt: str = "auto", gaz=None) -> ParsedAnswers:
  """Parses completions into arrays. fmt: 'chain' | 'globe' | 'loc' | 'latlon' | 'auto' (per text: 'globe' with
  <think> / <answer> tags, unless the answer is a LOC dictionary ('loc'); else 'loc' with a LOC pair, 'chain'
  with 'country' or 'coordinates', 'latlon' otherwise).

  Lenient by design (any letter case, fullwidth colons, LOC pairs anywhere): the rewards' strict=True option
  scores the raw completion as the papers' releases do instead (geojax.geo.rewards).

  With a gazetteer, names are resolved to ids, and an answer without a written coordinate is geocoded
  from its names (GLOBE's 'country / city' answers), with `coord_from_text` False.
  """
  if fmt not in FORMATS:
    raise ValueError(f"unknown answer format {fmt!r}; expected one of {FORMATS}")
  n = len(texts)
  lat = np.full(n, np.nan, np.float32)
  lon = np.full(n, np.nan, np.float32)
  valid = np.zeros(n, bool)
  from_text = np.zeros(n, bool)
  n_coords = np.zeros(n, np.int32)
  format_ok = np.zeros(n, bool)
  globe_ok = np.zeros(n, bool)
  ids = np.full((3, n), -1, np.int32)
  names = {"country": [""] * n, "admin1": [""] * n, "city": [""] * n, "think": [""] * n}
  for i, text in enumerate(texts):
    try:
      fields = _parse_one(text if isinstance(text, str) else "", fmt)
    except (ValueError, OverflowError, TypeError, RecursionError):
      continue
    n_coords[i] = fields["n"]
    format_ok[i] = fields["ok"]
    globe_ok[i] = fields["globe_ok"]
    for key in names:
      names[key][i] = fields[key][:200] if key != "think" else fields[key]
    if valid_coordinate(fields["lat"], fields["lon"]):
      lat[i], lon[i], valid[i], from_text[i] = fields["lat"], fields["lon"], True, True
    if gaz is not None:
      try:
        _resolve_names(gaz, i, names, ids, lat, lon, valid)
      except (ValueError, OverflowError, TypeError, IndexError, KeyError):
        pass
  return ParsedAnswers(lat=lat, lon=lon, coord_valid=valid, coord_from_text=from_text, n_coords=n_coords,
                       format_ok=format_ok, globe_format_ok=globe_ok,
                       country_id=ids[0], admin1_id=ids[1], city_id=ids[2],
                       country=names["country"], admin1=names["admin1"], city=names["city"], think=names["think"])


def _resolve_names(gaz, i, names, ids, lat, lon, valid) -> None:
  country = gaz.resolve_country(names["country"][i]) if names["country"][i] else -1
  admin1 = gaz.resolve_admin1(names["admin1"][i], country) if names["admin1"][i] else -1
  if country < 0 and admin1 >= 0:
    country = int(gaz.admin1_country[admin1])
  city = gaz.resolve_city(names["city"][i], country, admin1) if names["city"][i] else -1
  ids[:, i] = country, admin1, city
  if not valid[i] and (country >= 0 or admin1 >= 0 or city >= 0):
    point = gaz.geocode(names["city"][i] or None, names["admin1"][i] or None, names["country"][i] or None)
    if point is not None:
      lat[i], lon[i] = point
      valid[i] = True
