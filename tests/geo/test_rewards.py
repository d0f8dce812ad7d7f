"""Rewards against values worked out by hand from papers.md, and the trainer-facing `score`."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from geojax.geo import REWARDS, GeoTargets, globe_name_match, piecewise_distance_reward, score, visual_fraction
from geojax.geo.distance import EARTH_RADIUS_KM

KM_PER_DEG = np.pi / 180 * EARTH_RADIUS_KM


@pytest.mark.parametrize("d, code, paper", [
  (0.0, 1.0, 1.0), (375.0, 0.75, 0.75), (750.0, 0.5, 0.5),
  (1500.0, 0.5 - 0.3 * 750 / 2250, 0.5 - 0.3 * 750 / 1750),
  (2500.0, 0.5 - 0.3 * 1750 / 2250, 0.2), (3000.0, 0.2, 0.2 - 0.2 * 500 / 17500),
  (11500.0, 0.2 - 0.2 * 8500 / 17000, 0.2 - 0.2 * 9000 / 17500), (20000.0, 0.0, 0.0), (20010.0, 0.0, 0.0)])
def test_geo_r_distance_by_hand(d, code, paper):
  assert float(piecewise_distance_reward(jnp.float32(d), 750, 3000)) == pytest.approx(code, abs=1e-6)
  assert float(piecewise_distance_reward(jnp.float32(d), 750, 2500)) == pytest.approx(paper, abs=1e-6)


def _batch(d_km, **overrides):
  """A batch whose predictions lie d_km due north of (0, 0)."""
  d_km = jnp.asarray(d_km, jnp.float32)
  n = d_km.shape[0]
  batch = {"pred_lat": d_km / KM_PER_DEG, "pred_lon": jnp.zeros(n), "true_lat": jnp.zeros(n),
           "true_lon": jnp.zeros(n), "coord_valid": jnp.ones(n, bool), "n_coords": jnp.ones(n, jnp.int32),
           "country_match": jnp.zeros(n, bool), "city_match": jnp.zeros(n, bool), "visual_frac": jnp.zeros(n),
           "globe_format_ok": jnp.ones(n, bool)}
  batch.update({k: jnp.asarray(v) for k, v in overrides.items()})
  return batch


def test_registered_names():
  assert set(REWARDS) == {"geo_r_distance", "geo_r_distance_paper", "geo_r_format", "globe_accuracy",
                          "globe_visual", "globe_format", "hierarchy", "exp_distance"}


def test_distance_rewards_on_batches():
  batch = _batch([375.0, 1500.0, 5000.0], coord_valid=[True, True, False])
  np.testing.assert_allclose(np.asarray(REWARDS["geo_r_distance"](batch)), [0.75, 0.4, 0.0], atol=1e-4)
  np.testing.assert_allclose(np.asarray(REWARDS["geo_r_distance_paper"](batch)),
                             [0.75, 0.5 - 0.3 * 750 / 1750, 0.0], atol=1e-4)
  np.testing.assert_allclose(np.asarray(REWARDS["exp_distance"](batch, tau_km=500.0)),
                             [np.exp(-0.75), np.exp(-3.0), 0.0], rtol=1e-4)
  jitted = jax.jit(REWARDS["geo_r_distance"])(batch)
  np.testing.assert_allclose(np.asarray(jitted), [0.75, 0.4, 0.0], atol=1e-4)


def test_format_and_globe_rewards():
  batch = _batch([0.0] * 4, n_coords=[0, 1, 2, 1], country_match=[True, True, False, False],
                 city_match=[True, False, True, False], visual_frac=[0.0, 0.5, 1.0, 0.25],
                 globe_format_ok=[True, False, True, False])
  assert np.asarray(REWARDS["geo_r_format"](batch)).tolist() == [0.0, 1.0, 0.0, 1.0]
  np.testing.assert_allclose(np.asarray(REWARDS["globe_accuracy"](batch)), [1.0, 0.2, 0.0, 0.0])
  np.testing.assert_allclose(np.asarray(REWARDS["globe_visual"](batch)), [0.0, 0.5, 1.0, 0.25])
  assert np.asarray(REWARDS["globe_format"](batch)).tolist() == [1.0, 0.0, 1.0, 0.0]


@pytest.mark.parametrize("pred, truth, match", [
  ("Paris", "paris", True), ("New York City", "New York", False), ("Washington DC", "washington", True),
  ("York", "New York", False),
  ("United States", "United States of America", False), ("Tokyo ", "TOKYO", True), ("", "Paris", False),
  ("Sao Paulo", "São Paulo", False), ("Köln", "köln", True), (None, "x", False)])
def test_globe_name_match(pred, truth, match):
  assert globe_name_match(pred, truth) == match


def test_visual_fraction():
  assert visual_fraction("A RED barn and a tractor", ["red barn", "tractor", "lavender"]) == pytest.approx(2 / 3)
  assert visual_fraction("anything", []) == 0.0
  assert visual_fraction("a barn", ["Barn", "barn ", "silo"]) == pytest.approx(0.5)  # distinct entities
  assert visual_fraction("", ["x"]) == 0.0


def test_score_geo_r_sum_and_product(gaz):
  targets = GeoTargets.from_coordinates([48.8566, 48.8566, 48.8566], [2.3522, 2.3522, 2.3522], gaz)
  assert targets.country == ["France"] * 3 and targets.city == ["Paris"] * 3
  completions = ["Country: France / State: Ile-de-France / City: Paris / Coordinates: (48.8566, 2.3522)",
                 "Coordinates: (51.5074, -0.1278) or maybe (48.85, 2.35)",
                 "no idea"]
  total, per = score(completions, targets, {"geo_r_distance": 1.0, "geo_r_format": 1.0}, fmt="chain", gaz=gaz)
  d_london = 343.5
  np.testing.assert_allclose(per["geo_r_distance"], [1.0, 1 - 0.5 * d_london / 750, 0.0], atol=2e-3)
  np.testing.assert_allclose(per["geo_r_format"], [1.0, 0.0, 0.0])
  np.testing.assert_allclose(total, per["geo_r_distance"] + per["geo_r_format"])
  total, _ = score(completions, targets, {"geo_r_distance_paper": 1.0, "geo_r_format": 1.0}, fmt="chain",
                   combine="product", gaz=gaz)
  np.testing.assert_allclose(total, [1.0, 0.0, 0.0], atol=1e-6)
  assert total.dtype == np.float32


def test_score_globe(gaz):
  targets = GeoTargets.from_coordinates([35.6895, 35.6895, 35.6895], [139.6917] * 3, gaz,
                                        clues=[["torii gate", "kanji", "vending machine"]] * 3)
  completions = [
    "<think>A torii gate and kanji signs.</think>\n<answer>country: Japan\ncity: Tokyo</answer>",
    "<think>Kanji.</think><answer>country: Japan\ncity: Osaka</answer>",
    "<answer>country: China\ncity: Tokyo</answer>"]
  total, per = score(completions, targets, {"globe_accuracy": 1.0, "globe_visual": 0.5, "globe_format": 1.0},
                     fmt="globe", gaz=gaz)
  np.testing.assert_allclose(per["globe_accuracy"], [1.0, 0.2, 0.0])
  np.testing.assert_allclose(per["globe_visual"], [2 / 3, 1 / 3, 0.0], rtol=1e-6)
  np.testing.assert_allclose(per["globe_format"], [1.0, 1.0, 0.0])
  np.testing.assert_allclose(total, [1 + 1 / 3 + 1, 0.2 + 1 / 6 + 1, 0.0], rtol=1e-6)
  # Name-only answers are geocoded, so distance rewards work on them too.
  _, per = score(completions, targets, {"geo_r_distance": 1.0}, fmt="globe", gaz=gaz)
  assert per["geo_r_distance"][0] == pytest.approx(1.0, abs=1e-3)
  assert 0.5 < per["geo_r_distance"][1] < 0.9  # Osaka is ~400 km away


def test_hierarchy(gaz):
  targets = GeoTargets.from_coordinates([43.0618] * 4, [141.3545] * 4, gaz)  # Sapporo
  completions = [
    "Country: Japan / State: Hokkaido / City: Sapporo / Coordinates: (43.0618, 141.3545)",  # all right
    "Country: Japan / State: Hokkaido / City: Asahikawa / Coordinates: (43.7706, 142.3650)",  # city wrong
    "Country: France / Coordinates: (35.6895, 139.6917)",  # Tokyo: country right; named country inconsistent
    "Country: Japan"]  # no coordinate written: geocoded to Japan's most prominent city (Tokyo area)
  _, per = score(completions, targets, {"hierarchy": 1.0}, fmt="chain", gaz=gaz)
  h = per["hierarchy"]
  assert h[0] == pytest.approx(1.0)
  assert h[1] == pytest.approx(0.75 * 2 / 3 + 0.25 * 1.0)
  assert h[2] == pytest.approx(0.75 * 1 / 3 + 0.25 * 0.0)
  assert h[3] == pytest.approx(0.75 * 1 / 3 + 0.25 * 1.0)


def test_targets_accept_batch_fields(gaz):
  clues = np.empty(4, dtype=object)
  clues[:] = [["a", "b"], np.array(["c"]), "d", None]
  t = GeoTargets.from_coordinates(np.array([48.85, 35.69, 0.0, 0.0]), np.array([2.35, 139.69, 0.0, 0.0]), gaz,
                                  clues=clues, country=["France ", "", None, "X"], city=np.array(["Paris", "", "", ""]))
  assert t.clues == [["a", "b"], ["c"], ["d"], []]
  assert t.country[:2] == ["France ", "Japan"] and t.country[3] == "X" and t.city[:2] == ["Paris", "Tokyo"]
  assert t.country_id[0] == gaz.country_index("FR") and t.city_id.dtype == np.int32


def test_score_rejects_bad_arguments(gaz):
  targets = GeoTargets.from_coordinates([0.0], [0.0], gaz)
  with pytest.raises(KeyError):
    score(["x"], targets, {"nope": 1.0}, gaz=gaz)
  with pytest.raises(ValueError):
    score(["x"], targets, {"geo_r_format": 1.0}, combine="max", gaz=gaz)
  total, per = score([None], targets, {name: 1.0 for name in REWARDS}, gaz=gaz)  # malformed -> zeros
  assert total.tolist() == [0.0] and all(v.tolist() == [0.0] for v in per.values())
