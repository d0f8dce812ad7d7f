"""Map-style tiles of the world, rendered with vectorized numpy from real geographic data.

The world is rasterized once (country polygons from geo-intel-offline, the land/sea mask of global-land-mask,
GeoNames cities for first-level regions) and cached under ~/.cache/geojax. A tile centred on a coordinate is
then a handful of array look-ups per pixel, so thousands of tiles render in seconds on a CPU.

Cues, from coarse to fine, so that a small model can learn location at several levels:
- continent: a brightness texture on land (stripes of a given orientation, dots, checks) per continent;
- country: a fill colour hashed from the ISO code, with dark country borders;
- region (admin1): a brightness tint hashed from the region, with thin region borders;
- city: dots for the nearest cities, coloured by a hash of the city and sized by proximity;
- latitude and climate: colour temperature, snow at high latitude, sand in subtropical interiors with almost
  no settlements (deserts), a 5-degree graticule.
Open sea carries no cue (plain water), so far-offshore tiles are not locatable.
"""
from __future__ import annotations

import dataclasses
import gzip
import hashlib
import json
import os
from pathlib import Path

import numpy as np

RASTER_RES_DEG = 0.05  # cell size of the land / country / coast rasters (~5.5 km)
REGION_RES_DEG = 0.1  # cell size of the region (admin1) raster
RASTER_VERSION = 2  # bump when the rasterization changes; part of the cache file name
TILE_SPAN_DEG = 5.0  # north-south extent of a tile (~556 km); east-west is widened by 1/cos(lat)
SHALLOW_KM = 45.0  # width of the lighter band of sea along coasts
TOWN_CELL_DEG = 0.5  # one small town dot per cell of this size (its most prominent city), so density shows

# Continent -> (texture kind, clue phrase). Names as geo-intel-offline spells them.
CONTINENT_TEXTURES = {
  "Europe": ("hstripes", "horizontal stripes"),
  "Asia": ("dstripes", "diagonal stripes"),
  "Africa": ("dots", "dotted texture"),
  "North America": ("vstripes", "vertical stripes"),
  "South America": ("checks", "checkered texture"),
  "Oceania": ("crosshatch", "crosshatch texture"),
  "Antarctica": ("none", "plain ice"),
}
CONTINENT_NAMES = tuple(CONTINENT_TEXTURES)

# Natural Earth marks some polygons with ISO "-99"; these are the ones with an obvious GeoNames country code.
_NAME_TO_ISO2 = {
  "France": "FR", "Norway": "NO", "Kosovo": "XK", "Somaliland": "SO", "N. Cyprus": "CY",
  "Cyprus U.N. Buffer Zone": "CY", "Dhekelia": "GB", "Akrotiri": "GB", "USNB Guantanamo Bay": "CU",
  "Baikonur": "KZ", "Siachen Glacier": "IN", "Southern Patagonian Ice Field": "AR", "Bir Tawil": "EG",
  "Brazilian I.": "BR", "Indian Ocean Ter.": "AU", "Coral Sea Is.": "AU", "Ashmore and Cartier Is.": "AU",
  "Spratly Is.": "PH", "Clipperton I.": "FR", "Bajo Nuevo Bank": "CO", "Serranilla Bank": "CO",
  "Scarborough Reef": "PH", "Taiwan": "TW",
}
# Continents for the "Seven seas" islands and codes the polygons do not carry.
_EXTRA_CONTINENTS = {
  "MV": "Asia", "IO": "Asia", "MU": "Africa", "SC": "Africa", "TF": "Antarctica", "HM": "Antarctica",
  "SH": "Africa", "GS": "South America", "FK": "South America", "CX": "Asia", "CC": "Asia", "BV": "Antarctica",
  "RE": "Africa", "YT": "Africa", "XK": "Europe", "GI": "Europe", "VA": "Europe", "SM": "Europe",
  "MC": "Europe", "LI": "Europe", "AD": "Europe", "MT": "Europe", "BH": "Asia", "SG": "Asia", "HK": "Asia",
  "MO": "Asia", "GP": "North America", "MQ": "North America", "GF": "South America", "PM": "North America",
  "BQ": "North America", "SX": "North America", "CW": "North America", "BL": "North America",
  "MF": "North America", "AX": "Europe", "SJ": "Europe", "TK": "Oceania", "UM": "Oceania", "CK": "Oceania",
  "NU": "Oceania", "WF": "Oceania", "PN": "Oceania", "NF": "Oceania", "TV": "Oceania", "NR": "Oceania",
  "MH": "Oceania", "PW": "Oceania", "KI": "Oceania", "FM": "Oceania", "AS": "Oceania", "GU": "Oceania",
  "MP": "Oceania", "TO": "Oceania", "WS": "Oceania",
}

_HUE_NAMES = ("red", "orange", "yellow", "lime", "green", "teal", "cyan", "azure", "blue", "violet",
              "magenta", "pink")

SEA_RGB = np.array([28, 52, 96], np.float32)
SHALLOW_RGB = np.array([62, 112, 160], np.float32)
SNOW_RGB = np.array([240, 244, 250], np.float32)
SAND_RGB = np.array([222, 196, 138], np.float32)
ICE_SEA_RGB = np.array([150, 170, 190], np.float32)


def cache_root() -> Path:
  """Directory for geojax caches (GEOJAX_CACHE overrides ~/.cache/geojax)."""
  return Path(os.environ.get("GEOJAX_CACHE", Path.home() / ".cache" / "geojax"))


def stable_hash(text: str) -> int:
  """A 64-bit hash of text that does not change between processes (unlike hash())."""
  return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little")


def _hsv_to_rgb(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
  """Vectorized HSV (h in [0, 1)) to RGB in [0, 255]."""
  i = np.floor(h * 6.0).astype(np.int64) % 6
  f = h * 6.0 - np.floor(h * 6.0)
  p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
  table = np.stack([np.stack(c, -1) for c in ((v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q))])
  return 255.0 * table[i, np.arange(len(h))]


def country_color(code: str) -> tuple[np.ndarray, str]:
  """Fill colour of a country (RGB float32 in [0, 255]) hashed from its code, and the colour's name."""
  h = stable_hash("country:" + code)
  hue = (h % 360) / 360.0
  sat = 0.45 + 0.4 * ((h >> 12) % 100) / 99.0
  val = 0.7 + 0.25 * ((h >> 24) % 100) / 99.0
  rgb = _hsv_to_rgb(np.array([hue]), np.array([sat]), np.array([val]))[0].astype(np.float32)
  return rgb, _HUE_NAMES[int(round(hue * 12)) % 12]


def region_tint(key: str) -> float:
  """Brightness factor of a first-level region, hashed from "CC/admin1"."""
  return 0.8 + 0.35 * (stable_hash("region:" + key) % 1000) / 999.0


def city_color(key: str) -> np.ndarray:
  """Bright RGB colour of a city dot, hashed from "CC/admin1/name"."""
  h = stable_hash("city:" + key)
  return _hsv_to_rgb(np.array([(h % 360) / 360.0]), np.array([0.9]), np.array([1.0]))[0].astype(np.float32)


@dataclasses.dataclass(frozen=True)
class CityTable:
  """The gazetteer rows the renderer needs (same rows and order as the label gazetteer)."""
  lat: np.ndarray  # float64 [N]
  lon: np.ndarray  # float64 [N]
  name: np.ndarray  # str [N]
  admin1: np.ndarray  # str [N]
  country_code: np.ndarray  # str [N]
  prominence: np.ndarray | None = None  # int [N] how many cities are nearby (bigger = more prominent)

  def fingerprint(self) -> str:
    """Short hash that changes when the rows change (part of raster cache names)."""
    digest = hashlib.blake2b(digest_size=8)
    digest.update(np.ascontiguousarray(self.lat, np.float64).tobytes())
    digest.update(np.ascontiguousarray(self.lon, np.float64).tobytes())
    digest.update("\n".join(self.country_code.tolist() + self.admin1.tolist()).encode("utf-8"))
    return digest.hexdigest()


def unit_vectors(lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
  """Points on the unit sphere, for nearest-neighbour search by chord length (== by great-circle distance)."""
  la, lo = np.radians(lat), np.radians(lon)
  return np.stack([np.cos(la) * np.cos(lo), np.cos(la) * np.sin(lo), np.sin(la)], -1)


@dataclasses.dataclass(frozen=True)
class WorldRasters:
  """Global rasters, row 0 at the north pole, column 0 at 180 W."""
  land: np.ndarray  # bool [H, W] at RASTER_RES_DEG
  country: np.ndarray  # int16 [H, W] index into codes; 0 = no country (sea)
  coast_km: np.ndarray  # float16 [H, W] distance to the nearest cell of the other kind (land <-> sea), km
  region: np.ndarray  # int32 [H2, W2] at REGION_RES_DEG: index into region_keys of the nearest city, -1 on sea
  codes: tuple  # ISO2 (or a name for unassigned islands) per country index; codes[0] == ""
  continents: tuple  # continent name per country index
  region_keys: tuple  # "CC/admin1" per region index


def _load_polygons() -> tuple[list, list, list]:
  """(rings per country, iso2 per country, continent per country) from geo-intel-offline."""
  import geo_intel_offline
  data_dir = Path(geo_intel_offline.__file__).parent / "data"
  with gzip.open(data_dir / "metadata.json.gz", "rt", encoding="utf-8") as f:
    meta = json.load(f)
  with gzip.open(data_dir / "polygons.json.gz", "rt", encoding="utf-8") as f:
    polys = json.load(f)
  rings, codes, continents = [], [], []
  for key in sorted(polys, key=int):
    entry, info = polys[key], meta[key]
    code = info["iso2"] if len(info["iso2"]) == 2 else _NAME_TO_ISO2.get(info["name"], info["name"])
    cont = info["continent"]
    if cont not in CONTINENT_TEXTURES:
      cont = _EXTRA_CONTINENTS.get(code, "Oceania")
    rings.append(entry["exteriors"] if entry.get("multi") else [entry["exterior"]])
    codes.append(code)
    continents.append(cont)
  return rings, codes, continents


def _ring_area(ring: np.ndarray) -> float:
  x, y = ring[:, 1], ring[:, 0]
  return 0.5 * abs(float(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))


def _land_mask(height: int, width: int) -> np.ndarray:
  """global-land-mask's 1/120-degree ocean mask, reduced to a land raster by majority vote."""
  import global_land_mask
  path = Path(global_land_mask.__file__).parent / "globe_combined_mask_compressed.npz"
  with np.load(path) as f:
    ocean = f["mask"]
  factor = ocean.shape[0] // height
  # Sum in row strips to keep memory small (the full mask is ~930 MB of bools).
  out = np.empty((height, width), bool)
  step = 300
  for r0 in range(0, height, step):
    block = ocean[r0 * factor:(r0 + step) * factor].reshape(-1, factor, width, factor)
    out[r0:r0 + step] = block.sum((1, 3), dtype=np.int32) * 2 < factor * factor
  return out


def _rasterize_countries(height: int, width: int, rings, codes) -> np.ndarray:
  """Country index per cell (1-based; 0 = none). Larger polygons first so enclaves draw on top."""
  from PIL import Image, ImageDraw
  canvas = Image.new("I", (width, height), 0)
  draw = ImageDraw.Draw(canvas)
  shapes = []
  for idx, country_rings in enumerate(rings):
    for ring in country_rings:
      arr = np.asarray(ring, np.float64)
      if len(arr) >= 3 and codes[idx] != "AQ":
        shapes.append((_ring_area(arr), idx + 1, arr))
  for _, index, arr in sorted(shapes, key=lambda s: -s[0]):
    xs = (arr[:, 1] + 180.0) / RASTER_RES_DEG
    ys = (90.0 - arr[:, 0]) / RASTER_RES_DEG
    draw.polygon(list(zip(xs.tolist(), ys.tolist())), fill=int(index))
  return np.array(canvas, np.int32)


def _build_rasters(cities: CityTable) -> WorldRasters:
  from scipy import ndimage, spatial
  height, width = int(round(180 / RASTER_RES_DEG)), int(round(360 / RASTER_RES_DEG))
  rings, codes, continents = _load_polygons()
  land = _land_mask(height, width)
  country = _rasterize_countries(height, width, rings, codes)
  # Antarctica's ring crosses the antimeridian; all land south of 60 S is Antarctica.
  aq = codes.index("AQ") + 1
  country[int((90 + 60) / RASTER_RES_DEG):][land[int((90 + 60) / RASTER_RES_DEG):]] = aq
  # Land cells the simplified polygons miss take the nearest country; sea cells have none.
  ri, ci = ndimage.distance_transform_edt(country == 0, return_distances=False, return_indices=True)
  country = np.where(land, country[ri, ci], 0).astype(np.int16)
  del ri, ci
  # Distance to the coast (the nearest cell with a neighbour of the other kind), in km: cells are ~5.5 km
  # north-south, narrower east-west at high latitude; good enough for shading and clues. One transform
  # serves land and sea alike.
  coast = np.zeros_like(land)
  coast[:, :-1] |= land[:, :-1] != land[:, 1:]
  coast[:-1, :] |= land[:-1, :] != land[1:, :]
  coast_km = (ndimage.distance_transform_edt(~coast) * (111.2 * RASTER_RES_DEG)).astype(np.float16)
  # Regions: each land cell takes the admin1 of its nearest gazetteer city.
  h2, w2 = int(round(180 / REGION_RES_DEG)), int(round(360 / REGION_RES_DEG))
  factor = int(round(REGION_RES_DEG / RASTER_RES_DEG))
  land2 = land.reshape(h2, factor, w2, factor).any((1, 3))
  rows, cols = np.nonzero(land2)
  lat = 90.0 - (rows + 0.5) * REGION_RES_DEG
  lon = -180.0 + (cols + 0.5) * REGION_RES_DEG
  tree = spatial.cKDTree(unit_vectors(cities.lat, cities.lon))
  _, nearest = tree.query(unit_vectors(lat, lon), workers=-1)
  keys = np.char.add(np.char.add(cities.country_code.astype(str), "/"), cities.admin1.astype(str))
  region_keys, region_of_city = np.unique(keys, return_inverse=True)
  region = np.full((h2, w2), -1, np.int32)
  region[rows, cols] = region_of_city[nearest]
  return WorldRasters(land=land, country=country, coast_km=coast_km, region=region,
                      codes=tuple([""] + codes), continents=tuple([""] + continents),
                      region_keys=tuple(region_keys.tolist()))


def world_rasters(cities: CityTable) -> WorldRasters:
  """The global rasters, built on first use (~30 s) and cached as npz under cache_root()."""
  path = cache_root() / f"world_rasters_v{RASTER_VERSION}_{cities.fingerprint()}.npz"
  if path.exists():
    with np.load(path, allow_pickle=False) as f:
      return WorldRasters(land=f["land"], country=f["country"], coast_km=f["coast_km"], region=f["region"],
                          codes=tuple(f["codes"].tolist()), continents=tuple(f["continents"].tolist()),
                          region_keys=tuple(f["region_keys"].tolist()))
  rasters = _build_rasters(cities)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_suffix(f".tmp{os.getpid()}.npz")
  np.savez_compressed(tmp, land=rasters.land, country=rasters.country, coast_km=rasters.coast_km,
                      region=rasters.region, codes=np.array(rasters.codes), continents=np.array(rasters.continents),
                      region_keys=np.array(rasters.region_keys))
  os.replace(tmp, path)  # atomic, so concurrent builders never read half a file
  return rasters


def _texture(kind: str, size: int) -> np.ndarray:
  """Brightness factor [size, size] of a continent texture, in pixel space (periods scale with the tile)."""
  period = max(4, int(round(6 * size / 112)))
  half = period // 2
  i, j = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
  if kind == "hstripes":
    dark = (i // half) % 2 == 0
  elif kind == "vstripes":
    dark = (j // half) % 2 == 0
  elif kind == "dstripes":
    dark = ((i + j) // half) % 2 == 0
  elif kind == "crosshatch":
    dark = ((i + j) % period == 0) | ((i - j) % period == 0)
  elif kind == "dots":
    dark = (i % period < half) & (j % period < half)
  elif kind == "checks":
    dark = ((i // period) + (j // period)) % 2 == 0
  else:
    dark = np.zeros((size, size), bool)
  return np.where(dark, 0.86, 1.0).astype(np.float32)


def _disc(radius: float) -> np.ndarray:
  r = int(np.ceil(radius))
  y, x = np.mgrid[-r:r + 1, -r:r + 1]
  return (x * x + y * y) <= radius * radius + 0.25


@dataclasses.dataclass
class TileStats:
  """Per-tile facts the clue and reasoning texts are made from (arrays of length B)."""
  land_frac: np.ndarray
  snow_frac: np.ndarray
  sand_frac: np.ndarray
  n_countries: np.ndarray
  n_regions: np.ndarray
  n_cities: np.ndarray  # gazetteer cities within the tile's half-span of the centre
  center_country: np.ndarray  # country index at the centre, else the tile's most common land country (0 = none)
  center_region: np.ndarray  # region index at the centre pixel (-1 = sea)
  nearest_city: np.ndarray  # gazetteer row of the biggest (nearest) dot, -1 when no dot is drawn


def _count_distinct(ids: np.ndarray, ignore: int) -> np.ndarray:
  """Distinct values per row of ids [B, N], not counting `ignore`."""
  s = np.sort(ids, axis=1)
  new = np.concatenate([np.ones((len(s), 1), bool), s[:, 1:] != s[:, :-1]], axis=1)
  return (new & (s != ignore)).sum(1)


class TileRenderer:
  """Renders map-style tiles centred on coordinates. Build once (tables, textures, city index), call many times."""

  def __init__(self, rasters: WorldRasters, cities: CityTable, image_size: int = 112,
               span_deg: float = TILE_SPAN_DEG, n_dots: int = 3):
    from scipy import spatial
    if image_size % 2:
      raise ValueError(f"image_size must be even, got {image_size}")
    self.rasters, self.cities, self.size, self.span, self.n_dots = rasters, cities, image_size, span_deg, n_dots
    self.grid = image_size // 2 if image_size >= 112 else image_size  # map cells per side (see __call__)
    self.country_rgb = np.stack([SEA_RGB] + [country_color(c)[0] for c in rasters.codes[1:]]).astype(np.float32)
    self.country_hue_name = [""] + [country_color(c)[1] for c in rasters.codes[1:]]
    self.region_tint = np.array([region_tint(k) for k in rasters.region_keys] + [1.0], np.float32)  # [-1] -> 1.0
    kinds = [CONTINENT_TEXTURES.get(c, ("none", ""))[0] for c in rasters.continents]
    names = sorted(set(kinds))
    self.continent_texture = np.stack([_texture(k, image_size) for k in names])  # [K, S, S]
    self.texture_of_country = np.array([names.index(k) for k in kinds], np.int32)
    self.tree = spatial.cKDTree(unit_vectors(cities.lat, cities.lon))
    self.town_grid, self.town_density = _town_grid(cities)
    self.scale = image_size / 112.0
    self.discs = [_disc(r * self.scale) for r in (3.6, 2.6, 1.6)]
    self.rings = [_disc((r + 1.0) * self.scale) for r in (3.6, 2.6, 1.6)]

  def pixel_coordinates(self, lat: np.ndarray, lon: np.ndarray, size: int | None = None
                        ) -> tuple[np.ndarray, np.ndarray]:
    """Latitude [B, n, 1] and longitude [B, 1, n] of the centres of an n x n grid over each tile
    (n = image size by default; north up, east right)."""
    n = size or self.size
    v = ((np.arange(n) + 0.5) / n - 0.5).astype(np.float64)
    widen = 1.0 / np.maximum(np.cos(np.radians(lat)), 0.2)
    plat = np.clip(lat[:, None, None] - v[None, :, None] * self.span, -89.999, 89.999)
    plon = lon[:, None, None] + v[None, None, :] * self.span * widen[:, None, None]
    plon = (plon + 180.0) % 360.0 - 180.0
    return plat, plon

  def _lookup(self, plat: np.ndarray, plon: np.ndarray):
    r = self.rasters
    height, width = r.land.shape
    rows = np.clip(((90.0 - plat) / RASTER_RES_DEG).astype(np.int64), 0, height - 1)
    cols = ((plon + 180.0) / RASTER_RES_DEG).astype(np.int64) % width
    factor = int(round(REGION_RES_DEG / RASTER_RES_DEG))
    return (r.land[rows, cols], r.country[rows, cols].astype(np.int32), r.coast_km[rows, cols].astype(np.float32),
            r.region[rows // factor, cols // factor])

  def open_water(self, lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    """Whether each tile would be plain deep water (no land, no coastal band), without rendering it."""
    plat, plon = self.pixel_coordinates(np.asarray(lat, np.float64), np.asarray(lon, np.float64), self.grid)
    land, _, coast, _ = self._lookup(plat, plon)
    return ~land.any((1, 2)) & (coast.min((1, 2)) >= SHALLOW_KM)

  def __call__(self, lat: np.ndarray, lon: np.ndarray) -> tuple[np.ndarray, TileStats]:
    """Tiles uint8 [B, S, S, 3] centred on (lat, lon) in degrees, and facts about each tile.

    From 112 px up, the map is computed on an (S/2)^2 grid and upsampled 2x (lines come out 2 px wide, which
    such tiles need anyway); smaller tiles are computed per pixel. Texture and city dots are full resolution.
    """
    lat = np.asarray(lat, np.float64)
    lon = np.asarray(lon, np.float64)
    s, g, up = self.size, self.grid, self.size // self.grid
    plat, plon = self.pixel_coordinates(lat, lon, g)
    land, country, coast, region = self._lookup(plat, plon)
    abs_lat = np.abs(plat).astype(np.float32)  # [B, g, 1]

    # Land: country fill x region tint, then climate blends (sand in dry interiors, snow, colour temperature).
    rgb = self.country_rgb[country] * self.region_tint[region][..., None]
    # Dry interiors: subtropical, inland and nearly empty of settlements (a stand-in for climate data).
    grid_rows, grid_cols = self.town_grid.shape
    town_rows = np.clip(((90.0 - plat) / TOWN_CELL_DEG).astype(np.int64), 0, grid_rows - 1)
    town_cols = ((plon + 180.0) / TOWN_CELL_DEG).astype(np.int64) % grid_cols
    density = self.town_density[town_rows, town_cols]
    sand = land & (abs_lat >= 14) & (abs_lat <= 35) & (coast >= 120) & (density <= 4)
    w_sand = np.where(sand, np.where(density <= 1, 0.6, 0.4), 0).astype(np.float32)
    rgb += w_sand[..., None] * (SAND_RGB - rgb)
    w_snow = np.where(land, np.clip((abs_lat - 57) / 12, 0, 0.85), 0).astype(np.float32)
    rgb += w_snow[..., None] * (SNOW_RGB - rgb)
    warm = np.clip(1 - abs_lat / 40, -1, 1)[..., None] * np.array([0.08, 0.0, -0.08], np.float32)
    rgb *= 1 + warm

    # Sea: plain deep water, lighter in a band along coasts.
    w_shallow = np.clip(1 - coast / SHALLOW_KM, 0, 1)[..., None]
    rgb = np.where(land[..., None], rgb, SEA_RGB + w_shallow * (SHALLOW_RGB - SEA_RGB))

    # Lines: country borders (dark), region borders (lighter), graticule every 5 degrees (faint, land only).
    both_land = land.copy()
    both_land[:, :, :-1] &= land[:, :, 1:]
    both_land[:, :-1, :] &= land[:, 1:, :]
    country_edge = _edges(country) & both_land
    region_edge = _edges(region) & both_land & ~country_edge
    lat_cell = np.floor(plat / 5.0)
    lon_cell = np.floor(plon / 5.0)
    graticule = np.zeros(land.shape, bool)
    graticule[:, :-1, :] |= lat_cell[:, :-1] != lat_cell[:, 1:]
    graticule[:, :, :-1] |= lon_cell[:, :, :-1] != lon_cell[:, :, 1:]
    shade = np.where(country_edge, 0.22, np.where(region_edge, 0.62, np.where(graticule & land, 0.78, 1.0)))
    rgb *= shade[..., None].astype(np.float32)

    # Towns: a dark dot in the cell of the most prominent city of each TOWN_CELL_DEG cell.
    town = self.town_grid[town_rows, town_cols]
    safe = np.maximum(town, 0)
    dy = np.abs(plat - self.cities.lat[safe])
    dx = np.abs((plon - self.cities.lon[safe] + 180.0) % 360.0 - 180.0) * np.cos(np.radians(plat))
    half_cell = 0.5 * self.span / g
    rgb = np.where(((town >= 0) & (dx <= half_cell) & (dy <= half_cell))[..., None], np.float32(35.0), rgb)

    # Upsample; the continent texture (full resolution, land only) multiplies the result.
    rgb = rgb.repeat(up, axis=1).repeat(up, axis=2)
    texture_id = self.texture_of_country[country].repeat(up, axis=1).repeat(up, axis=2)
    rgb *= self.continent_texture[texture_id, np.arange(s)[:, None], np.arange(s)[None, :]][..., None]

    # Cities: the nearest gazetteer cities as coloured dots, the nearest biggest and ringed in white.
    half_chord = 2 * np.sin(np.radians(self.span * 0.5) / 2)
    centres = unit_vectors(lat, lon)
    n_cities = self.tree.query_ball_point(centres, half_chord, return_length=True, workers=-1)
    _, near = self.tree.query(centres, k=self.n_dots, workers=-1)
    near = near.reshape(len(lat), self.n_dots)
    nearest_city = np.full(len(lat), -1, np.int64)
    widen = np.maximum(np.cos(np.radians(lat)), 0.2)
    for b in range(len(lat)):
      for rank in range(self.n_dots - 1, -1, -1):  # far first, so the nearest dot ends on top
        row = near[b, rank]
        dlon = (self.cities.lon[row] - lon[b] + 180.0) % 360.0 - 180.0
        x = s / 2 + dlon * widen[b] / self.span * s - 0.5
        y = s / 2 - (self.cities.lat[row] - lat[b]) / self.span * s - 0.5
        if not (0 <= x < s and 0 <= y < s):
          continue
        size = 0 if rank == 0 else 1
        color = city_color(f"{self.cities.country_code[row]}/{self.cities.admin1[row]}/{self.cities.name[row]}")
        _stamp(rgb[b], self.rings[size], x, y, np.array([250, 250, 250] if rank == 0 else [20, 20, 20], np.float32))
        _stamp(rgb[b], self.discs[size], x, y, color)
        if rank == 0:
          nearest_city[b] = row
    images = np.clip(np.rint(rgb), 0, 255).astype(np.uint8)

    c = g // 2
    sub = (slice(None), slice(None, None, max(1, g // 28)), slice(None, None, max(1, g // 28)))
    stats = TileStats(
      land_frac=land.mean((1, 2)),
      snow_frac=((w_snow > 0.35) & land).mean((1, 2)),
      sand_frac=(w_sand > 0.3).mean((1, 2)),
      n_countries=_count_distinct(country[sub].reshape(len(lat), -1), 0),
      n_regions=_count_distinct(region[sub].reshape(len(lat), -1), -1),
      n_cities=np.asarray(n_cities),
      center_country=_main_country(country, c),
      center_region=region[:, c, c],
      nearest_city=nearest_city)
    return images, stats


def _main_country(country: np.ndarray, c: int) -> np.ndarray:
  """Country index at the centre cell, or (centre at sea) the most common land country of the tile."""
  out = country[:, c, c].copy()
  for b in np.nonzero(out == 0)[0]:
    counts = np.bincount(country[b].ravel())
    counts[0] = 0
    out[b] = counts.argmax() if counts.max() > 0 else 0
  return out


def _edges(ids: np.ndarray) -> np.ndarray:
  """Cells [B, n, n] whose right or lower neighbour has a different id."""
  e = np.zeros(ids.shape, bool)
  e[:, :, :-1] |= ids[:, :, :-1] != ids[:, :, 1:]
  e[:, :-1, :] |= ids[:, :-1, :] != ids[:, 1:, :]
  return e


def _town_grid(cities: CityTable) -> tuple[np.ndarray, np.ndarray]:
  """Over TOWN_CELL_DEG cells: int32 [rows, cols] gazetteer row of each cell's most prominent city (-1: none),
  and int32 [rows, cols] how many gazetteer cities lie in the 3 x 3 cells around each cell (settlement density)."""
  rows, cols = int(round(180 / TOWN_CELL_DEG)), int(round(360 / TOWN_CELL_DEG))
  r = np.clip(((90.0 - cities.lat) / TOWN_CELL_DEG).astype(np.int64), 0, rows - 1)
  c = ((cities.lon + 180.0) / TOWN_CELL_DEG).astype(np.int64) % cols
  cell = r * cols + c
  prominence = cities.prominence if cities.prominence is not None else np.zeros(len(cell))
  order = np.lexsort((-np.asarray(prominence, np.float64), cell))  # by cell, most prominent first
  first = np.concatenate([[True], cell[order][1:] != cell[order][:-1]])
  grid = np.full(rows * cols, -1, np.int32)
  grid[cell[order][first]] = order[first]
  counts = np.bincount(cell, minlength=rows * cols).reshape(rows, cols)
  padded = np.pad(counts, ((1, 1), (0, 0)))
  density = sum(np.roll(padded, dc, axis=1)[1 + dr:rows + 1 + dr] for dr in (-1, 0, 1) for dc in (-1, 0, 1))
  return grid.reshape(rows, cols), density.astype(np.int32)


def _stamp(image: np.ndarray, mask: np.ndarray, x: float, y: float, color: np.ndarray) -> None:
  """Paint `color` on image [S, S, 3] where the boolean mask, centred at pixel (x, y), is set (clipped)."""
  s = image.shape[0]
  r = mask.shape[0] // 2
  cx, cy = int(round(x)), int(round(y))
  y0, y1, x0, x1 = cy - r, cy + r + 1, cx - r, cx + r + 1
  my0, mx0 = max(0, -y0), max(0, -x0)
  y0c, y1c, x0c, x1c = max(0, y0), min(s, y1), max(0, x0), min(s, x1)
  if y0c >= y1c or x0c >= x1c:
    return
  m = mask[my0:my0 + (y1c - y0c), mx0:mx0 + (x1c - x0c)]
  image[y0c:y1c, x0c:x1c][m] = color
