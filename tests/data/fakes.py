"""Tiny fake images and records for data tests."""
import io

import numpy as np
from PIL import Image

from geojax.data.records import make_record

SHAPES = [(56, 56), (56, 112), (112, 56)]


def png_bytes(h: int, w: int, seed: int = 0, fmt: str = "PNG") -> bytes:
  rng = np.random.default_rng(seed)
  buf = io.BytesIO()
  Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, format=fmt)
  return buf.getvalue()


def fake_records(n: int, shapes=SHAPES) -> list[dict]:
  records = []
  for i in range(n):
    h, w = shapes[i % len(shapes)]
    lat, lon = -60 + (i * 7.3) % 120, -170 + (i * 13.7) % 340
    records.append(make_record(
        f"r{i}", png_bytes(h, w, seed=i), lat, lon, "France", "Ile-de-France", "Paris",
        label=f"Country: France / State: Ile-de-France / City: Paris / Coordinates: ({lat:.6f}, {lon:.6f})",
        clues=["Eiffel Tower"], reasoning="A tall iron tower."))
  return records
