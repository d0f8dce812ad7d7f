"""Converts a geolocation dataset in its published layout to geojax ArrayRecord shards.

  python -m geojax.data.convert --format mp16_pro --metadata MP16_Pro_places365.csv --images mp16/ \\
      --out /data/mp16_pro_ar --split train --num_shards 64
  python -m geojax.data.convert --format osv5m --root /data/osv5m --source_split test --out /data/osv_ar --split test
  # Geo-R's hard subset: drop samples within 200 km of the hotspots (CSV with LAT, LON columns)
  python -m geojax.data.convert --format mp16_pro --root /data/mp16 --out /data/mp16_hard --hotspots hot.csv

Records hold the encoded image bytes, coordinates, place names, the Chain-of-Region label, clues and reasoning
(schema in geojax.data.records). Bad rows (missing image, unusable coordinates, and with --check_images an image
that does not fully decode, e.g. a truncated JPEG) are skipped and counted; the counts are printed at the end.
"""
from __future__ import annotations

import argparse
import collections
import csv
import sys
from typing import Sequence

import numpy as np
from tqdm import tqdm

from geojax.data.mining import drop_near_hotspots
from geojax.data.records import ArrayRecordWriter
from geojax.data.sources import FORMATS, default_paths, image_problem, iterate_valid, open_source


def read_hotspots(path: str) -> tuple[np.ndarray, np.ndarray]:
  """LAT / LON (or lat / lon, latitude / longitude) columns of a CSV."""
  lats, lons = [], []
  with open(path, newline="", encoding="utf-8") as f:
    for row in csv.DictReader(f):
      low = {k.lower(): v for k, v in row.items() if k}
      lats.append(float(low.get("lat") or low.get("latitude") or "nan"))
      lons.append(float(low.get("lon") or low.get("longitude") or "nan"))
  return np.asarray(lats), np.asarray(lons)


def convert(fmt: str, metadata: str, images: Sequence[str], out: str, split: str = "train", num_shards: int = 1,
            limit: int = 0, hotspots: str = "", radius_km: float = 200.0, check_images: bool = False,
            progress: bool = True) -> dict:
  """Writes the dataset's records to `out`; returns counts {"written", "skipped": {reason: n}, "mined_out"}."""
  source = open_source(fmt, metadata, list(images))
  indices = np.arange(len(source))
  mined_out = 0
  if hotspots:
    coords = np.array([[source.metadata(i)["lat"], source.metadata(i)["lon"]] for i in indices], np.float64)
    keep = drop_near_hotspots(coords[:, 0], coords[:, 1], *read_hotspots(hotspots), radius_km=radius_km)
    mined_out = int((~keep).sum())
    indices = indices[keep]
  if limit:
    indices = indices[:limit]
  skipped: collections.Counter = collections.Counter()
  with ArrayRecordWriter(out, split, num_shards) as writer:
    bar = tqdm(iterate_valid(source, indices), total=len(indices), desc=f"{fmt} -> {split}", unit="img",
               disable=not progress)
    for _, record, reason in bar:
      if record is not None and check_images:
        reason = image_problem(record["image"])
        record = None if reason else record
      if record is None:
        skipped[reason] += 1
        bar.set_postfix(skipped=sum(skipped.values()))
        continue
      writer.write(record)
  if writer.count == 0:
    raise ValueError(f"{fmt}: no usable record in {metadata} (skipped: {dict(skipped)}); check the paths and layout")
  return {"written": writer.count, "skipped": dict(skipped), "mined_out": mined_out, "paths": writer.paths}


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--format", required=True, choices=FORMATS)
  parser.add_argument("--root", default="", help="dataset folder in its usual layout (instead of the two below)")
  parser.add_argument("--metadata", default="", help="CSV / JSONL file")
  parser.add_argument("--images", nargs="*", default=[], help="image folder(s), tar or zip file(s)")
  parser.add_argument("--source_split", default="train", help="split to read with --root (osv5m, mp16_reason)")
  parser.add_argument("--out", required=True)
  parser.add_argument("--split", default="train", help="split name of the written shards")
  parser.add_argument("--num_shards", type=int, default=1)
  parser.add_argument("--limit", type=int, default=0)
  parser.add_argument("--hotspots", default="", help="CSV of hotspot coordinates to mine hard samples against")
  parser.add_argument("--radius_km", type=float, default=200.0)
  parser.add_argument("--check_images", action="store_true",
                      help="decode each image fully, skip those that fail (slower)")
  args = parser.parse_args(argv)
  metadata, images = args.metadata, args.images
  if args.root:
    default_meta, default_images = default_paths(args.format, args.root, args.source_split)
    metadata, images = metadata or default_meta, images or [default_images]
  if not metadata or not images:
    parser.error("give --root, or both --metadata and --images")
  try:
    result = convert(args.format, metadata, images, args.out, args.split, args.num_shards, args.limit,
                     args.hotspots, args.radius_km, args.check_images)
  except (ValueError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  print(f"wrote {result['written']} records to {len(result['paths'])} shard(s) in {args.out}; "
        f"skipped {sum(result['skipped'].values())} {result['skipped']}; mined out {result['mined_out']}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
