"""Random-access sources over geolocation datasets in their published layouts, yielding example records.

Layouts (paths are given explicitly; nothing is downloaded):
  mp16        CSV with IMG_ID, LAT, LON (mp16_places365.csv); images by IMG_ID under a folder, tar or zip shards.
  mp16_pro    as mp16 plus city, county, state, region, country (MP16_Pro_places365.csv).
  im2gps3k    im2gps3k_places365.csv (IMG_ID, AUTHOR, LAT, LON, ...) + the im2gps3k image folder.
  yfcc4k      yfcc4k_places365.csv (IMG_ID, AUTHOR, LAT, LON, ...) + the yfcc4k image folder.
  osv5m       train.csv / test.csv (id, latitude, longitude, country, region, sub-region, city, ...) + images in
              zip files (images/{split}/00.zip ...) holding `{id}.jpg`.
  mp16_reason JSON Lines, one object per line (or one JSON list) in the layout geojax defines for MP16-Reason:
              {"image": "<path under the image root>", "lat": float, "lon": float, "country": str, "city": str,
               "state": str (optional), "reasoning": str, "clues": [str, ...], "locatable": bool (optional),
               "id": str (optional, default: image)}.
Every record gets its Chain-of-Region `label` from its coordinates (geojax.geo.chain_of_region, reverse geocoding);
country / admin1 / city come from the dataset's own columns when it has them, otherwise from the geocoder.
A missing image file or unusable coordinates raise `BadRecord`, which the loader and converter skip and count.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import tarfile
import zipfile
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from geojax.data.batching import BadRecord
from geojax.data.records import bad_coordinates, make_record

FORMATS = ("mp16", "mp16_pro", "im2gps3k", "yfcc4k", "osv5m", "mp16_reason")
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".JPG", ".JPEG", ".PNG")


class ImageStore:
  """Encoded image bytes by name from folders, tar files or zip files (indexed lazily, per process).

  A name matches a member by its relative path, or by its file name (with or without the extension).
  """

  def __init__(self, roots: str | Sequence[str]):
    roots = [roots] if isinstance(roots, (str, os.PathLike)) else list(roots)
    self.roots = [str(r) for r in roots]
    self._index: dict[str, tuple[int, Any]] | None = None
    self._handles: dict[int, Any] = {}
    self._paths: list[str] | None = None

  def __getstate__(self) -> dict:  # open files are per process
    return {"roots": self.roots, "_index": None, "_handles": {}, "_paths": None}

  def _archives(self) -> list[str]:
    if self._paths is not None:
      return self._paths
    out = []
    for root in self.roots:
      if os.path.isdir(root):
        out.append(root)
        for name in sorted(os.listdir(root)):  # tar / zip shards inside an image folder
          if name.endswith((".tar", ".zip")):
            out.append(os.path.join(root, name))
      elif os.path.exists(root):
        out.append(root)
      else:
        raise FileNotFoundError(f"image root {root!r} does not exist")
    self._paths = out
    return out

  def _build_index(self) -> dict[str, tuple[int, Any]]:
    index: dict[str, tuple[int, Any]] = {}

    def add(name: str, where: int, ref: Any) -> None:
      name = name.replace("\\", "/").lstrip("./")
      base = name.rsplit("/", 1)[-1]
      for key in (name, base, os.path.splitext(base)[0]):
        index.setdefault(key, (where, ref))

    for where, path in enumerate(self._archives()):
      if os.path.isdir(path):
        self._handles[where] = path
        continue
      if path.endswith(".zip"):
        with zipfile.ZipFile(path) as z:
          for info in z.infolist():
            if not info.is_dir():
              add(info.filename, where, info.filename)
      elif path.endswith(".tar") or ".tar." in path:
        with tarfile.open(path) as t:
          for member in t:
            if member.isfile():
              add(member.name, where, (member.offset_data, member.size))
    return index

  def _open(self, where: int, path: str):
    handle = self._handles.get(where)
    if handle is None:
      handle = zipfile.ZipFile(path) if path.endswith(".zip") else open(path, "rb")
      self._handles[where] = handle
    return handle

  def get(self, name: str) -> bytes:
    """The image bytes of `name`; raises BadRecord("missing image file") when it is nowhere."""
    archives = self._archives()
    # Plain folders first: a direct path lookup costs nothing to index.
    for where, path in enumerate(archives):
      if os.path.isdir(path):
        for candidate in (name, *(name + s for s in _IMAGE_SUFFIXES)):
          full = os.path.join(path, candidate)
          if os.path.isfile(full):
            with open(full, "rb") as f:
              return f.read()
    if self._index is None:
      self._index = self._build_index()
    name = name.replace("\\", "/").lstrip("./")
    hit = None
    for key in (name, name.rsplit("/", 1)[-1], os.path.splitext(name.rsplit("/", 1)[-1])[0]):
      hit = self._index.get(key)
      if hit is not None and not os.path.isdir(archives[hit[0]]):
        break
      hit = None
    if hit is None:
      raise BadRecord("missing image file")
    where, ref = hit
    handle = self._open(where, archives[where])
    if isinstance(handle, zipfile.ZipFile):
      return handle.read(ref)
    offset, size = ref
    handle.seek(offset)
    return handle.read(size)


def _float(value: Any) -> float:
  try:
    return float(value)
  except (TypeError, ValueError):
    return math.nan


class _LazyGeocoder:
  """Chain of Region + (country, state, city) of a coordinate; the gazetteer loads on first use per process."""

  def __init__(self):
    self._gaz = None

  def __getstate__(self) -> dict:
    return {"_gaz": None}

  def gazetteer(self):
    if self._gaz is None:
      from geojax.geo.gazetteer import Gazetteer
      self._gaz = Gazetteer.load()
    return self._gaz

  def country_name(self, code: str) -> str:
    """'FR' -> 'France' (OSV-5M stores ISO codes); other text is returned as is."""
    if len(code) == 2 and code.isalpha() and code.isupper():
      return self.gazetteer().country_name(code) or code
    return code

  def __call__(self, lat: float, lon: float) -> tuple[str, str, str, str]:
    from geojax.geo.chain import format_chain, levels_of_row
    self.gazetteer()
    row = int(self._gaz.nearest_np([lat], [lon])[0])
    country, state, city = levels_of_row(self._gaz, row)
    return format_chain(country, state, city, lat, lon), country, state, city


class GeoSource:
  """Random-access records over rows (dicts) of a metadata table plus an ImageStore."""

  def __init__(self, rows: list[dict], images: ImageStore, row_to_fields: Callable[[dict], dict], name: str):
    if not rows:
      raise ValueError(f"{name}: the metadata table has no rows")
    self.rows = rows
    self.images = images
    self.row_to_fields = row_to_fields
    self.name = name
    self.geocode = _LazyGeocoder()

  def __len__(self) -> int:
    return len(self.rows)

  def metadata(self, index: int) -> dict:
    """The record fields without the image (cheap)."""
    return self.row_to_fields(self.rows[index])

  def __getitem__(self, index: int) -> dict:
    fields = self.metadata(index)
    problem = bad_coordinates(fields["lat"], fields["lon"])
    if problem:
      raise BadRecord(problem)
    image = self.images.get(fields.pop("image_name"))
    label, country, state, city = self.geocode(fields["lat"], fields["lon"])
    fields["country"] = self.geocode.country_name(fields.get("country") or "") or country
    fields["admin1"] = fields.get("admin1") or state
    fields["city"] = fields.get("city") or city
    return make_record(image=image, label=label, **fields)

  def __repr__(self) -> str:
    return f"GeoSource({self.name}, {len(self)} rows)"


def _read_csv(path: str) -> list[dict]:
  with open(path, newline="", encoding="utf-8") as f:
    return list(csv.DictReader(f))


def _pick(row: dict, *names: str) -> str:
  lowered = {k.lower(): v for k, v in row.items() if k is not None}
  for n in names:
    value = lowered.get(n.lower())
    if value not in (None, "", "nan", "NaN"):
      return value
  return ""


def _mp16_fields(row: dict) -> dict:
  img = _pick(row, "IMG_ID")
  return {"id": img, "image_name": img, "lat": _float(_pick(row, "LAT")), "lon": _float(_pick(row, "LON")),
          "country": _pick(row, "country"), "admin1": _pick(row, "state", "region"),
          "city": _pick(row, "city", "county")}


def _mp16_plain_fields(row: dict) -> dict:
  img = _pick(row, "IMG_ID")
  return {"id": img, "image_name": img, "lat": _float(_pick(row, "LAT")), "lon": _float(_pick(row, "LON"))}


def _osv_fields(row: dict) -> dict:
  i = _pick(row, "id")
  return {"id": i, "image_name": i, "lat": _float(_pick(row, "latitude")), "lon": _float(_pick(row, "longitude")),
          "country": _pick(row, "country"), "admin1": _pick(row, "region"), "city": _pick(row, "city", "sub-region")}


def _reason_fields(row: dict) -> dict:
  image = str(row.get("image") or row.get("IMG_ID") or "")
  clues = row.get("clues") or []
  if isinstance(clues, str):
    clues = [c.strip() for c in clues.split(",") if c.strip()]
  return {"id": str(row.get("id") or image), "image_name": image, "lat": _float(row.get("lat")),
          "lon": _float(row.get("lon")), "country": str(row.get("country") or ""),
          "admin1": str(row.get("state") or row.get("admin1") or ""), "city": str(row.get("city") or ""),
          "clues": list(clues), "reasoning": str(row.get("reasoning") or ""),
          "locatable": bool(row.get("locatable", True))}


def _read_json_rows(path: str) -> list[dict]:
  with open(path, encoding="utf-8") as f:
    text = f.read()
  if text.lstrip().startswith("["):
    return list(json.loads(text))
  rows = []
  for line in text.splitlines():
    line = line.strip()
    if line:
      try:
        rows.append(json.loads(line))
      except json.JSONDecodeError:
        rows.append({})  # a broken line becomes a record with bad coordinates: skipped and counted
  return rows


def open_source(fmt: str, metadata: str, images: str | Sequence[str]) -> GeoSource:
  """A source of example records.

  Args:
    fmt: one of FORMATS.
    metadata: the CSV (mp16, mp16_pro, im2gps3k, yfcc4k, osv5m) or JSON Lines file (mp16_reason).
    images: image folder(s), tar or zip file(s); a folder's *.tar / *.zip shards are searched too.
  """
  store = ImageStore(images)
  if fmt in ("mp16", "im2gps3k", "yfcc4k"):
    return GeoSource(_read_csv(metadata), store, _mp16_plain_fields, fmt)
  if fmt == "mp16_pro":
    return GeoSource(_read_csv(metadata), store, _mp16_fields, fmt)
  if fmt == "osv5m":
    return GeoSource(_read_csv(metadata), store, _osv_fields, fmt)
  if fmt == "mp16_reason":
    return GeoSource(_read_json_rows(metadata), store, _reason_fields, fmt)
  raise ValueError(f"unknown dataset format {fmt!r}; known: {FORMATS}")


def iterate_valid(source, indices: Iterable[int]) -> Iterable[tuple[int, dict | None, str | None]]:
  """(index, record or None, reason or None) for each index; never raises for bad data."""
  for i in indices:
    try:
      yield i, source[i], None
    except BadRecord as e:
      yield i, None, str(e)
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, tarfile.TarError) as e:
      yield i, None, f"unreadable record ({type(e).__name__})"


def image_problem(data: bytes) -> str | None:
  """Why encoded image bytes do not decode (None when they do). A full decode: PIL's verify() only checks the
  structure, and a JPEG cut short passes it."""
  from PIL import Image, ImageFile
  padded = ImageFile.LOAD_TRUNCATED_IMAGES
  ImageFile.LOAD_TRUNCATED_IMAGES = False  # a caller's opt-in to padding cut files with grey would hide them
  try:
    with Image.open(io.BytesIO(data)) as im:
      im.load()
    return None
  except Exception as e:  # anything a corrupt file can raise (OSError, SyntaxError, DecompressionBombError, ...)
    return "truncated image" if "truncated" in str(e) else f"unreadable image ({type(e).__name__})"
  finally:
    ImageFile.LOAD_TRUNCATED_IMAGES = padded


def default_paths(fmt: str, root: str, split: str = "train") -> tuple[str, str]:
  """(metadata, images) in a dataset's usual layout under `root`."""
  root_path = Path(root)
  if fmt == "mp16":
    return str(root_path / "mp16_places365.csv"), str(root_path / "images")
  if fmt == "mp16_pro":
    return str(root_path / "MP16_Pro_places365.csv"), str(root_path / "images")
  if fmt == "im2gps3k":
    return str(root_path / "im2gps3k_places365.csv"), str(root_path / "im2gps3k")
  if fmt == "yfcc4k":
    return str(root_path / "yfcc4k_places365.csv"), str(root_path / "yfcc4k")
  if fmt == "osv5m":
    return str(root_path / f"{split}.csv"), str(root_path / "images" / split)
  if fmt == "mp16_reason":
    return str(root_path / f"{split}.jsonl"), str(root_path / "images")
  raise ValueError(f"unknown dataset format {fmt!r}; known: {FORMATS}")
