"""Minimal safetensors reader/writer on numpy (memory-mapped reads, bfloat16 via ml_dtypes, never pickle).

The format is an 8-byte little-endian header length, a JSON header {name: {dtype, shape, data_offsets}},
then the raw little-endian tensor bytes. Reading one tensor maps only its bytes, so a loader can go tensor
by tensor and place each directly on its devices.
"""
from __future__ import annotations

import json
import os
import struct
from typing import Mapping

import ml_dtypes
import numpy as np

DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_,
}
NAMES = {np.dtype(v): k for k, v in DTYPES.items()}


class SafetensorsFile:
  """Header of one .safetensors file; `tensor(name)` returns a read-only numpy view of the mapped bytes."""

  def __init__(self, path: str):
    self.path = path
    with open(path, "rb") as f:
      (size,) = struct.unpack("<Q", f.read(8))
      header = json.loads(f.read(size))
    self.metadata = header.pop("__metadata__", {})
    self.entries = header
    self.data_start = 8 + size

  def keys(self) -> list[str]:
    return list(self.entries)

  def tensor(self, name: str) -> np.ndarray:
    entry = self.entries[name]
    if entry["dtype"] not in DTYPES:
      raise ValueError(f"{self.path}: tensor {name} has unsupported dtype {entry['dtype']}")
    dtype = np.dtype(DTYPES[entry["dtype"]])
    start, end = entry["data_offsets"]
    shape = tuple(entry["shape"])
    if end == start:
      return np.zeros(shape, dtype)
    data = np.memmap(self.path, dtype=np.uint8, mode="r", offset=self.data_start + start, shape=(end - start,))
    return data.view(dtype).reshape(shape)


def write_file(path: str, tensors: Mapping[str, np.ndarray], metadata: Mapping[str, str] | None = None) -> None:
  header: dict = {"__metadata__": dict(metadata or {"format": "pt"})}
  offset = 0
  arrays = {}
  for name, value in tensors.items():
    arr = np.ascontiguousarray(value)
    if arr.dtype not in NAMES:
      raise ValueError(f"tensor {name}: dtype {arr.dtype} cannot be stored in safetensors")
    header[name] = {"dtype": NAMES[arr.dtype], "shape": list(arr.shape), "data_offsets": [offset, offset + arr.nbytes]}
    offset += arr.nbytes
    arrays[name] = arr
  blob = json.dumps(header, separators=(",", ":")).encode()
  blob += b" " * (-len(blob) % 8)  # keep tensor data 8-byte aligned
  tmp = path + ".tmp"
  with open(tmp, "wb") as f:
    f.write(struct.pack("<Q", len(blob)))
    f.write(blob)
    for arr in arrays.values():
      f.write(arr.tobytes())
  os.replace(tmp, path)
