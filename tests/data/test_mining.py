"""Hard-sample mining against a float64 haversine brute force."""
import numpy as np
import pytest

from geojax.data.mining import drop_near_hotspots, near_hotspots


def _haversine_km(lat1, lon1, lat2, lon2):
  lat1, lon1, lat2, lon2 = map(np.radians, (lat1, lon1, lat2, lon2))
  a = np.sin((lat2 - lat1) / 2) ** 2 + np.cos(lat1) * np.cos(lat2) * np.sin((lon2 - lon1) / 2) ** 2
  return 2 * 6371.0 * np.arcsin(np.sqrt(np.clip(a, 0, 1)))


def _brute_force(lat, lon, hlat, hlon, radius):
  d = _haversine_km(lat[:, None], lon[:, None], hlat[None, :], hlon[None, :])
  return (d <= radius).any(axis=1)


def _points(rng, n, clustered):
  if not clustered:
    return np.degrees(np.arcsin(rng.uniform(-1, 1, n))), rng.uniform(-180, 180, n)
  centers = np.array([[48.85, 2.35], [40.7, -74.0], [35.7, 139.7], [89.9, 0.0], [-89.5, 100.0], [0.0, 179.9],
                      [0.0, -179.9], [-33.9, 151.2]])
  c = centers[rng.integers(0, len(centers), n)]
  return np.clip(c[:, 0] + rng.normal(0, 2, n), -90, 90), (c[:, 1] + rng.normal(0, 3, n) + 180) % 360 - 180


@pytest.mark.parametrize("radius", [1.0, 25.0, 200.0, 750.0, 2500.0, 15000.0])
@pytest.mark.parametrize("clustered", [False, True])
def test_matches_brute_force(radius, clustered):
  rng = np.random.default_rng(int(radius) + clustered)
  lat, lon = _points(rng, 3000, clustered)
  hlat, hlon = _points(rng, 400, clustered)
  expected = _brute_force(lat, lon, hlat, hlon, radius)
  np.testing.assert_array_equal(near_hotspots(lat, lon, hlat, hlon, radius, max_pairs=5000), expected)
  np.testing.assert_array_equal(drop_near_hotspots(lat, lon, hlat, hlon, radius), ~expected)


def test_edge_cases():
  lat, lon = np.array([0.0, 10.0, np.nan, 0.0]), np.array([0.0, 10.0, 0.0, 179.99])
  assert drop_near_hotspots(lat, lon, [], [], 200).all()
  keep = drop_near_hotspots(lat, lon, [0.0, np.nan], [-179.99, 5.0], 200)
  np.testing.assert_array_equal(keep, [True, True, True, False])  # across the antimeridian; NaN sample kept
  assert not drop_near_hotspots(lat[:2], lon[:2], [45.0], [45.0], 30000).any()
  # Exactly on a hotspot, and just inside / outside the radius along a meridian (1 deg = 111.19 km).
  keep = drop_near_hotspots([0.0, 1.79, 1.81], [0.0, 0.0, 0.0], [0.0], [0.0], 200.0)
  np.testing.assert_array_equal(keep, [False, False, True])


def test_hotspots_are_the_true_locations_of_predictions_within_the_radius():
  from geojax.data.mining import Subset, hotspots
  rows = [{"true_lat": 1.0, "true_lon": 2.0, "distance_km": 150.0}, {"true_lat": 3.0, "true_lon": 4.0,
          "distance_km": 250.0}, {"true_lat": 5.0, "true_lon": 6.0, "distance_km": None},  # unreadable answer
          {"true_lat": 7.0, "true_lon": 8.0, "distance_km": 200.0}]
  lat, lon = hotspots(rows, 200.0)
  np.testing.assert_array_equal(lat, [1.0, 7.0])
  np.testing.assert_array_equal(lon, [2.0, 8.0])
  assert hotspots(rows[1:3], 200.0)[0].shape == (0,)
  view = Subset(["a", "b", "c", "d"], [3, 1])
  assert len(view) == 2 and [view[0], view[1]] == ["d", "b"]
