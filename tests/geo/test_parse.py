"""Answer parsers: each format, auto-detection, name resolution, and a fuzz run that must never raise."""
import random
import time

import numpy as np
import pytest

from geojax.geo import parse_answers


def test_formats(gaz):
  texts = [
    "Country: Japan / State: Hokkaido / City: Sapporo / Coordinates: (43.06, 141.35)",
    "<think>Red barns and lavender.</think>\n<answer>country: France\ncity: Paris</answer>",
    "{'LOC': [35.68, 139.69]}",
    '{"LOC": [-33.87, 151.21]}',
    "(40.71, -74.01)",
    "48.85, 2.35",
  ]
  p = parse_answers(texts, "auto", gaz)
  np.testing.assert_allclose(p.lat, [43.06, 48.85341, 35.68, -33.87, 40.71, 48.85], rtol=1e-6)
  np.testing.assert_allclose(p.lon, [141.35, 2.3488, 139.69, 151.21, -74.01, 2.35], rtol=1e-6)
  assert p.coord_valid.all() and p.format_ok.all()
  assert p.coord_from_text.tolist() == [True, False, True, True, True, True]
  assert p.n_coords.tolist() == [1, 0, 1, 1, 1, 1]
  assert p.globe_format_ok.tolist() == [False, True, False, False, False, False]
  assert [gaz.country_codes[i] if i >= 0 else "" for i in p.country_id] == ["JP", "FR", "", "", "", ""]
  assert gaz.admin1_names[p.admin1_id[0]] == "Hokkaido"
  assert gaz.name[p.city_id[0]] == "Sapporo" and gaz.name[p.city_id[1]] == "Paris"
  assert p.think[1] == "Red barns and lavender." and p.city[1] == "Paris" and p.country[1] == "France"


def test_explicit_formats_and_flags(gaz):
  p = parse_answers(["(1, 2) and (3, 4)"], "latlon")
  assert p.n_coords[0] == 2 and not p.format_ok[0] and (p.lat[0], p.lon[0]) == (1, 2)
  p = parse_answers(["Coordinates: (91.0, 10.0)", "Coordinates: (10, 181)", "Coordinates: (nan, 1)"], "chain")
  assert not p.coord_valid.any() and np.isnan(p.lat).all()
  p = parse_answers(["<think>a</think><answer>country: Japan\ncity: Tokyo"], "globe", gaz)
  assert not p.format_ok[0] and p.country_id[0] == -1  # unclosed answer: no answer block
  p = parse_answers(["<answer>country: Peru\ncity: Lima</answer> <answer>country: Chile\ncity: Santiago</answer>"],
                    "globe", gaz)
  assert p.country[0] == "Peru" and not p.format_ok[0]  # the first answer counts (as GLOBE); no think: bad format
  p = parse_answers(["<think>a</think><answer>country: Peru</answer>\n", "plain </think> text"], "globe")
  assert not p.format_ok[0]  # nothing may follow </answer>
  assert p.think[1] == "plain"  # reasoning = text before the first </think>
  p = parse_answers(["<think>x</think> <answer>country: Atlantisland\ncity: Nowhere</answer>"], "globe", gaz)
  assert p.format_ok[0] and not p.coord_valid[0] and p.country_id[0] == -1
  p = parse_answers(["<think>x</think><answer>country: Japan</answer>"], "globe", gaz)
  assert p.coord_valid[0] and not p.coord_from_text[0]  # country-only answers geocode to the country
  with pytest.raises(ValueError):
    parse_answers(["x"], "yaml")


def _fuzz_strings(n, seed=0):
  rng = random.Random(seed)
  pieces = ["<think>", "</think>", "<answer>", "</answer>", "<answer", "country:", "city:", "Country: ", "State:",
            " / ", "City:", "Coordinates:", "(", ")", ",", "[", "]", "{'LOC': [", '{"LOC":[', "}", "1e308", "-1e308",
            "1e999", "nan", "NaN", "-", "+", "inf", "-inf", "9" * 400, "0." + "1" * 300, ".", "e", "E-5", "°", "N", "S",
            "E", "W", "\n", "\t", " ", "Japan", "Paris", "USA", "Côte d’Ivoire", "東京", "🙂", "\x00", "\ud7ff", "ß",
            "Springfield", "IL", "St.", "'", '"', "\\", "：", "—", "|"]
  for _ in range(n):
    k = rng.randint(0, 14)
    parts = []
    for _ in range(k):
      r = rng.random()
      if r < 0.6:
        parts.append(rng.choice(pieces))
      elif r < 0.85:
        parts.append(repr(rng.uniform(-400, 400)) if rng.random() < 0.7 else str(rng.randint(-10**6, 10**6)))
      else:
        parts.append("".join(chr(rng.randint(1, 0x2FFFF)) for _ in range(rng.randint(1, 4))))
    yield "".join(parts)


def test_fuzz_never_raises(gaz):
  texts = list(_fuzz_strings(100_000))
  texts += [None, 12, b"bytes", "(" * 10000 + "1, 2" + ")" * 10000, "1" * 100000, "<think>" * 5000]
  start = time.time()
  for fmt in ("auto",):
    p = parse_answers(texts, fmt, gaz)
    assert len(p) == len(texts)
    ok = p.coord_valid
    assert np.all(np.isfinite(p.lat[ok])) and np.all(np.abs(p.lat[ok]) <= 90) and np.all(np.abs(p.lon[ok]) <= 180)
    assert np.all(np.isnan(p.lat[~ok]))
  for fmt in ("chain", "globe", "loc", "latlon"):
    parse_answers(texts[:5000], fmt, gaz)
  elapsed = time.time() - start
  print(f"fuzz: {len(texts) + 20000} strings in {elapsed:.1f}s")
  assert elapsed < 30


def test_auto_reads_a_loc_answer_as_loc(gaz):
  """fmt='auto' on a Geo-R LOC dictionary inside GLOBE's tags parses, and scores, what fmt='loc' does."""
  from geojax.geo import GeoTargets, score
  texts = ["<answer>{'LOC': [48.85, 2.35]}</answer>",
           "<think>Paris.</think><answer>{\"LOC\": [48.85, 2.35]}</answer>",
           "<think>Paris.</think>\n{'LOC': [48.85, 2.35]}",
           "<think>x</think><answer>{'LOC': [1, 2]} {'LOC': [3, 4]}</answer>"]
  auto, loc = parse_answers(texts, "auto", gaz), parse_answers(texts, "loc", gaz)
  for field in ("lat", "lon", "coord_valid", "n_coords", "format_ok", "country_id", "city_id"):
    np.testing.assert_array_equal(getattr(auto, field), getattr(loc, field), err_msg=field)
  assert auto.coord_valid.all() and auto.format_ok.tolist() == [True, True, True, False]
  targets = GeoTargets.from_coordinates([48.85] * 4, [2.35] * 4, gaz)
  weights = {"geo_r_distance": 1.0, "geo_r_format": 1.0}
  np.testing.assert_array_equal(score(texts, targets, weights, fmt="auto", gaz=gaz)[0],
                                score(texts, targets, weights, fmt="loc", gaz=gaz)[0])
  # A GLOBE answer stays GLOBE, even with a LOC pair in its reasoning.
  p = parse_answers(["<think>LOC: [1, 2]</think><answer>country: France\ncity: Paris</answer>"], "auto", gaz)
  assert p.country[0] == "France" and p.n_coords[0] == 0 and p.globe_format_ok[0]
