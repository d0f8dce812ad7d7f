"""The built-in dataset: determinism, disjoint splits, labels from geojax.geo, sea share, image sizes, and that
the images carry location (a 1-nearest-neighbour classifier on pooled pixels beats chance by far)."""
import io
import json
import sys
import warnings

import numpy as np
import pytest

from geojax.data import builtin, records
from geojax.geo import Gazetteer, chain_of_region, haversine_km_np
from geojax.geo.chain import levels_of_row

SMALL = {"seed": 3, "n_train": 1500, "n_test": 300, "image_size": 112, "sea_fraction": 0.1}


@pytest.fixture(scope="module")
def small(tmp_path_factory):
  out = tmp_path_factory.mktemp("builtin") / "small"
  builtin.build(out, **SMALL)
  return out, builtin.load_split(out, "train"), builtin.load_split(out, "test")


def _shard_bytes(directory):
  manifest = json.loads((directory / "manifest.json").read_text())
  return {name: (directory / name).read_bytes() for split in builtin.SPLITS for name in manifest["shards"][split]}


def test_same_seed_same_bytes_other_seed_other_data(tmp_path):
  params = {"n_train": 60, "n_test": 20, "sea_fraction": 0.2}
  builtin.build(tmp_path / "a", seed=7, **params)
  builtin.build(tmp_path / "b", seed=7, **params)
  builtin.build(tmp_path / "c", seed=8, **params)
  a, b = _shard_bytes(tmp_path / "a"), _shard_bytes(tmp_path / "b")
  assert a.keys() == b.keys() and all(a[k] == b[k] for k in a)
  lat_a = [r["lat"] for r in builtin.load_split(tmp_path / "a", "train")]
  lat_c = [r["lat"] for r in builtin.load_split(tmp_path / "c", "train")]
  assert lat_a != lat_c


def test_test_split_does_not_depend_on_n_train(tmp_path):
  builtin.build(tmp_path / "a", seed=1, n_train=30, n_test=20)
  builtin.build(tmp_path / "b", seed=1, n_train=50, n_test=20)
  a, b = builtin.load_split(tmp_path / "a", "test"), builtin.load_split(tmp_path / "b", "test")
  assert [r["image"] for r in a] == [r["image"] for r in b]


def test_build_is_idempotent_and_rebuilds_on_new_params(small, tmp_path):
  out, _, _ = small
  manifest = out / "manifest.json"
  before = manifest.stat().st_mtime_ns
  paths = builtin.build(out, **SMALL)
  assert manifest.stat().st_mtime_ns == before
  assert sorted(paths) == ["test", "train"] and all(p.endswith(".array_record") for p in paths["train"])
  builtin.build(tmp_path / "x", seed=0, n_train=10, n_test=5)
  builtin.build(tmp_path / "x", seed=0, n_train=12, n_test=5)
  assert len(builtin.load_split(tmp_path / "x", "train")) == 12
  (tmp_path / "link").symlink_to(tmp_path / "x")  # rebuilt at the link's target, never left as it was
  builtin.build(tmp_path / "link", seed=0, n_train=11, n_test=5)
  assert len(builtin.load_split(tmp_path / "x", "train")) == 11 and (tmp_path / "link").is_symlink()
  (tmp_path / "foreign").mkdir()
  (tmp_path / "foreign" / "notes.txt").write_text("keep me")
  with pytest.raises(FileExistsError):
    builtin.build(tmp_path / "foreign", n_train=4, n_test=2)


def test_default_dir_depends_on_every_parameter():
  base = builtin.default_dir()
  assert base == builtin.default_dir(**builtin.DEFAULT_PARAMS)
  for key, value in (("seed", 1), ("n_train", 10), ("n_test", 10), ("image_size", 56), ("sea_fraction", 0.2)):
    assert builtin.default_dir(**{key: value}) != base
  with pytest.raises(ValueError):
    builtin.default_dir(image_size=100)


def test_counts_schema_and_image_sizes(small, tmp_path):
  _, train, test = small
  assert len(train) == SMALL["n_train"] and len(test) == SMALL["n_test"]
  for r in train[:50] + test[:50]:
    assert set(r) == set(records.RECORD_FIELDS)
    assert r["image"][:8] == b"\x89PNG\r\n\x1a\n"
    assert builtin.decode_image(r["image"]).shape == (112, 112, 3)
    assert isinstance(r["clues"], list) and r["clues"] and all(c in r["reasoning"] for c in r["clues"])
  assert len({r["id"] for r in train + test}) == len(train) + len(test)
  # records' own reader (what the Grain pipeline uses) sees the same examples
  source = records.ArrayRecordSource(str(small[0]), "test")
  assert len(source) == len(test) and {source[i]["id"] for i in range(len(source))} == {r["id"] for r in test}
  for size in (56, 224):
    builtin.build(tmp_path / str(size), n_train=4, n_test=2, image_size=size)
    for r in builtin.load_split(tmp_path / str(size), "train"):
      assert builtin.decode_image(r["image"]).shape == (size, size, 3)


def test_splits_are_disjoint_by_place(small):
  _, train, test = small
  train_lat, train_lon = np.array([r["lat"] for r in train]), np.array([r["lon"] for r in train])
  test_lat, test_lon = np.array([r["lat"] for r in test]), np.array([r["lon"] for r in test])
  cell = lambda lat, lon: set(zip(np.floor(lat / builtin.HOLDOUT_CELL_DEG).tolist(),
                                  np.floor(lon / builtin.HOLDOUT_CELL_DEG).tolist()))
  assert not cell(train_lat, train_lon) & cell(test_lat, test_lon)
  assert not set(zip(train_lat.tolist(), train_lon.tolist())) & set(zip(test_lat.tolist(), test_lon.tolist()))


def test_labels_are_geojax_geo_chain_of_region(small):
  _, train, test = small
  gaz = Gazetteer.load()
  examples = train[:400] + test
  lat, lon = np.array([r["lat"] for r in examples]), np.array([r["lon"] for r in examples])
  assert [r["label"] for r in examples] == chain_of_region(lat, lon, gaz)
  rows = gaz.nearest_np(lat, lon)
  for r, row in zip(examples, rows):
    assert (r["country"], r["admin1"], r["city"]) == levels_of_row(gaz, int(row))


def test_sea_share_and_sea_samples_are_open_water(small):
  from global_land_mask import globe  # the 1 km mask, independent of our 0.05-degree raster
  _, train, test = small
  for split in (train, test):
    sea = [r for r in split if not r["locatable"]]
    assert len(sea) == round(SMALL["sea_fraction"] * len(split))
    lat, lon = np.array([r["lat"] for r in sea]), np.array([r["lon"] for r in sea])
    assert globe.is_ocean(lat, lon).all()
    assert all(r["clues"] == ["open water"] for r in sea)
    land = [r for r in split if r["locatable"]]
    on_land = globe.is_land(np.array([r["lat"] for r in land]), np.array([r["lon"] for r in land]))
    assert on_land.mean() > 0.97  # a few land points sit on coastal cells the 1 km mask calls sea
  # open-sea tiles are plain water: two of them differ far less than two land tiles
  sea_images = [builtin.decode_image(r["image"]).astype(np.float32) for r in train if not r["locatable"]][:20]
  assert max(float(np.abs(im - sea_images[0]).mean()) for im in sea_images) < 1.0


def _pooled(examples, pool=28):
  images = np.stack([builtin.decode_image(r["image"]) for r in examples]).astype(np.float32) / 255.0
  b, h, w, c = images.shape
  return images.reshape(b, h // pool, pool, w // pool, pool, c).mean((2, 4)).reshape(b, -1)


def test_images_carry_location_nearest_neighbour(small):
  """1-NN on 4x4 mean-pooled pixels (48 numbers per image) predicts held-out places far above chance."""
  _, train, test = small
  gaz = Gazetteer.load()
  x_train, x_test = _pooled(train), _pooled(test)
  nn = ((x_test[:, None, :] - x_train[None, :, :]) ** 2).sum(-1).argmin(1)

  def labels(examples, key):
    if key == "continent":
      return np.array([gaz.continent(gaz.resolve_country(r["country"])) if r["locatable"] else "sea" for r in examples])
    return np.array([r[key] if r["locatable"] else "sea" for r in examples])

  report = {}
  for key, floor in (("continent", 0.85), ("country", 0.7), ("admin1", 0.35)):
    y_train, y_test = labels(train, key), labels(test, key)
    values, counts = np.unique(y_train, return_counts=True)
    chance = float((y_test == values[counts.argmax()]).mean())
    accuracy = float((y_train[nn] == y_test).mean())
    report[key] = (accuracy, chance)
    assert accuracy > floor and accuracy > chance + 0.25, (key, accuracy, chance)
  land = np.array([r["locatable"] for r in test])
  km = haversine_km_np(np.array([r["lat"] for r in train])[nn], np.array([r["lon"] for r in train])[nn],
                       np.array([r["lat"] for r in test]), np.array([r["lon"] for r in test]))[land]
  report["median_km"] = float(np.median(km))
  assert np.median(km) < 300
  warnings.warn(f"built-in 1-NN (accuracy, majority-class chance): {report}")


def test_bad_records_are_skipped_with_a_warning(tmp_path):
  from array_record.python.array_record_module import ArrayRecordWriter
  good = records.make_record(id="a", image=b"\x89PNG fake", lat=1.0, lon=2.0, label="x")
  path = tmp_path / "train-00000-of-00001.array_record"
  writer = ArrayRecordWriter(str(path), "group_size:1")
  writer.write(records.encode_record(good))
  writer.write(b"\x00garbage")
  writer.write(records.encode_record({**good, "id": "b", "lat": float("nan")}))
  writer.close()
  with pytest.warns(UserWarning, match="skipped 2"):
    out = list(builtin.read_records(path))
  assert [r["id"] for r in out] == ["a"]


class _Stderr(io.StringIO):
  def __init__(self, tty: bool):
    super().__init__()
    self.tty = tty

  def isatty(self) -> bool:
    return self.tty


def test_build_says_what_it_does_and_how_long_each_phase_took(tmp_path, monkeypatch):
  """Redirected stderr: phase lines and plain tile counts, no bar; a terminal gets the bar instead of the counts."""
  monkeypatch.setattr(builtin, "PROGRESS_EVERY_S", 0.0)  # a count line per rendered chunk
  monkeypatch.setattr(builtin, "RENDER_CHUNK", 8)
  monkeypatch.setattr(sys, "stderr", _Stderr(tty=False))
  builtin.build(tmp_path / "log", seed=0, n_train=20, n_test=8, image_size=56)
  err = sys.stderr.getvalue()
  for line in ("loading the GeoNames gazetteer", "loading the world rasters", "sampling coordinates",
               "rendering 20 train tiles", "rendering train tiles 8/20", "rendering train tiles 20/20",
               "writing 20 train records", "rendering test tiles 8/8", "writing 8 test records", "done in"):
    assert line in err, (line, err)
  assert "\r" not in err
  phases = json.loads((tmp_path / "log" / "manifest.json").read_text())["phase_seconds"]
  assert list(phases) == ["gazetteer", "rasters", "sampling", "rendering train", "writing train", "rendering test",
                          "writing test"]
  builtin.build(tmp_path / "log", seed=0, n_train=20, n_test=8, image_size=56)
  assert sys.stderr.getvalue() == err  # already built: silent

  monkeypatch.setattr(sys, "stderr", _Stderr(tty=True))
  builtin.build(tmp_path / "tty", seed=0, n_train=20, n_test=8, image_size=56)
  err = sys.stderr.getvalue()
  assert "\r" in err and "rendering train tiles: 100%" in err and "rendering train tiles 8/20" not in err
