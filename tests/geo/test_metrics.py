"""Streaming metrics against a one-shot numpy computation, and the table."""

import numpy as np
import pytest

from geojax.geo import GeoMetrics, format_table, haversine_km_np, level_matches
from geojax.geo.metrics import INVALID_DISTANCE_KM


def test_streaming_equals_one_shot():
  rng = np.random.default_rng(0)
  n = 10_001
  true_lat = rng.uniform(-80, 80, n)
  true_lon = rng.uniform(-180, 180, n)
  scale = rng.choice([0.001, 0.1, 1.0, 10.0, 60.0], n)
  pred_lat = np.clip(true_lat + rng.normal(0, 1, n) * scale, -90, 90)
  pred_lon = np.clip(true_lon + rng.normal(0, 1, n) * scale, -180, 180)
  valid = rng.random(n) > 0.05
  country_ok = rng.random(n) > 0.3
  m = GeoMetrics()
  for s in np.array_split(np.arange(n), 7):
    m.update(pred_lat[s], pred_lon[s], true_lat[s], true_lon[s], valid=valid[s], country_ok=country_ok[s])
  r = m.result()
  d = np.where(valid, haversine_km_np(pred_lat, pred_lon, true_lat, true_lon), INVALID_DISTANCE_KM)
  assert r["n"] == n and r["n_invalid"] == (~valid).sum()
  for t in (1, 25, 200, 750, 2500):
    assert r[f"acc_{t}km"] == pytest.approx((d <= t).mean(), abs=1e-9)
  assert r["median_km"] == pytest.approx(np.median(d), rel=1e-6)
  assert r["mean_km"] == pytest.approx(d.mean(), rel=1e-5)
  assert r["geoscore"] == pytest.approx(np.where(valid, 5000 * np.exp(-d / 1492.7), 0).mean(), rel=1e-5)
  assert r["country_acc"] == pytest.approx((country_ok & valid).mean())
  assert np.isnan(r["city_acc"])


def test_invalid_coordinates_count_as_misses():
  m = GeoMetrics()
  m.update([np.nan, 100.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0])
  r = m.result()
  assert (r["n_invalid"] == 2 and r["acc_1km"] == pytest.approx(1 / 3)
          and r["median_km"] == pytest.approx(INVALID_DISTANCE_KM))
  merged = GeoMetrics().merge(m)
  assert merged.result()["n"] == 3


def test_level_matches(gaz):
  country, state, city = level_matches(gaz, [48.86, 45.76, 51.5], [2.35, 4.84, -0.12], [48.85, 48.85, 48.85],
                                       [2.34, 2.34, 2.34])
  assert country.tolist() == [True, True, False]
  assert state.tolist() == [True, False, False]
  assert city.tolist() == [True, False, False]


def test_format_table():
  m = GeoMetrics()
  m.update([0.0], [0.0], [0.0], [0.1])
  table = format_table({"ours": m.result(), "empty": {}})
  lines = table.splitlines()
  assert lines[0].startswith("| | n | 1 km | 25 km")
  assert "| ours | 1 | 0.00% | 100.00% |" in lines[2]
  assert lines[3].startswith("| empty | - |")
