"""Geo-R's mining stage between SFT and GRPO (geojax.train.hard_samples), with the model's predictions stubbed."""
import json
import os

import ml_collections
import pytest

from geojax import config as gconfig
from geojax import evaluation, train
from geojax.runtime import MetricWriter


def _records():
  # four samples near Paris, two near Tokyo, two near Sydney
  places = [(48.85, 2.35), (48.9, 2.4), (49.5, 2.0), (48.0, 3.0), (35.7, 139.7), (35.6, 139.8), (-33.9, 151.2),
            (-33.8, 151.0)]
  return [{"id": str(i), "lat": lat, "lon": lon} for i, (lat, lon) in enumerate(places)]


def _config(workdir, **mining):
  c = ml_collections.ConfigDict({"workdir": str(workdir), "seed": 0,
                                 "mining": {"radius_km": 200.0, "num_examples": 3, "random": False}})
  c.mining.update(mining)
  return c


@pytest.fixture
def predictions(monkeypatch):
  """The stubbed model places sample 0 at 10 km (a hotspot), 1 at 300 km, 2 unreadably."""
  calls = []

  def evaluate(model, tokenizer, records, config, out_dir, label, num_examples=None, rows=None):
    calls.append(num_examples)
    for i, d in zip(range(num_examples), (10.0, 300.0, None)):
      rows.append({"true_lat": records[i]["lat"], "true_lon": records[i]["lon"], "distance_km": d})
    return {}

  monkeypatch.setattr(evaluation, "evaluate", evaluate)
  return calls


def test_hard_subset_drops_samples_within_the_radius_of_a_hotspot(tmp_path, predictions, capsys):
  records = _records()
  kept = train.hard_samples(_config(tmp_path), None, None, records, MetricWriter(None))
  # Paris samples within 200 km of sample 0 go (0, 1, 2: 49.5 N 2.0 E is 75 km away); 48.0 N 3.0 E is 107 km away
  assert kept.indices == [4, 5, 6, 7]
  assert [r["id"] for r in (kept[i] for i in range(len(kept)))] == ["4", "5", "6", "7"]
  assert predictions == [3]
  log = capsys.readouterr()
  assert "3 train samples predicted, 1 within 200 km (hotspots); GRPO keeps 4 of 8" in log.out + log.err
  saved = json.load(open(os.path.join(tmp_path, "mining.json")))
  assert saved["kept"] == [4, 5, 6, 7] and saved["n_hotspots"] == 1

  # a rerun (a resumed GRPO) reads the choice back instead of predicting again
  assert train.hard_samples(_config(tmp_path), None, None, records, MetricWriter(None)).indices == [4, 5, 6, 7]
  assert predictions == [3]


def test_random_arm_keeps_as_many_samples_at_random(tmp_path, predictions):
  kept = train.hard_samples(_config(tmp_path, random=True), None, None, _records(), MetricWriter(None))
  assert len(kept) == 4 and kept.indices == sorted(set(kept.indices))
  again = train.hard_samples(_config(tmp_path / "again", random=True), None, None, _records(), MetricWriter(None))
  assert again.indices == kept.indices  # seeded by config.seed


def test_a_radius_that_drops_everything_is_refused(tmp_path, predictions):
  with pytest.raises(gconfig.ConfigError, match="mining.radius_km"):
    train.hard_samples(_config(tmp_path, radius_km=20000.0), None, None, _records(), MetricWriter(None))
