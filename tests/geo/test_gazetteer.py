"""Gazetteer contents and the jnp nearest-city index against reverse_geocoder (mode 2)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import reverse_geocoder

from geojax.geo import Gazetteer

# reverse_geocoder mode 2 forks worker processes; they only run scipy, so the JAX fork warning is moot.
pytestmark = pytest.mark.filterwarnings("ignore:os.fork:RuntimeWarning")


def test_load_is_cached_and_complete(gaz):
  assert Gazetteer.load() is gaz
  assert len(gaz) == 144_563
  for column in ("lat", "lon", "name", "admin1", "admin2", "country_code"):
    assert len(getattr(gaz, column)) == len(gaz)
  row = int(np.nonzero((gaz.name == "El Tarter") & (gaz.country_code == "AD"))[0][0])
  assert (gaz.lat[row], gaz.lon[row], gaz.admin1[row]) == (42.57952, 1.65362, "Canillo")
  assert gaz.country_codes[gaz.country_id[row]] == "AD"
  assert gaz.admin1_names[gaz.admin1_id[row]] == "Canillo"
  assert gaz.admin1_country[gaz.admin1_id[row]] == gaz.country_id[row]


def test_country_names_and_continents(gaz):
  assert gaz.country_name("JP") == "Japan"
  assert gaz.country_name("XK") == "Kosovo"
  assert gaz.country_name("AN") == "Netherlands Antilles"
  assert gaz.country_name(gaz.country_index("US")) == "United States"
  assert gaz.country_name(-5) == ""
  present = sorted(set(gaz.country_code.tolist()))
  for code in present:
    assert gaz.country_name(code) and gaz.country_name(code) != code, code
    assert gaz.continent(code) in {"Africa", "Antarctica", "Asia", "Europe", "North America", "Oceania",
                                   "South America", "Seven seas (open ocean)"}, code
  assert (gaz.continent("FR"), gaz.continent("BR"), gaz.continent("AU"), gaz.continent("XK")) == (
    "Europe", "South America", "Oceania", "Europe")


def _rg_rows(lat, lon):
  """Rows that reverse_geocoder.search(mode=2) picks (its results are the dicts of its location list)."""
  results = reverse_geocoder.search(list(zip(lat.tolist(), lon.tolist())), mode=2, verbose=False)
  locations = reverse_geocoder.RGeocoder(mode=2, verbose=False).locations
  position = {id(loc): i for i, loc in enumerate(locations)}
  return np.array([position[id(r)] for r in results])


def test_nearest_agrees_with_reverse_geocoder(gaz):
  rng = np.random.default_rng(0)
  n = 100_000
  lat = np.degrees(np.arcsin(rng.uniform(-1, 1, n)))
  lon = rng.uniform(-180, 180, n)
  theirs = _rg_rows(lat, lon)
  ours = np.asarray(gaz.nearest(jnp.asarray(lat, jnp.float32), jnp.asarray(lon, jnp.float32)))
  host = gaz.nearest_np(lat, lon)
  agreement, host_agreement = (ours == theirs).mean(), (host == theirs).mean()
  print(f"agreement with reverse_geocoder: jnp {agreement:.6f}, numpy {host_agreement:.6f}")
  assert agreement >= 0.999  # float32: near-ties may go either way
  assert host_agreement >= 0.99999  # float64 host twin: the same metric and arithmetic as reverse_geocoder
  # The jnp path's disagreements are float32 near-ties: its pick is (almost) as close in that metric.
  d_ours = (gaz.lat[ours] - lat) ** 2 + (gaz.lon[ours] - lon) ** 2
  d_theirs = (gaz.lat[theirs] - lat) ** 2 + (gaz.lon[theirs] - lon) ** 2
  assert np.all(np.sqrt(d_ours) - np.sqrt(d_theirs) <= 1e-4)


def test_nearest_near_cities_and_edges(gaz):
  rng = np.random.default_rng(1)
  rows = rng.choice(len(gaz), 20_000, replace=False)
  # Points a few hundred metres from real cities (the dense case) and on the domain's edges.
  lat = np.clip(gaz.lat[rows] + rng.normal(0, 0.003, rows.shape), -90, 90)
  lon = np.clip(gaz.lon[rows] + rng.normal(0, 0.003, rows.shape), -180, 180)
  edge_lat = np.concatenate([np.full(500, 90.0), np.full(500, -90.0), rng.uniform(-90, 90, 1000)])
  edge_lon = np.concatenate([rng.uniform(-180, 180, 1000), np.where(rng.random(1000) < 0.5, -180.0, 180.0)])
  lat, lon = np.concatenate([lat, edge_lat]), np.concatenate([lon, edge_lon])
  assert (gaz.nearest_np(lat, lon) == _rg_rows(lat, lon)).mean() >= 0.999


def test_nearest_is_jittable_and_total(gaz):
  f = jax.jit(lambda a, b: gaz.nearest(a, b))
  paris = f(jnp.array([48.8566]), jnp.array([2.3522]))
  assert paris.dtype == jnp.int32 and gaz.name[int(paris[0])] == "Paris"
  odd = np.asarray(f(jnp.array([np.nan, 1e30, -95.0, 0.0]), jnp.array([0.0, 0.0, 10.0, 540.0])))
  assert np.all((odd >= 0) & (odd < len(gaz)))
  assert gaz.nearest(jnp.zeros((2, 3)), jnp.zeros((2, 3))).shape == (2, 3)
  # Longitudes beyond [-180, 180] wrap into [-180, 180): 540 -> -180.
  assert int(odd[3]) == int(gaz.nearest_np([0.0], [-180.0])[0])


def test_first_nearest_call_under_jit():
  fresh = Gazetteer.load()  # a new instance: no device index yet
  f = jax.jit(fresh.nearest)
  first = f(jnp.array([35.6895]), jnp.array([139.6917]))
  again = jax.jit(lambda a, b: fresh.nearest(a, b) + 0)(jnp.array([35.6895]), jnp.array([139.6917]))
  assert int(first[0]) == int(again[0]) and fresh.name[int(first[0])] == "Tokyo"


@pytest.mark.parametrize("lat, lon, city, cc", [
  (48.8566, 2.3522, "Paris", "FR"), (35.6895, 139.6917, "Tokyo", "JP"), (-33.8679, 151.2073, "Sydney", "AU"),
  (40.7128, -74.0060, "New York City", "US"), (-22.9028, -43.2075, "Rio de Janeiro", "BR")])
def test_famous_places(gaz, lat, lon, city, cc):
  row = int(gaz.nearest_np([lat], [lon])[0])
  assert (gaz.name[row], gaz.country_code[row]) == (city, cc)
