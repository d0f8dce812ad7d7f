"""The built-in geolocation dataset: map-style tiles of real places, generated offline from a seed.

Coordinates are drawn near GeoNames cities (so the geography resembles photo datasets: dense where people
live), plus a share of open-sea points whose tiles show only water (not locatable). Each coordinate gets a
tile from `geojax.data.render` and its labels from the gazetteer of `geojax.geo` (Chain of Region).

Storage: one directory per parameter set, holding ArrayRecord shards `<split>-<k>-of-<n>.array_record` in the
record format of `geojax.data.records` (so `records.ArrayRecordSource(dir, split)` and the Grain pipeline read
them) and `manifest.json` (written last: its presence means the build is complete). Records are the example dicts
of CONTRACTS:
  {"id": str, "image": PNG bytes, "lat": float, "lon": float, "country": str, "admin1": str, "city": str,
   "label": str, "clues": list[str], "reasoning": str, "locatable": bool}
Train and test are disjoint by place: no test coordinate shares a HOLDOUT_CELL_DEG cell with a train coordinate.

A build reports on stderr what it is doing: a line per phase, then a tile count (a tqdm bar on a terminal, a plain
line every PROGRESS_EVERY_S otherwise), and the seconds each phase took (also kept in the manifest). On a fresh
machine the gazetteer and the world rasters are built once and cached; after that, rendering the tiles dominates.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import struct
import sys
import time
import warnings
from pathlib import Path
from typing import Iterator

import numpy as np

from geojax.data import records, render

FORMAT_VERSION = 5  # bump when sampling, labels, clues or the record layout change
DEFAULT_PARAMS = {"seed": 0, "n_train": 4000, "n_test": 400, "image_size": 112, "sea_fraction": 0.1}
SPLITS = ("train", "test")
HOLDOUT_CELL_DEG = 0.25  # train/test hold-out granularity (~28 km)
JITTER_KM = 20.0  # std of the offset of a land sample from its GeoNames city, per axis
MIN_SEA_KM = 350.0  # open-sea samples are at least this far from land (and their tiles hold no land)
SHARD_SIZE = 2000
RENDER_CHUNK = 128  # tiles rendered per vectorized call (bounds memory: ~128 x 112 x 112 x 3 float32)
PROGRESS_EVERY_S = 10.0  # tile-count lines on a redirected stderr, where a bar would be a stream of carriage returns


# ------------------------------------------------------------------------------------------------ reading
def read_records(path: str | os.PathLike) -> Iterator[dict]:
  """Example dicts of one ArrayRecord shard, in order; malformed records are skipped with a warning."""
  from array_record.python.array_record_module import ArrayRecordReader
  reader = ArrayRecordReader(str(path))
  bad = 0
  try:
    for data in reader.read_all():
      try:
        example = records.decode_record(data)
      except (ValueError, UnicodeDecodeError, IndexError, TypeError, KeyError, struct.error):
        bad += 1
        continue
      if records.record_problem(example) is None:
        yield example
      else:
        bad += 1
  finally:
    reader.close()
    if bad:
      warnings.warn(f"{path}: skipped {bad} malformed records")


def split_paths(data_dir: str | os.PathLike, split: str) -> list[str]:
  """Shard paths of a split, as listed by the manifest (for grain.sources.ArrayRecordDataSource)."""
  manifest = _read_manifest(Path(data_dir))
  if manifest is None:
    raise FileNotFoundError(f"no complete built-in dataset in {data_dir} (manifest.json missing)")
  if split not in manifest["shards"]:
    raise KeyError(f"unknown split {split!r}; have {sorted(manifest['shards'])}")
  return [str(Path(data_dir) / name) for name in manifest["shards"][split]]


def load_split(data_dir: str | os.PathLike, split: str) -> list[dict]:
  """All example dicts of a split (the default size is a few tens of MB, so a list is fine)."""
  return [ex for path in split_paths(data_dir, split) for ex in read_records(path)]


def decode_image(data: bytes) -> np.ndarray:
  """PNG bytes -> uint8 [H, W, 3]."""
  from PIL import Image
  with Image.open(io.BytesIO(data)) as im:
    return np.asarray(im.convert("RGB"))


# ------------------------------------------------------------------------------------------------ building
def _params(seed: int, n_train: int, n_test: int, image_size: int, sea_fraction: float) -> dict:
  if image_size % 28 != 0 or image_size <= 0:
    raise ValueError(f"image_size must be a positive multiple of 28 (Qwen-VL patch 14 x merge 2), got {image_size}")
  if not 0.0 <= sea_fraction < 1.0:
    raise ValueError(f"sea_fraction must be in [0, 1), got {sea_fraction}")
  if n_train < 0 or n_test < 0:
    raise ValueError("n_train and n_test must be >= 0")
  return {"seed": int(seed), "n_train": int(n_train), "n_test": int(n_test), "image_size": int(image_size),
          "sea_fraction": float(sea_fraction), "format_version": FORMAT_VERSION,
          "raster_version": render.RASTER_VERSION}


def default_dir(**params) -> Path:
  """Cache directory for a parameter set: <cache_root>/builtin/<hash of the parameters>."""
  full = _params(**{**DEFAULT_PARAMS, **params})
  digest = hashlib.sha256(json.dumps(full, sort_keys=True).encode()).hexdigest()[:16]
  return render.cache_root() / "builtin" / digest


def build_if_missing(data_dir: str | os.PathLike | None = None, **params) -> Path:
  """Build the dataset (DEFAULT_PARAMS overridden by params) unless already there; returns its directory."""
  data_dir = Path(data_dir) if data_dir is not None else default_dir(**params)
  build(data_dir, **{**DEFAULT_PARAMS, **params})
  return data_dir


def _read_manifest(data_dir: Path) -> dict | None:
  try:
    with open(data_dir / "manifest.json") as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


class _Report:
  """The build's console output: phase lines with their times, and a tile count that follows the rule of
  geojax.runtime.progress (a tqdm bar only when stderr is a terminal; plain lines otherwise)."""

  def __init__(self):
    self.seconds: dict[str, float] = {}

  def say(self, message: str) -> None:
    from tqdm import tqdm
    tqdm.write(f"built-in dataset: {message}", file=sys.stderr)

  @contextlib.contextmanager
  def phase(self, name: str, message: str):
    self.say(message)
    start = time.time()
    yield
    self.seconds[name] = round(self.seconds.get(name, 0.0) + time.time() - start, 2)

  def summary(self) -> str:
    return ", ".join(f"{name} {s:.1f} s" for name, s in self.seconds.items())


class _TileCount:
  """Tiles rendered so far: a bar on a terminal, else a line at most every PROGRESS_EVERY_S and one at the end."""

  def __init__(self, desc: str, total: int):
    from tqdm import tqdm
    self.desc, self.total, self.done = desc, total, 0
    self.start = self.last = time.time()
    self.bar = tqdm(total=total, desc=f"built-in dataset: {desc}", unit="tile", file=sys.stderr, dynamic_ncols=True,
                    disable=not sys.stderr.isatty(), mininterval=1.0)

  def update(self, n: int) -> None:
    self.done += n
    self.bar.update(n)
    now = time.time()
    if self.bar.disable and (now - self.last >= PROGRESS_EVERY_S or self.done == self.total):
      self.last = now
      rate = self.done / max(now - self.start, 1e-9)
      print(f"built-in dataset: {self.desc} {self.done}/{self.total} ({rate:.0f} tiles/s)", file=sys.stderr,
            flush=True)

  def close(self) -> None:
    self.bar.close()


def _context(report: _Report):
  """The gazetteer (labels), world rasters and the city table they share."""
  with report.phase("gazetteer", "loading the GeoNames gazetteer (parsed on first use, then cached)"):
    from geojax.geo import Gazetteer  # imports JAX: part of this phase's time
    gaz = Gazetteer.load()
  cities = render.CityTable(lat=np.asarray(gaz.lat, np.float64), lon=np.asarray(gaz.lon, np.float64),
                            name=gaz.name, admin1=gaz.admin1, country_code=gaz.country_code,
                            prominence=gaz.prominence)
  with report.phase("rasters", "loading the world rasters (land, countries, coasts: built on first use, then cached)"):
    rasters = render.world_rasters(cities)
  return gaz, cities, rasters


def _cells(lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
  rows = np.floor((lat + 90.0) / HOLDOUT_CELL_DEG).astype(np.int64)
  cols = np.floor((lon + 180.0) / HOLDOUT_CELL_DEG).astype(np.int64) % int(round(360 / HOLDOUT_CELL_DEG))
  return rows * 10_000 + cols


def _is_land(rasters: render.WorldRasters, lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
  height, width = rasters.land.shape
  rows = np.clip(((90.0 - lat) / render.RASTER_RES_DEG).astype(np.int64), 0, height - 1)
  cols = ((lon + 180.0) / render.RASTER_RES_DEG).astype(np.int64) % width
  return rasters.land[rows, cols]


def _sample_land(rng: np.random.Generator, n: int, cities: render.CityTable, rasters, banned: set) -> tuple:
  """n land coordinates near GeoNames cities. Countries are drawn with weight sqrt(#cities) (photo datasets
  are dense where people live, but a few countries should not swamp the rest), then a city of that country,
  then an offset of JITTER_KM per axis; points at sea or in a banned hold-out cell are redrawn."""
  codes, city_country = np.unique(cities.country_code, return_inverse=True)
  counts = np.bincount(city_country)
  weights = np.sqrt(counts) / np.sqrt(counts).sum()
  by_country = np.argsort(city_country, kind="stable")
  starts = np.concatenate([[0], np.cumsum(counts)])
  lats, lons = [np.zeros(0)], [np.zeros(0)]
  have = 0
  while have < n:
    m = 2 * (n - have) + 16
    country = rng.choice(len(codes), size=m, p=weights)
    row = by_country[starts[country] + (rng.random(m) * counts[country]).astype(np.int64)]
    dlat = rng.normal(0.0, JITTER_KM / 111.2, m)
    dlon = rng.normal(0.0, JITTER_KM / 111.2, m) / np.maximum(np.cos(np.radians(cities.lat[row])), 0.1)
    lat = np.round(np.clip(cities.lat[row] + dlat, -89.9, 89.9), 6)
    lon = np.round((cities.lon[row] + dlon + 180.0) % 360.0 - 180.0, 6)
    ok = _is_land(rasters, lat, lon) & ~np.isin(_cells(lat, lon), list(banned))
    lats.append(lat[ok])
    lons.append(lon[ok])
    have += int(ok.sum())
  return np.concatenate(lats)[:n], np.concatenate(lons)[:n]


def _sample_sea(rng: np.random.Generator, n: int, renderer: render.TileRenderer, banned: set) -> tuple:
  """n open-sea coordinates, uniform on the sphere between 70 S and 70 N, far from land: tiles are all water."""
  lats, lons = [np.zeros(0)], [np.zeros(0)]
  have = 0
  sin_max = np.sin(np.radians(70.0))
  while have < n:
    m = 4 * (n - have) + 16
    lat = np.round(np.degrees(np.arcsin(rng.uniform(-sin_max, sin_max, m))), 6)
    lon = np.round(rng.uniform(-180.0, 180.0, m), 6)
    ok = ~_is_land(renderer.rasters, lat, lon)
    ok &= ~np.isin(_cells(lat, lon), list(banned))
    ok[ok] &= renderer.open_water(lat[ok], lon[ok])
    ok[ok] &= _sea_distance_km(renderer.rasters, lat[ok], lon[ok]) >= MIN_SEA_KM
    lats.append(lat[ok])
    lons.append(lon[ok])
    have += int(ok.sum())
  return np.concatenate(lats)[:n], np.concatenate(lons)[:n]


def _sea_distance_km(rasters, lat, lon) -> np.ndarray:
  height, width = rasters.land.shape
  rows = np.clip(((90.0 - lat) / render.RASTER_RES_DEG).astype(np.int64), 0, height - 1)
  cols = ((lon + 180.0) / render.RASTER_RES_DEG).astype(np.int64) % width
  return rasters.coast_km[rows, cols].astype(np.float32)


def _sample_split(rng: np.random.Generator, n: int, sea_fraction: float, cities, renderer, banned: set):
  """Coordinates and locatability of one split, shuffled."""
  n_sea = int(round(n * sea_fraction))
  land = _sample_land(rng, n - n_sea, cities, renderer.rasters, banned)
  sea = _sample_sea(rng, n_sea, renderer, banned)
  lat = np.concatenate([land[0], sea[0]])
  lon = np.concatenate([land[1], sea[1]])
  locatable = np.concatenate([np.ones(n - n_sea, bool), np.zeros(n_sea, bool)])
  order = rng.permutation(n)
  return lat[order], lon[order], locatable[order]


def _clues_and_reasoning(stats: render.TileStats, b: int, renderer: render.TileRenderer, gaz, row: int,
                         locatable: bool) -> tuple[list, str]:
  """Visual entities present in tile b and a short reasoning that names each of them, ending in the answer."""
  from geojax.geo.chain import levels_of_row
  country, state, city = levels_of_row(gaz, row)
  if not locatable:
    return ["open water"], ("The tile shows only open water: no coastline, land or city dots, so it cannot be "
                            f"located from the picture; the nearest gazetteer place is {city}, {country}.")
  rasters = renderer.rasters
  center = int(stats.center_country[b])
  clues, sentences = [], []
  if center > 0:
    texture = render.CONTINENT_TEXTURES.get(rasters.continents[center], ("none", ""))[1]
    colour = f"{renderer.country_hue_name[center]} land"
    clues += [texture, colour]
    continent = gaz.continent(str(gaz.country_code[row])) or rasters.continents[center]
    sentences.append(f"The land has {texture}, the map's mark for {continent}.")
    sentences.append(f"The {colour} around the centre is the fill of {country}, and its region tint points to {state}.")
  if 0.03 < stats.land_frac[b] < 0.97:
    clues.append("coastline")
  if stats.snow_frac[b] > 0.05:
    clues.append("snow")
  if stats.sand_frac[b] > 0.05:
    clues.append("desert")
  if stats.n_countries[b] >= 2:
    clues.append("country border")
  if stats.n_regions[b] >= 3:
    clues.append("region borders")
  if stats.n_cities[b] >= 300:
    clues.append("dense cities")
  elif stats.n_cities[b] <= 15:
    clues.append("few towns")
  extra = clues[2:] if center > 0 else clues
  if extra:
    sentences.append("Also visible: " + ", ".join(extra) + ".")
  sentences.append(f"The ringed dot nearest the centre is {city}." if stats.nearest_city[b] >= 0
                   else f"The nearest place is {city}.")
  return clues, " ".join(sentences)


def _encode_png(image: np.ndarray) -> bytes:
  from PIL import Image
  buf = io.BytesIO()
  Image.fromarray(image).save(buf, format="PNG", compress_level=6)
  return buf.getvalue()


def build(out_dir: str | os.PathLike, *, seed: int = 0, n_train: int = 4000, n_test: int = 400,
          image_size: int = 112, sea_fraction: float = 0.1) -> dict[str, list[str]]:
  """Generate the dataset into out_dir (skipped when out_dir already holds this exact parameter set).

  Deterministic: the same parameters give byte-identical shards. The test split depends only on (seed, n_test,
  image_size, sea_fraction), so changing n_train keeps it. Returns {split: [shard paths]}.
  """
  params = _params(seed, n_train, n_test, image_size, sea_fraction)
  out_dir = Path(out_dir).resolve()  # a symlink is swapped at its target (a link itself cannot be replaced by a dir)
  manifest = _read_manifest(out_dir)
  if manifest is not None and manifest.get("params") == params:
    return {split: split_paths(out_dir, split) for split in SPLITS}
  if manifest is None and out_dir.is_dir() and any(out_dir.iterdir()):
    raise FileExistsError(f"{out_dir} holds files that are not a built-in dataset; not overwriting")
  start = time.time()
  report = _Report()
  report.say(f"building {n_train} train + {n_test} test tiles of {image_size} px into {out_dir}")
  gaz, cities, rasters = _context(report)
  with report.phase("sampling", "sampling coordinates near GeoNames cities and at sea"):
    renderer = render.TileRenderer(rasters, cities, image_size=image_size)
    seeds = np.random.SeedSequence([FORMAT_VERSION, seed]).spawn(2)  # test coordinates, train coordinates
    test = _sample_split(np.random.default_rng(seeds[0]), n_test, sea_fraction, cities, renderer, banned=set())
    banned = set(_cells(test[0], test[1]).tolist())
    train = _sample_split(np.random.default_rng(seeds[1]), n_train, sea_fraction, cities, renderer, banned)

  tmp_dir = out_dir.parent / f".{out_dir.name}.tmp{os.getpid()}"
  shutil.rmtree(tmp_dir, ignore_errors=True)
  tmp_dir.mkdir(parents=True)
  shards, counts = {}, {}
  for split, (lat, lon, locatable) in (("train", train), ("test", test)):
    # Rendering includes the PNG encoding and the labels of each tile.
    with report.phase(f"rendering {split}", f"rendering {len(lat)} {split} tiles (map, PNG, labels)"):
      rows = gaz.nearest_np(lat, lon)
      examples = []
      count = _TileCount(f"rendering {split} tiles", len(lat))
      for c0 in range(0, len(lat), RENDER_CHUNK):
        images, stats = renderer(lat[c0:c0 + RENDER_CHUNK], lon[c0:c0 + RENDER_CHUNK])
        for b in range(len(images)):
          i = c0 + b
          examples.append(_example(split, i, images[b], lat[i], lon[i], int(rows[i]), bool(locatable[i]), stats, b,
                                   renderer, gaz))
        count.update(len(images))
      count.close()
    # records' writer deals examples round-robin over the shards; their order is fixed, so bytes are too.
    num_shards = max(1, -(-len(examples) // SHARD_SIZE))
    with report.phase(f"writing {split}", f"writing {len(examples)} {split} records to {num_shards} shard(s)"):
      with records.ArrayRecordWriter(str(tmp_dir), split, num_shards=num_shards) as w:
        for example in examples:
          w.write(example)
    shards[split] = [Path(p).name for p in w.paths]
    counts[split] = {"n": len(examples), "n_locatable": int(locatable.sum())}
  new_manifest = {"params": params, "shards": shards, "counts": counts, "build_seconds": round(time.time() - start, 2),
                  "phase_seconds": report.seconds, "record_fields": list(records.RECORD_FIELDS),
                  "serialization": "geojax.data.records", "image_format": "PNG"}
  report.say(f"done in {new_manifest['build_seconds']:.1f} s ({report.summary()})")
  with open(tmp_dir / "manifest.json", "w") as f:
    json.dump(new_manifest, f, indent=1)
  # Swap the finished directory in; if a concurrent builder of the same parameters won the race, keep theirs.
  existing = _read_manifest(out_dir)
  if existing is not None and existing.get("params") == params:
    shutil.rmtree(tmp_dir, ignore_errors=True)
    return {split: split_paths(out_dir, split) for split in SPLITS}
  if out_dir.exists():
    shutil.rmtree(out_dir, ignore_errors=True)
  try:
    os.replace(tmp_dir, out_dir)
  except OSError:
    shutil.rmtree(tmp_dir, ignore_errors=True)
    if (_read_manifest(out_dir) or {}).get("params") != params:  # never hand back another parameter set's data
      raise
  return {split: split_paths(out_dir, split) for split in SPLITS}


def _example(split, i, image, lat, lon, row, locatable, stats, b, renderer, gaz) -> dict:
  from geojax.geo.chain import format_chain, levels_of_row
  country, state, city = levels_of_row(gaz, row)
  clues, reasoning = _clues_and_reasoning(stats, b, renderer, gaz, row, locatable)
  return records.make_record(id=f"builtin-{split}-{i:06d}", image=_encode_png(image), lat=float(lat), lon=float(lon),
                             country=country, admin1=state, city=city,
                             label=format_chain(country, state, city, lat, lon), clues=clues, reasoning=reasoning,
                             locatable=locatable)


def main(argv=None) -> None:
  """CLI: python -m geojax.data.builtin [--out DIR] [--seed 0] [--n_train 4000] [--n_test 400] ..."""
  import argparse
  parser = argparse.ArgumentParser(description="Build the built-in geolocation dataset.")
  parser.add_argument("--out", default=None, help="output directory (default: default_dir() of the parameters)")
  for key, value in DEFAULT_PARAMS.items():
    parser.add_argument(f"--{key}", type=type(value), default=value)
  args = vars(parser.parse_args(argv))
  out = args.pop("out")
  start = time.time()
  data_dir = build_if_missing(out, **args)
  manifest = _read_manifest(data_dir)
  print(f"{data_dir}: {manifest['counts']} (built in {manifest['build_seconds']} s; "
        f"this call {time.time() - start:.1f} s)")


if __name__ == "__main__":
  main()
