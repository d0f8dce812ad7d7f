"""Geo-R's Chain of Region: coordinate -> 'Country: X / State: Y / City: Z / Coordinates: (lat, lon)' and back."""
from __future__ import annotations

import dataclasses
import re

import numpy as np

DEFAULT_TEMPLATE = "Country: {country} / State: {state} / City: {city} / Coordinates: ({lat}, {lon})"
DEFAULT_PRECISION = 6

_NUMBER = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?"
# A coordinate pair, optionally with degree signs and hemisphere letters: (43.45, 142.61), (43.45°N, 142.61°E).
PAIR_RE = re.compile(
  rf"\(\s*({_NUMBER})\s*°?\s*([NSns])?\s*,\s*({_NUMBER})\s*°?\s*([EWew])?\s*\)")
_FIELD_RE = {
  level: re.compile(rf"\b{label}\s*[:：]\s*([^/\n|]*)", re.IGNORECASE)
  for level, label in (("country", "country"), ("state", r"(?:state|province|region)"), ("city", r"(?:city|place)"))}
_COORD_LABEL_RE = re.compile(r"\bcoordinates?\s*[:：]", re.IGNORECASE)


@dataclasses.dataclass
class ChainOfRegion:
  """Parsed Chain of Region; missing fields are '' and NaN."""
  country: str = ""
  state: str = ""
  city: str = ""
  lat: float = float("nan")
  lon: float = float("nan")
  n_coords: int = 0


def format_chain(country: str, state: str, city: str, lat: float, lon: float,
                 template: str = DEFAULT_TEMPLATE, precision: int = DEFAULT_PRECISION) -> str:
  return template.format(country=country, state=state, city=city,
                         lat=f"{float(lat):.{precision}f}", lon=f"{float(lon):.{precision}f}")


def levels_of_row(gaz, row: int) -> tuple[str, str, str]:
  """(country name, state, city) of a gazetteer row; a missing admin1 falls back to admin2, then the city."""
  country = gaz.country_name(str(gaz.country_code[row]))
  state = str(gaz.admin1[row]) or str(gaz.admin2[row]) or str(gaz.name[row])
  return country, state, str(gaz.name[row])


def chain_of_region(lat, lon, gaz=None, template: str = DEFAULT_TEMPLATE,
                    precision: int = DEFAULT_PRECISION):
  """Chain of Region of a coordinate (or a list of them, giving a list of strings) by reverse geocoding."""
  if gaz is None:
    from geojax.geo.gazetteer import Gazetteer
    gaz = Gazetteer.load()
  scalar = np.ndim(lat) == 0 and np.ndim(lon) == 0
  lats = np.atleast_1d(np.asarray(lat, np.float64))
  lons = np.atleast_1d(np.asarray(lon, np.float64))
  rows = gaz.nearest_np(lats, lons)
  out = [format_chain(*levels_of_row(gaz, int(r)), la, lo, template, precision) for r, la, lo in zip(rows, lats, lons)]
  return out[0] if scalar else out


def pair_value(match: re.Match) -> tuple[float, float]:
  """(lat, lon) of a PAIR_RE match, with S / W hemisphere letters turning the value negative."""
  lat = float(match.group(1))
  lon = float(match.group(3))
  if match.group(2) and match.group(2).upper() == "S":
    lat = -abs(lat)
  if match.group(4) and match.group(4).upper() == "W":
    lon = -abs(lon)
  return lat, lon


def parse_chain(text: str) -> ChainOfRegion:
  """Inverse of `chain_of_region` (tolerant of case, spacing and missing fields; never raises on str input).

  The coordinate is the first pair after a 'Coordinates:' label, else the first pair in the text.
  """
  out = ChainOfRegion()
  if not isinstance(text, str):
    return out
  for level, pattern in _FIELD_RE.items():
    m = pattern.search(text)
    if m:
      setattr(out, level, m.group(1).strip().strip(".,;").strip())
  pairs = list(PAIR_RE.finditer(text))
  out.n_coords = len(pairs)
  if pairs:
    label = _COORD_LABEL_RE.search(text)
    after = [p for p in pairs if label and p.start() >= label.end()]
    try:
      out.lat, out.lon = pair_value((after or pairs)[0])
    except (ValueError, OverflowError):
      pass
  return out
