"""Example records: the schema, validation of bad data, and ArrayRecord shards on disk.

A record is `{"id", "image" (encoded PNG/JPEG bytes), "lat", "lon", "country", "admin1", "city", "label",
"clues", "reasoning", "locatable"}`. On disk each record is one ArrayRecord entry:
`uint32 little-endian header length | UTF-8 JSON header (every field but the image) | image bytes`, so a record
is readable without TensorFlow or protobufs. Shards of a split are `{dir}/{split}-{i:05d}-of-{n:05d}.array_record`.
"""
from __future__ import annotations

import glob
import json
import math
import os
import struct
from typing import Any, Iterable, Mapping, Sequence

RECORD_FIELDS = ("id", "image", "lat", "lon", "country", "admin1", "city", "label", "clues", "reasoning",
                 "locatable")
_TEXT_FIELDS = ("id", "country", "admin1", "city", "label", "reasoning")


def make_record(id: str, image: bytes, lat: float, lon: float, country: str = "", admin1: str = "", city: str = "",
                label: str = "", clues: Sequence[str] = (), reasoning: str = "", locatable: bool = True) -> dict:
  """A record with every schema field present and of the schema's type."""
  return {"id": str(id), "image": bytes(image), "lat": float(lat), "lon": float(lon), "country": country or "",
          "admin1": admin1 or "", "city": city or "", "label": label or "", "clues": [str(c) for c in clues or ()],
          "reasoning": reasoning or "", "locatable": bool(locatable)}


def encode_record(record: Mapping[str, Any]) -> bytes:
  header = {k: record.get(k) for k in RECORD_FIELDS if k != "image"}
  header_bytes = json.dumps(header, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
  return struct.pack("<I", len(header_bytes)) + header_bytes + bytes(record.get("image") or b"")


def decode_record(raw: bytes) -> dict:
  (n,) = struct.unpack_from("<I", raw, 0)
  record = json.loads(raw[4:4 + n].decode("utf-8"))
  record["image"] = bytes(raw[4 + n:])
  return record


def bad_coordinates(lat: Any, lon: Any) -> str | None:
  """Why (lat, lon) is unusable, or None."""
  try:
    lat, lon = float(lat), float(lon)
  except (TypeError, ValueError):
    return "coordinates not numbers"
  if not (math.isfinite(lat) and math.isfinite(lon)):
    return "NaN or infinite coordinates"
  if not (-90.0 <= lat <= 90.0 and -180.0 <= lon <= 180.0):
    return "coordinates out of range"
  return None


def record_problem(record: Mapping[str, Any], answer: str | None = None) -> str | None:
  """A short reason why a record cannot be trained on (cheap checks only; decoding is checked later), or None.

  `answer` is the answer format the record is used with: "globe" needs a country and a city, "chain" a label or
  coordinates.
  """
  if not record.get("image"):
    return "missing image"
  problem = bad_coordinates(record.get("lat"), record.get("lon"))
  if problem:
    return problem
  if answer == "globe" and not (str(record.get("country") or "").strip() and str(record.get("city") or "").strip()):
    return "empty caption"
  return None


def shard_paths(directory: str, split: str) -> list[str]:
  paths = sorted(glob.glob(os.path.join(directory, f"{split}-*-of-*.array_record")))
  if not paths:
    paths = sorted(glob.glob(os.path.join(directory, f"{split}*.array_record")))
  return paths


class ArrayRecordWriter:
  """Writes records round-robin into `num_shards` shards of a split."""

  def __init__(self, directory: str, split: str, num_shards: int = 1):
    from array_record.python.array_record_module import ArrayRecordWriter as _Writer
    os.makedirs(directory, exist_ok=True)
    self.paths = [os.path.join(directory, f"{split}-{i:05d}-of-{num_shards:05d}.array_record")
                  for i in range(num_shards)]
    self._writers = [_Writer(p, "group_size:1") for p in self.paths]
    self.count = 0

  def write(self, record: Mapping[str, Any]) -> None:
    self._writers[self.count % len(self._writers)].write(encode_record(record))
    self.count += 1

  def close(self) -> None:
    for w in self._writers:
      w.close()

  def __enter__(self) -> "ArrayRecordWriter":
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def write_records(directory: str, split: str, records: Iterable[Mapping[str, Any]], num_shards: int = 1) -> int:
  """Writes records to ArrayRecord shards; returns how many were written."""
  with ArrayRecordWriter(directory, split, num_shards) as writer:
    for record in records:
      writer.write(record)
  return writer.count


class ArrayRecordSource:
  """Random-access source of decoded records over a split's shards (a Grain `RandomAccessDataSource`)."""

  def __init__(self, directory: str, split: str):
    self.paths = shard_paths(directory, split)
    if not self.paths:
      raise FileNotFoundError(f"no ArrayRecord shards for split {split!r} in {directory!r} "
                              f"(expected {split}-00000-of-0000N.array_record)")
    self._source = None

  def _open(self):
    if self._source is None:
      import grain
      self._source = grain.sources.ArrayRecordDataSource(self.paths)
    return self._source

  def __len__(self) -> int:
    return len(self._open())

  def __getitem__(self, index: int) -> dict:
    return decode_record(self._open()[index])

  def __getstate__(self) -> dict:  # reopen the files in each worker process
    return {"paths": self.paths, "_source": None}

  def __repr__(self) -> str:
    return f"ArrayRecordSource({len(self.paths)} shards)"
