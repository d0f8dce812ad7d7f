"""haversine_km against float64 numpy and the `haversine` package, float32 accuracy from metres to antipodes."""
import haversine
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from geojax.geo import EARTH_RADIUS_KM, haversine_km, haversine_km_np


def _reference(lat1, lon1, lat2, lon2):
  """Textbook float64 haversine (asin form), independent of ours."""
  p1, l1, p2, l2 = (np.radians(np.asarray(x, np.float64)) for x in (lat1, lon1, lat2, lon2))
  a = np.sin((p2 - p1) / 2) ** 2 + np.cos(p1) * np.cos(p2) * np.sin((l2 - l1) / 2) ** 2
  return 2 * EARTH_RADIUS_KM * np.arcsin(np.sqrt(np.clip(a, 0, 1)))


def _sphere_points(rng, n):
  return (np.degrees(np.arcsin(rng.uniform(-1, 1, n))).astype(np.float32),
          rng.uniform(-180, 180, n).astype(np.float32))


@pytest.mark.parametrize("scale_deg", [1e-4, 1e-2, 1.0, 30.0, 180.0])
def test_float32_relative_error(scale_deg):
  rng = np.random.default_rng(0)
  lat1, lon1 = _sphere_points(rng, 100_000)
  lat2 = np.clip(lat1 + rng.normal(0, scale_deg, lat1.shape), -90, 90).astype(np.float32)
  lon2 = (lon1 + rng.normal(0, scale_deg, lon1.shape)).astype(np.float32)
  ours = np.asarray(jax.jit(haversine_km)(lat1, lon1, lat2, lon2))
  assert ours.dtype == np.float32
  ref = _reference(lat1, lon1, lat2, lon2)  # on the same float32 inputs
  far = ref > 1.0
  if far.any():
    assert np.max(np.abs(ours[far] - ref[far]) / ref[far]) <= 1e-4
  if (~far).any():
    assert np.max(np.abs(ours[~far] - ref[~far])) <= 1e-3  # below 1 km: within a metre


def test_near_antipodes_and_poles():
  rng = np.random.default_rng(1)
  lat1, lon1 = _sphere_points(rng, 50_000)
  lat2 = (-lat1 + rng.normal(0, 1e-3, lat1.shape)).astype(np.float32)
  lon2 = (lon1 + 180 + rng.normal(0, 1e-3, lon1.shape)).astype(np.float32)
  ours = np.asarray(haversine_km(lat1, lon1, lat2, lon2))
  ref = haversine_km_np(lat1, lon1, lat2, lon2)
  assert np.max(np.abs(ours - ref) / ref) <= 1e-4
  pole = np.full_like(lat1, 90.0)
  near_pole = (90 - np.abs(rng.normal(0, 0.05, lat1.shape))).astype(np.float32)
  ours = np.asarray(haversine_km(pole, lon1, near_pole, lon2))
  ref = _reference(pole, lon1, near_pole, lon2)
  far = ref > 1.0
  assert np.max(np.abs(ours[far] - ref[far]) / ref[far]) <= 1e-4


def test_numpy_twin_matches_reference():
  rng = np.random.default_rng(2)
  lat1, lon1 = _sphere_points(rng, 10_000)
  lat2, lon2 = _sphere_points(rng, 10_000)
  np.testing.assert_allclose(haversine_km_np(lat1, lon1, lat2, lon2), _reference(lat1, lon1, lat2, lon2),
                             rtol=1e-9, atol=1e-6)


def test_matches_haversine_package():
  rng = np.random.default_rng(3)
  lat1, lon1 = _sphere_points(rng, 2000)
  lat2, lon2 = _sphere_points(rng, 2000)
  a = np.stack([lat1, lon1], 1).astype(np.float64)
  b = np.stack([lat2, lon2], 1).astype(np.float64)
  # The package uses the mean radius 6371.0088 km; rescale to ours.
  theirs = haversine.haversine_vector(a, b, haversine.Unit.KILOMETERS) * (EARTH_RADIUS_KM / 6371.0088)
  ours = np.asarray(haversine_km(lat1, lon1, lat2, lon2))
  far = theirs > 1.0
  assert np.max(np.abs(ours[far] - theirs[far]) / theirs[far]) <= 1e-4
  assert float(haversine_km(48.8566, 2.3522, 51.5074, -0.1278)) == pytest.approx(343.5, abs=0.5)  # Paris-London


def test_broadcasting_and_jit():
  d = haversine_km(jnp.zeros((3, 1)), 0.0, jnp.zeros((1, 4)), jnp.arange(4.0))
  assert d.shape == (3, 4)
  np.testing.assert_allclose(np.asarray(d[0]), np.arange(4.0) * np.pi / 180 * EARTH_RADIUS_KM, rtol=1e-6)
  assert float(haversine_km(0.0, 0.0, 0.0, 180.0)) == pytest.approx(np.pi * EARTH_RADIUS_KM, rel=1e-6)
  assert float(haversine_km(10.0, 170.0, 10.0, -170.0)) == pytest.approx(float(haversine_km(10.0, 0.0, 10.0, 20.0)),
                                                                         rel=1e-5)
  assert float(haversine_km(0.0, 0.0, 0.0, 0.0)) == 0.0
