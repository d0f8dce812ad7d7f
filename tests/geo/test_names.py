"""Free-text names -> gazetteer ids and coordinates, on real place names."""
import numpy as np
import pytest

from geojax.geo import haversine_km_np

COUNTRY_ALIASES = {
  "USA": "US", "United States of America": "US", "the United States": "US", "U.S.A.": "US", "UK": "GB",
  "Great Britain": "GB", "England": "GB", "Czechia": "CZ", "Czech Republic": "CZ", "Holland": "NL",
  "The Netherlands": "NL", "South Korea": "KR", "Korea, Republic of": "KR", "North Korea": "KP",
  "Russia": "RU", "Russian Federation": "RU", "Ivory Coast": "CI", "Côte d’Ivoire": "CI", "Cote d'Ivoire": "CI",
  "Iran": "IR", "Viet Nam": "VN", "Vietnam": "VN", "Türkiye": "TR", "Turkey": "TR", "Deutschland": "DE",
  "España": "ES", "JAPAN": "JP", "japan ": "JP", "Brasil": "BR", "México": "MX", "DRC": "CD",
  "Republic of the Congo": "CG", "UAE": "AE", "Burma": "MM", "Myanmar": "MM", "Kosovo": "XK",
  "Taiwan": "TW", "Macedonia": "MK", "Swaziland": "SZ", "Bolivia": "BO", "Tanzania": "TZ", "Laos": "LA",
  "Syria": "SY", "Vatican": "VA", "Bosnia and Herzegovina": "BA", "Saint Lucia": "LC", "St. Lucia": "LC",
  "Trinidad and Tobago": "TT", "Hong Kong": "HK", "FRA": "FR", "DEU": "DE", "Tokyo, Japan": "JP",
}


@pytest.mark.parametrize("text, code", sorted(COUNTRY_ALIASES.items()))
def test_country_aliases(gaz, text, code):
  assert gaz.country_codes[gaz.resolve_country(text)] == code


def test_every_country_name_resolves_to_itself(gaz):
  for cid in range(gaz.num_countries):
    assert gaz.resolve_country(gaz.country_name(cid)) == cid, gaz.country_name(cid)
    assert gaz.resolve_country(gaz.country_codes[cid]) == cid


@pytest.mark.parametrize("text", ["", "   ", "Xanadu Nowhereland", "1234", None, "<answer>"])
def test_unknown_names(gaz, text):
  assert gaz.resolve_country(text) == -1
  assert gaz.resolve_city(text) == -1
  assert gaz.geocode(text, text, text) is None


def test_sampled_gazetteer_rows_round_trip(gaz):
  """300 random rows: (city, state, country) -> the row's coordinate. Names repeated inside one state
  (several 'Kebonsari' in East Java) are ambiguous by construction, so those only count in the 25 km rate."""
  rng = np.random.default_rng(0)
  rows = rng.choice(len(gaz), 300, replace=False)
  key = np.char.add(np.char.add(gaz.country_code, "|"), np.char.add(np.char.add(gaz.admin1, "|"), gaz.name))
  _, inverse, counts = np.unique(key, return_inverse=True, return_counts=True)
  unique = counts[inverse.reshape(-1)][rows] == 1
  forms = [lambda s: s, str.upper, str.lower]
  for form in forms:
    d = np.array([haversine_km_np(*gaz.geocode(form(str(gaz.name[r])), form(str(gaz.admin1[r])),
                                               form(gaz.country_name(str(gaz.country_code[r])))),
                                  gaz.lat[r], gaz.lon[r]) for r in rows])
    assert (d[unique] < 1.0).mean() >= 0.99
    assert (d < 25.0).mean() >= 0.95


@pytest.mark.parametrize("city, state, country, lat, lon", [
  ("Paris", None, None, 48.857, 2.349), ("London", None, None, 51.509, -0.126), ("Tokyo", None, None, 35.69, 139.69),
  ("Cairo", None, None, 30.06, 31.25), ("Sydney", None, None, -33.87, 151.21), ("New York", None, None, 40.71, -74.01),
  ("NYC", None, "USA", 40.71, -74.01), ("São Paulo", None, "Brasil", -23.55, -46.64),
  ("München", None, "Germany", 48.14, 11.58),
  ("Zürich", None, "Switzerland", 47.37, 8.55), ("Kraków", None, "Poland", 50.06, 19.94),
  ("Montréal", "Québec", "Canada", 45.51, -73.59),
  ("Bogotá", None, "Colombia", 4.61, -74.08), ("Reykjavík", None, "Iceland", 64.14, -21.90),
  ("Malmö", None, "Sweden", 55.61, 13.00),
  ("Springfield", "IL", "USA", 39.80, -89.64), ("Springfield", "Illinois", "United States", 39.80, -89.64),
  ("Portland", "Oregon", "US", 45.52, -122.68), ("Portland", "Maine", "US", 43.66, -70.26),
  ("St. Petersburg", None, "Russia", 59.94, 30.31), ("Kyiv", None, "Ukraine", 50.45, 30.52),
  ("Bombay", None, "India", 19.07, 72.88),
  ("Sapporo City", "Hokkaido Prefecture", "Japan", 43.06, 141.35), ("Rio", None, "Brazil", -22.90, -43.21),
  ("Abidjan", None, "Ivory Coast", 5.35, -4.00), ("Seoul", None, "South Korea", 37.57, 126.98),
  ("Prague", None, "Czechia", 50.09, 14.42),
  ("Amsterdam", None, "Holland", 52.37, 4.89), ("Edinburgh", "Scotland", "UK", 55.95, -3.20),
  (None, "Bavaria", "Germany", 49.0, 11.5), (None, None, "Iceland", 64.14, -21.90),
])
def test_known_places(gaz, city, state, country, lat, lon):
  point = gaz.geocode(city, state, country)
  assert point is not None
  limit = 300.0 if city is None else 10.0  # a region or country geocodes to its most prominent city
  assert haversine_km_np(point[0], point[1], lat, lon) < limit


def test_resolution_respects_the_given_levels(gaz):
  us = gaz.resolve_country("USA")
  paris_tx = gaz.resolve_city("Paris", us, gaz.resolve_admin1("Texas", us))
  assert (gaz.country_code[paris_tx], gaz.admin1[paris_tx]) == ("US", "Texas")
  assert gaz.country_code[gaz.resolve_city("Paris")] == "FR"
  assert gaz.resolve_city("Paris", gaz.resolve_country("Japan")) == -1
  ca = gaz.resolve_admin1("CA")
  assert gaz.admin1_names[ca] == "California" and gaz.admin1_country[ca] == us
  assert gaz.admin1_names[gaz.resolve_admin1("Hokkaido Prefecture", gaz.resolve_country("Japan"))] == "Hokkaido"
