"""Chain of Region: coordinate -> text -> fields, with the gazetteer's names."""
import numpy as np
import pytest

from geojax.geo import DEFAULT_TEMPLATE, chain_of_region, parse_chain
from geojax.geo.chain import format_chain


def test_geo_r_example(gaz):
  text = chain_of_region(43.452002, 142.615358, gaz)
  assert text == "Country: Japan / State: Hokkaido / City: Shimo-furano / Coordinates: (43.452002, 142.615358)"
  parsed = parse_chain(text)
  assert (parsed.country, parsed.state, parsed.city) == ("Japan", "Hokkaido", "Shimo-furano")
  assert (parsed.lat, parsed.lon, parsed.n_coords) == (43.452002, 142.615358, 1)


def test_round_trip_random_points(gaz):
  rng = np.random.default_rng(0)
  lat = np.degrees(np.arcsin(rng.uniform(-1, 1, 300)))
  lon = rng.uniform(-180, 180, 300)
  texts = chain_of_region(lat, lon, gaz)
  rows = gaz.nearest_np(lat, lon)
  for text, row, la, lo in zip(texts, rows, lat, lon):
    parsed = parse_chain(text)
    assert parsed.lat == pytest.approx(la, abs=1e-6) and parsed.lon == pytest.approx(lo, abs=1e-6)
    assert gaz.resolve_country(parsed.country) == gaz.country_id[row]
    assert parsed.city == gaz.name[row]


def test_template_and_precision(gaz):
  template = "{city}, {state}, {country} @ ({lat}, {lon})"
  assert chain_of_region(48.8566, 2.3522, gaz, template=template, precision=2) == (
    "Paris, Ile-de-France, France @ (48.86, 2.35)")
  assert format_chain("A", "B", "C", -1.5, 2.25, DEFAULT_TEMPLATE, 1) == (
    "Country: A / State: B / City: C / Coordinates: (-1.5, 2.2)")


@pytest.mark.parametrize("text, expect", [
  ("country: japan / state: hokkaido / city: biei town / coordinates: (43.45, 142.61)",
   ("japan", "hokkaido", "biei town", 43.45, 142.61, 1)),
  ("Country:France\nState:Ile-de-France\nCity:Paris\nCoordinates:(48.85,2.35).",
   ("France", "Ile-de-France", "Paris", 48.85, 2.35, 1)),
  ("Coordinates: (33.9° S, 151.2° E)", ("", "", "", -33.9, 151.2, 1)),
  ("I first thought (1, 2). Country: Chile / Coordinates: (-33.4, -70.6)", ("Chile", "", "", -33.4, -70.6, 2)),
  ("Country: Peru", ("Peru", "", "", None, None, 0)),
  ("", ("", "", "", None, None, 0)),
])
def test_parse_variants(text, expect):
  parsed = parse_chain(text)
  country, state, city, lat, lon, n = expect
  assert (parsed.country, parsed.state, parsed.city, parsed.n_coords) == (country, state, city, n)
  if lat is None:
    assert np.isnan(parsed.lat) and np.isnan(parsed.lon)
  else:
    assert (parsed.lat, parsed.lon) == (lat, lon)
