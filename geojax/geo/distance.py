"""Great-circle distance on a spherical Earth, accurate in float32 from metres to antipodes."""
import jax.numpy as jnp
import numpy as np

EARTH_RADIUS_KM = 6371.0

_DEG = jnp.pi / 180.0


def _cos_lat(lat_deg: jnp.ndarray) -> jnp.ndarray:
  # cos(lat) = sin(90 - |lat|): the subtraction is exact near the poles, where cos(radians(lat)) is not.
  return jnp.sin((90.0 - jnp.abs(lat_deg)) * _DEG)


def haversine_km(lat1, lon1, lat2, lon2) -> jnp.ndarray:
  """Great-circle distance in km between points given in degrees (broadcasting, jit-able).

  Uses d = 2 R atan2(sqrt(a), sqrt(b)) with a = hav(d) and b = hav(pi - d), each written as a sum of
  non-negative terms (b is the haversine to the antipode of the second point), so neither short nor
  near-antipodal distances suffer cancellation. Differences are taken in degrees before the conversion
  to radians, so float32 keeps a relative error below 1e-4 for d > 1 km.
  """
  lat1, lon1, lat2, lon2 = (jnp.asarray(x, dtype=jnp.result_type(x, jnp.float32)) for x in (lat1, lon1, lat2, lon2))
  dlat = lat2 - lat1
  dlon = lon2 - lon1
  dlon = dlon - 360.0 * jnp.round(dlon / 360.0)  # into [-180, 180]
  cos_prod = _cos_lat(lat1) * _cos_lat(lat2)
  sin_half_dlon = jnp.sin(0.5 * dlon * _DEG)
  cos_half_dlon = jnp.cos(0.5 * dlon * _DEG)
  a = jnp.sin(0.5 * dlat * _DEG) ** 2 + cos_prod * sin_half_dlon ** 2
  b = jnp.sin(0.5 * (lat1 + lat2) * _DEG) ** 2 + cos_prod * cos_half_dlon ** 2
  return 2.0 * EARTH_RADIUS_KM * jnp.arctan2(jnp.sqrt(a), jnp.sqrt(b))


def haversine_km_np(lat1, lon1, lat2, lon2) -> np.ndarray:
  """float64 numpy twin of `haversine_km` (host-side metrics and references)."""
  lat1, lon1, lat2, lon2 = (np.asarray(x, np.float64) for x in (lat1, lon1, lat2, lon2))
  rad = np.pi / 180.0
  cos_prod = np.sin((90.0 - np.abs(lat1)) * rad) * np.sin((90.0 - np.abs(lat2)) * rad)
  half_dlon = 0.5 * (lon2 - lon1) * rad
  a = np.sin(0.5 * (lat2 - lat1) * rad) ** 2 + cos_prod * np.sin(half_dlon) ** 2
  b = np.sin(0.5 * (lat1 + lat2) * rad) ** 2 + cos_prod * np.cos(half_dlon) ** 2
  return 2.0 * EARTH_RADIUS_KM * np.arctan2(np.sqrt(a), np.sqrt(b))
