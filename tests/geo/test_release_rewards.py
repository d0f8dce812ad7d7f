"""strict=True against the papers' released reward code, transcribed below as the reference.

The reference functions copy the releases' logic line by line (GLOBE: lingli1996/GLOBE
examples/train/grpo/globe/plugin.py; Geo-R: aialt/geo-r src/open-r1-multimodal/src/open_r1/vlm_modules/
qwen_module.py, loc_reward and its helpers), so they are independent of geojax's implementation. The README's
three release bugs are applied on top: an impossible coordinate and an empty clue are not credited, and Geo-R's
bounding-box format regex is not used at all.
"""
import ast
import inspect
import random
import re
import warnings
from math import asin, cos, radians, sin, sqrt

import jax.numpy as jnp
import numpy as np
import pytest

from geojax.geo import REWARDS, GeoTargets, parse_answers, reward_batch, score

PARIS = (48.8566, 2.3522)
STRICT_REWARDS = ("geo_r_distance", "geo_r_distance_paper", "geo_r_format", "globe_accuracy", "globe_visual",
                  "globe_format")


# ------------------------------------------------------------------ the releases, transcribed (the reference)
def globe_release_accuracy(content, gt_country, gt_city):
  """GeoLocAccuracyV2ORM.__call__ for one completion (sol = gt_country + '\\t' + gt_city)."""
  match_city_or_country_threshhomd = 0.7

  def match_location(pred, ground_truth):
    len1 = len(pred)
    len2 = len(ground_truth)
    pred = pred.lower()
    ground_truth = ground_truth.lower()
    if len1 == 0:
      return False
    if (pred in ground_truth and len1 / len2 >= match_city_or_country_threshhomd) or (
        ground_truth in pred and len2 / len1 >= match_city_or_country_threshhomd):
      return True
    return False

  pattern = r'<answer>(.*?)</answer>'
  match = re.search(pattern, content, re.DOTALL)
  pred = match.group(1).strip() if match else ""
  country_match = re.search(r'country:\s*([^\n]+)', pred)
  city_match = re.search(r'city:\s*([^\n]+)', pred)
  country = country_match.group(1).strip().lower() if country_match else ""
  city = city_match.group(1).strip().lower() if city_match else ""
  if match_location(city, gt_city) and match_location(country, gt_country):
    reward = 1.0
  elif match_location(country, gt_country):
    reward = 0.2
  else:
    reward = 0.0
  return reward


def globe_release_visual(content, tags):
  """GeoVisalEntityMatching2ORM.__call__ for one completion (tags = [ent["text"] for ent in entities])."""
  def calculate_entity_tag_reward(tags, string):
    string_lower = string.lower()
    tags_set = set(tag.lower() for tag in tags)
    matched_tags_count = sum(1 for tag in tags_set if tag in string_lower)
    if len(tags_set) == 0:
      return 0.0
    return matched_tags_count / len(tags_set)

  think_content = content.split("</think>")[0].replace("<think>", "")
  return calculate_entity_tag_reward(tags, think_content)


def globe_release_format(content):
  """MathFormat.__call__ (the format reward GLOBE's scripts use) for one completion."""
  pattern = r"^<think>.*?</think>\s*<answer>.*?</answer>(?![\s\S])"
  return 1.0 if re.match(pattern, content, re.DOTALL | re.MULTILINE) else 0.0


def extract_loc_from_string(text):
  try:
    with warnings.catch_warnings():  # the release runs with warnings as warnings; pytest may turn them into errors
      warnings.simplefilter("ignore")
      data = ast.literal_eval(text)
    return data.get('LOC', None)
  except (SyntaxError, ValueError):
    return None


def haversine_distance(coord1, coord2):
  lat1, lon1 = coord1
  lat2, lon2 = coord2
  lat1, lon1, lat2, lon2 = map(radians, [lat1, lon1, lat2, lon2])
  dlat = lat2 - lat1
  dlon = lon2 - lon1
  a = sin(dlat / 2)**2 + cos(lat1) * cos(lat2) * sin(dlon / 2)**2
  c = 2 * asin(sqrt(a))
  r = 6371
  return c * r


def distance_to_reward(coord1, coord2):
  distance = haversine_distance(coord1, coord2)
  if distance <= 750:
    return round(1.0 - (distance / 750) * 0.5, 4)
  elif distance <= 3000:
    return round(0.5 - ((distance - 750) / (3000 - 750)) * 0.3, 4)
  elif distance <= 20000:
    return round(0.2 - ((distance - 3000) / (20000 - 3000)) * 0.2, 4)
  else:
    return 0.0


def geo_r_release_loc_reward(content, sol):
  """Qwen2VLModule.loc_reward for one completion (logging left out)."""
  reward = 0.0
  try:
    answer = sol
    pred = extract_loc_from_string(content)
    reward = distance_to_reward(pred, answer)
  except Exception:
    pass
  return reward


# The README's release bugs, applied to the reference.
def geo_r_expected(content, sol):
  try:
    lat, lon = extract_loc_from_string(content)
    impossible = not (abs(lat) <= 90 and abs(lon) <= 180)
  except Exception:
    impossible = False  # not a pair of numbers: the release scores it 0 anyway
  return 0.0 if impossible else geo_r_release_loc_reward(content, sol)


def globe_visual_expected(content, tags):
  return globe_release_visual(content, [t for t in tags if t != ""])


# ------------------------------------------------------------------------------------------------ helpers
def _targets(n, lat, lon, country, city, clues):
  """Targets with given names (unstripped, any string) and no gazetteer ids."""
  z = np.zeros(n, np.int32)
  return GeoTargets(lat=np.full(n, lat, np.float32), lon=np.full(n, lon, np.float32), country=list(country),
                    admin1=[""] * n, city=list(city), country_id=z, admin1_id=z, city_id=z, clues=list(clues))


def _score_both(texts, targets, gaz, fmt="auto"):
  """{reward: (lenient, strict)} for the release rewards."""
  names = ("geo_r_distance", "globe_accuracy", "globe_visual", "globe_format")
  _, lenient = score(texts, targets, {n: 1.0 for n in names}, fmt=fmt, gaz=gaz)
  _, strict = score(texts, targets, {n: 1.0 for n in names}, fmt=fmt, gaz=gaz,
                    params={n: {"strict": True} for n in names})
  return {n: (lenient[n], strict[n]) for n in names}


def _reference(texts, targets):
  return {
    "geo_r_distance": [geo_r_expected(t, [float(a), float(o)]) for t, a, o in zip(texts, targets.lat, targets.lon)],
    "globe_accuracy": [globe_release_accuracy(t, c, y) for t, c, y in zip(texts, targets.country, targets.city)],
    "globe_visual": [globe_visual_expected(t, c) for t, c in zip(texts, targets.clues)],
    "globe_format": [globe_release_format(t) for t in texts],
  }


# ---------------------------------------------------------------------------- adversarial inputs, by hand
T = "<think>x</think>"
GLOBE_CASES = [  # (completion, truth country, truth city, lenient, release)
  (T + "<answer>country: France\ncity: Paris</answer>", "France", "Paris", 1.0, 1.0),
  (T + "<answer>Country: France\nCity: Paris</answer>", "France", "Paris", 1.0, 0.0),  # labels case-sensitive
  (T + "<answer>country: France\nCity: Paris</answer>", "France", "Paris", 1.0, 0.2),
  (T + "<ANSWER>country: France\ncity: Paris</ANSWER>", "France", "Paris", 1.0, 0.0),  # tags case-sensitive
  (T + "<answer>country：France\ncity：Paris</answer>", "France", "Paris", 1.0, 0.0),  # fullwidth colon
  (T + "<answer>country: US.\ncity: Austin</answer>", "US", "Austin", 1.0, 0.0),  # 'us.' vs 'us': ratio 2/3
  (T + "<answer>country: France.\ncity: Paris.</answer>", "France", "Paris", 1.0, 1.0),  # ratios 6/7, 5/6
  (T + "<answer>country: France\nethnicity: French\ncity: Paris</answer>", "France", "Paris", 1.0, 0.2),
  (T + "<answer>country:\n  France\ncity: Paris</answer>", "France", "Paris", 1.0, 1.0),  # \s* crosses lines
  (T + "<answer>country: \ncity: Paris</answer>", "France", "Paris", 0.0, 0.0),  # country reads 'city: paris'
  ("Country: France / City: Paris", "France", "Paris", 1.0, 0.0),  # no answer block: chain under fmt=auto
  (T + "<answer>country: France\ncity: Paris", "France", "Paris", 0.0, 0.0),  # unclosed
  (T + "<answer>country: france\ncity: paris</answer>", " France", "  PARIS  ", 1.0, 0.2),  # truth unstripped
  (T + "<answer>country: United States\ncity: New York City</answer>", "United States", "New York", 0.2, 0.2),
]


@pytest.mark.parametrize("text, country, city, lenient, release", GLOBE_CASES)
def test_globe_accuracy_cases(gaz, text, country, city, lenient, release):
  assert globe_release_accuracy(text, country, city) == release  # the transcription reads as derived by hand
  got = _score_both([text], _targets(1, *PARIS, [country], [city], [[]]), gaz)["globe_accuracy"]
  assert (float(got[0][0]), float(got[1][0])) == pytest.approx((lenient, release))


CLUES = ["Eiffel Tower", "baguette", ""]
VISUAL_CASES = [  # (completion, clues, lenient, release with the empty-clue bug, strict)
  ("<think>the Eiffel Tower</think><answer>country: France</answer>", CLUES, 0.5, 2 / 3, 0.5),
  ("The Eiffel Tower and a baguette.", CLUES, 0.0, 1.0, 1.0),  # no tags: the release reads the whole text
  ("<THINK>a baguette</THINK><answer>country: France</answer>", CLUES, 0.5, 2 / 3, 0.5),  # no </think>
  ("<think>a BAGUETTE</think><answer>x</answer>", ["baguette", "Baguette", " baguette"], 1.0, 1.0, 1.0),
  ("<think>baguette</think><answer>x</answer>", ["baguette", " baguette"], 1.0, 0.5, 0.5),  # clues unstripped
  ("<think>nothing</think><answer>x</answer>", [""], 0.0, 1.0, 0.0),
]


@pytest.mark.parametrize("text, clues, lenient, release, strict", VISUAL_CASES)
def test_globe_visual_cases(gaz, text, clues, lenient, release, strict):
  assert globe_release_visual(text, clues) == pytest.approx(release)
  assert globe_visual_expected(text, clues) == pytest.approx(strict)
  got = _score_both([text], _targets(1, *PARIS, ["France"], ["Paris"], [clues]), gaz)["globe_visual"]
  assert (float(got[0][0]), float(got[1][0])) == pytest.approx((lenient, strict))


@pytest.mark.parametrize("text, lenient, release", [
  ("<think>a</think>\n<answer>b</answer>", 1.0, 1.0), ("<think>a</think><answer>b</answer>\n", 0.0, 0.0),
  ("<think>" + "x" * 20000 + "</think><answer>b</answer>", 0.0, 1.0),  # lenient reads 20,000 characters
  (" <think>a</think><answer>b</answer>", 0.0, 0.0), ("<think>a</think><ANSWER>b</ANSWER>", 0.0, 0.0)])
def test_globe_format_cases(gaz, text, lenient, release):
  assert globe_release_format(text) == release
  got = _score_both([text], _targets(1, *PARIS, ["France"], ["Paris"], [[]]), gaz)["globe_format"]
  assert (float(got[0][0]), float(got[1][0])) == (lenient, release)


LOC = "{'LOC': [48.8566, 2.3522]}"
GEO_R_CASES = [  # (completion, lenient, release); the truth is Paris
  (LOC, 1.0, 1.0), ('{"LOC": [48.8566, 2.3522]}', 1.0, 1.0), (" " + LOC + "\n", 1.0, 1.0),
  ("```json\n" + LOC + "\n```", 1.0, 0.0),  # code fence
  ("The answer is " + LOC + ".", 1.0, 0.0),  # text around the dict
  ("<answer>" + LOC + "</answer>", 1.0, 0.0),
  ("{'loc': [48.8566, 2.3522]}", 1.0, 0.0), ("{LOC: [48.8566, 2.3522]}", 1.0, 0.0),  # lower-case, unquoted key
  ("Coordinates: (48.8566, 2.3522)", 1.0, 0.0),
  (LOC + " " + LOC, 1.0, 0.0),
  ("{'LOC': (48.8566, 2.3522)}", 1.0, 1.0),  # a tuple: the release unpacks it, lenient reads '(lat, lon)'
  ("{'LOC': [51.5074, -0.1278]}", 0.7711, 0.7711),  # London, 343.5 km
  ("{'LOC': [True, 2.3522]}", 0.0, 0.1727),  # a bool is a number to the release: latitude 1, 5321 km
  ("{'LOC': [48.8566, 2.3522, 0]}", 0.0, 0.0), ("{'LOC': ['48.8566', '2.3522']}", 0.0, 0.0),
  ("{'LOC': [98.8566, 2.3522]}", 0.0, 0.0),  # off the Earth: the release's credit is a bug, not reproduced
  ("{'LOC': [1e999, 2.3522]}", 0.0, 0.0),
]


@pytest.mark.parametrize("text, lenient, release", GEO_R_CASES)
def test_geo_r_distance_cases(gaz, text, lenient, release):
  truth = np.float32(PARIS)
  assert geo_r_expected(text, [float(truth[0]), float(truth[1])]) == pytest.approx(release, abs=1e-4)
  got = _score_both([text], _targets(1, *PARIS, ["France"], ["Paris"], [[]]), gaz)["geo_r_distance"]
  assert (float(got[0][0]), float(got[1][0])) == pytest.approx((lenient, release), abs=1e-3)


def test_impossible_coordinates_are_the_only_geo_r_exception():
  text, sol = "{'LOC': [98.8566, 2.3522]}", [48.8566, 2.3522]
  assert geo_r_release_loc_reward(text, sol) > 0 and geo_r_expected(text, sol) == 0.0


# ------------------------------------------------------------------------------------ fuzz against the reference
GLOBE_PIECES = ["<think>", "</think>", "<answer>", "</answer>", "<ANSWER>", "</Answer>", "<THINK>", "country:",
                "Country:", "COUNTRY:", "city:", "City:", "ethnicity:", "country：", "city：", "country :", ":", "：",
                " ", " ", "\n", "\n", "\t", "\r", "France", "france", "FRANCE", "France.", "Fr", "US", "US.", "us",
                "United States", "Paris", "paris.", "Par", "New York", "York", "İstanbul", "Straße", "/", ",", ".",
                "Eiffel Tower", "eiffel", "baguette", "Tower", "LOC", "'", "<", ">", "🙂", "東京"]
NAMES = ["France", "france", "France.", "US", "US.", "us", "United States", "Paris", "paris.", "Par", "New York",
         "New York City", "York", "İstanbul", "istanbul", "Straße", "STRASSE", "", " ", "Paris, France"]
GLOBE_TRUTHS = [("France", "Paris"), ("US", "New York"), ("United States", "York"), (" France", "paris "),
                ("İstanbul", "Straße"), ("", "Paris"), ("fr", "par")]
CLUE_SETS = [[], ["Eiffel Tower", "baguette"], ["eiffel", "EIFFEL", " tower"], ["", "paris"], [" "], ["东京", "Tower"]]
NUMBERS = ["48.8566", "2.3522", "48", "2", "-33.87", "151.21", "90", "-90", "180", "-180.0", "90.5", "181", "0",
           "1e1", "-1e999", "1e999", "0x10", "1_0", "True", "False", "None", "'48.85'", "nan", "4.8566e1", ".5",
           "9" * 400, "-0.0", "1j", "(1)"]


def _pick(rng, usual, others, p=0.6):
  """`usual` with probability p, else one of `others`: mostly well-formed, often not."""
  return usual if rng.random() < p else rng.choice(others)


def _globe_fuzz(rng):
  """GLOBE-shaped completions with perturbed tags, labels, colons, names and spacing, or fragments at random."""
  def junk(k):
    return "".join(rng.choice(GLOBE_PIECES) for _ in range(rng.randint(0, k)))

  def field(label, labels, name):
    colon = _pick(rng, ": ", [":", "：", " : ", ":\n", ":  ", "： "])
    return _pick(rng, label, labels) + colon + _pick(rng, name, NAMES, 0.4)

  if rng.random() < 0.3:
    return junk(16)
  fields = [field("country", ["Country", "COUNTRY", "ethnicity", "subcountry"], "France"),
            field("city", ["City", "ethnicity", "CITY", "capital city"], "Paris")]
  if rng.random() < 0.2:
    fields.reverse()
  body = _pick(rng, "\n", ["", " ", "\n\n", ". ", "\r\n", " / "]).join(fields) + _pick(rng, "", ["\n", junk(3)])
  think = _pick(rng, "<think>", ["<THINK>", "", "<think >"]) + junk(6) + _pick(rng, "</think>", ["</THINK>", ""])
  answer = (_pick(rng, "<answer>", ["<ANSWER>", "<Answer>", "", "<answer> "]) + body
            + _pick(rng, "</answer>", ["</ANSWER>", "", "</answer></answer>"]))
  return (_pick(rng, "", [" ", "\n", junk(3)], 0.8) + think + _pick(rng, "", ["\n", " ", junk(2)]) + answer
          + _pick(rng, "", ["\n", " ", junk(3)], 0.7))


def _geo_r_fuzz(rng):
  """Dict literals near the release's format, perturbed (keys, containers, numbers, fences, text around)."""
  key = _pick(rng, "'LOC'", ['"LOC"', "'loc'", "LOC", "'Loc'", "b'LOC'", "'LOC '", "u'LOC'", "'L' 'OC'"], 0.5)
  values = [rng.choice(NUMBERS) if rng.random() < 0.2 else repr(round(rng.uniform(-100, 100) * (k + 1),
                                                                      rng.randint(0, 6)))
            for k in range(_pick(rng, 2, [1, 3], 0.85))]
  opening, closing = _pick(rng, ("[", "]"), [("(", ")"), ("{", "}"), ("[", ""), ("", "")], 0.75)
  body = f"{{{key}: {opening}{', '.join(values)}{closing}" + _pick(rng, "", [", 'x': 1", ", 'LOC': [0, 0]"], 0.85)
  text = body + _pick(rng, "}", ["", "]}", "}}"], 0.85)
  text = _pick(rng, "", [" ", "\t", "\n", "```json\n", "```", "Answer: ", "<answer>"], 0.6) + text
  return text + _pick(rng, "", ["\n", " ", "\n```", ".", "</answer>", " " + text], 0.6)


def test_strict_equals_release_on_fuzz(gaz):
  rng = random.Random(0)
  texts, truths, clues = [], [], []
  for i in range(6000):
    texts.append(_globe_fuzz(rng) if i % 2 else _geo_r_fuzz(rng))
    truths.append(_pick(rng, GLOBE_TRUTHS[0], GLOBE_TRUTHS[1:], 0.5))
    clues.append(rng.choice(CLUE_SETS))
  texts += [text for text, *_ in GLOBE_CASES + VISUAL_CASES] + [text for text, *_ in GEO_R_CASES]
  truths += [rng.choice(GLOBE_TRUTHS) for _ in range(len(texts) - len(truths))]
  clues += [rng.choice(CLUE_SETS) for _ in range(len(texts) - len(clues))]
  lat = np.array([rng.choice([PARIS[0], -33.87, 89.9]) for _ in texts], np.float32)
  lon = np.array([rng.choice([PARIS[1], 151.21, -179.9]) for _ in texts], np.float32)
  targets = _targets(len(texts), 0.0, 0.0, [c for c, _ in truths], [y for _, y in truths], clues)
  targets.lat, targets.lon = lat, lon
  got = _score_both(texts, targets, gaz)
  expected = _reference(texts, targets)
  for name, want in expected.items():
    want = np.asarray(want, np.float32)
    bad = np.flatnonzero(got[name][1] != want)
    assert not len(bad), f"{name}: {[(texts[i], got[name][1][i], want[i]) for i in bad[:5]]}"
  # The fuzz reaches every branch: credit and no credit from each reward, strict and lenient disagreeing.
  for name in expected:
    lenient, strict = got[name]
    assert (strict > 0).sum() > 100 and (strict == 0).sum() > 100, name
    assert name == "globe_format" or (lenient != strict).sum() > 50, name  # globe_format: only past 20,000 chars
  assert len({float(v) for v in got["geo_r_distance"][1]}) > 50


# ---------------------------------------------------------------------------------------- the option itself
def test_every_release_reward_takes_strict():
  for name in STRICT_REWARDS:
    assert inspect.signature(REWARDS[name]).parameters["strict"].default is False


def test_strict_geo_r_format_and_paper_breakpoints(gaz):
  targets = _targets(2, 0.0, 0.0, ["France"] * 2, ["Paris"] * 2, [[]] * 2)
  texts = ["{'LOC': [13.49, 0]}", "Coordinates: (13.49, 0) or (1, 1)"]  # ~1500 km north of (0, 0)
  weights = {"geo_r_distance_paper": 1.0, "geo_r_format": 1.0}
  _, lenient = score(texts, targets, weights, fmt="auto", gaz=gaz)
  _, strict = score(texts, targets, weights, fmt="auto", gaz=gaz, params={n: {"strict": True} for n in weights})
  np.testing.assert_array_equal(strict["geo_r_format"], lenient["geo_r_format"])  # the bbox regex is a bug
  d = 2 * asin(sqrt(sin(radians(13.49) / 2) ** 2)) * 6371
  assert strict["geo_r_distance_paper"][0] == np.float32(round(0.5 - (d - 750) / 1750 * 0.3, 4))
  assert strict["geo_r_distance_paper"][1] == 0.0 and lenient["geo_r_distance_paper"][1] > 0


def test_strict_needs_the_raw_completions():
  targets = _targets(1, *PARIS, ["France"], ["Paris"], [[]])
  batch = reward_batch(parse_answers([LOC], "loc"), targets)
  with pytest.raises(KeyError, match="reward_batch"):
    REWARDS["globe_accuracy"](batch, strict=True)
  batch = reward_batch(parse_answers([LOC], "loc"), targets, [LOC])
  assert float(REWARDS["geo_r_distance"](batch, strict=True)[0]) == 1.0
  assert REWARDS["globe_format"](batch, strict=True).dtype == jnp.float32
