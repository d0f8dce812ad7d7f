"""Streaming geolocation metrics: accuracy at 1 / 25 / 200 / 750 / 2500 km, median / mean error, GeoScore,
per-level accuracy, and a Markdown table."""
from __future__ import annotations

from typing import Mapping

import numpy as np

from geojax.geo.distance import EARTH_RADIUS_KM, haversine_km_np

THRESHOLDS_KM = (1, 25, 200, 750, 2500)
GEOSCORE_TAU_KM = 1492.7
# An invalid prediction counts as the farthest possible answer (half the circumference).
INVALID_DISTANCE_KM = float(np.pi * EARTH_RADIUS_KM)
LEVELS = ("country", "state", "city")


class GeoMetrics:
  """Accumulates predictions batch by batch. Distances are kept (4 bytes each), so the median is exact.

  Invalid predictions (valid=False, or NaN / out-of-range coordinates) count as misses at every threshold,
  as INVALID_DISTANCE_KM in the median and mean, and as 0 GeoScore.
  """

  def __init__(self):
    self._distances: list[np.ndarray] = []
    self._n_invalid = 0
    self._level_hits = {level: 0 for level in LEVELS}
    self._level_counts = {level: 0 for level in LEVELS}

  def update(self, pred_lat, pred_lon, true_lat, true_lon, valid=None, country_ok=None, admin1_ok=None,
             city_ok=None) -> None:
    pred_lat, pred_lon, true_lat, true_lon = (np.atleast_1d(np.asarray(x, np.float64))
                                              for x in (pred_lat, pred_lon, true_lat, true_lon))
    ok = np.isfinite(pred_lat) & np.isfinite(pred_lon) & (np.abs(pred_lat) <= 90) & (np.abs(pred_lon) <= 180)
    if valid is not None:
      ok &= np.atleast_1d(np.asarray(valid, bool))
    with np.errstate(invalid="ignore"):
      d = haversine_km_np(np.where(ok, pred_lat, 0.0), np.where(ok, pred_lon, 0.0), true_lat, true_lon)
    d = np.where(ok, d, INVALID_DISTANCE_KM)
    self._distances.append(d.astype(np.float32))
    self._n_invalid += int((~ok).sum())
    for level, hits in zip(LEVELS, (country_ok, admin1_ok, city_ok)):
      if hits is not None:
        hits = np.atleast_1d(np.asarray(hits, bool)) & ok
        self._level_hits[level] += int(hits.sum())
        self._level_counts[level] += len(hits)

  def merge(self, other: "GeoMetrics") -> "GeoMetrics":
    self._distances += other._distances
    self._n_invalid += other._n_invalid
    for level in LEVELS:
      self._level_hits[level] += other._level_hits[level]
      self._level_counts[level] += other._level_counts[level]
    return self

  def result(self) -> dict[str, float]:
    d = np.concatenate(self._distances) if self._distances else np.zeros(0, np.float32)
    n = len(d)
    out: dict[str, float] = {"n": n, "n_invalid": self._n_invalid}
    for t in THRESHOLDS_KM:
      out[f"acc_{t}km"] = float((d <= t).mean()) if n else float("nan")
    out["median_km"] = float(np.median(d)) if n else float("nan")
    out["mean_km"] = float(d.astype(np.float64).mean()) if n else float("nan")
    score = np.where(d >= INVALID_DISTANCE_KM, 0.0, 5000.0 * np.exp(-d.astype(np.float64) / GEOSCORE_TAU_KM))
    out["geoscore"] = float(score.mean()) if n else float("nan")
    for level in LEVELS:
      count = self._level_counts[level]
      out[f"{level}_acc"] = self._level_hits[level] / count if count else float("nan")
    return out


def level_matches(gaz, pred_lat, pred_lon, true_lat, true_lon) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(country_ok, state_ok, city_ok) of predicted vs true coordinates, each level read from the nearest city."""
  pred = gaz.nearest_np(pred_lat, pred_lon)
  true = gaz.nearest_np(true_lat, true_lon)
  return (gaz.country_id[pred] == gaz.country_id[true], gaz.admin1_id[pred] == gaz.admin1_id[true],
          gaz.city_key[pred] == gaz.city_key[true])


_COLUMNS = [("n", "n", "{:d}")] + [(f"acc_{t}km", f"{t} km", "{:.2%}") for t in THRESHOLDS_KM] + [
  ("median_km", "median km", "{:.1f}"), ("mean_km", "mean km", "{:.1f}"), ("geoscore", "GeoScore", "{:.0f}"),
  ("country_acc", "country", "{:.2%}"), ("state_acc", "state", "{:.2%}"), ("city_acc", "city", "{:.2%}")]


def format_table(rows: Mapping[str, Mapping[str, float]]) -> str:
  """Markdown table, one row per label (e.g. {'geojax-7b': metrics.result()}); '-' for missing values."""
  header = "| | " + " | ".join(title for _, title, _ in _COLUMNS) + " |"
  lines = [header, "|" + "---|" * (len(_COLUMNS) + 1)]
  for label, result in rows.items():
    cells = []
    for key, _, fmt in _COLUMNS:
      value = result.get(key)
      if value is None or (isinstance(value, float) and not np.isfinite(value)):
        cells.append("-")
      else:
        cells.append(fmt.format(int(value) if fmt == "{:d}" else value))
    lines.append(f"| {label} | " + " | ".join(cells) + " |")
  return "\n".join(lines)
