"""A TensorFlow Datasets builder for the geolocation datasets, working without TensorFlow.

Needs `tensorflow-datasets` (not TensorFlow). The builder writes ArrayRecord files from images already encoded
(passed as bytes, so TFDS never calls TensorFlow's image encoder) and reads them back with `as_data_source`.

  builder = GeoLocation(config="mp16_pro", data_dir="~/tensorflow_datasets", file_format="array_record")
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir="/data/mp16"))
  source = tfds_source(builder, "train")      # geojax example records, for geojax.data.make_loader

The manual dir holds the dataset in the layout geojax.data.sources.default_paths describes (for example
MP16_Pro_places365.csv + images/ for mp16_pro, {train,test}.csv + images/{train,test}/*.zip for osv5m).
"""
from __future__ import annotations

import io
import os

import numpy as np
import tensorflow_datasets as tfds

from geojax.data.sources import FORMATS, default_paths, iterate_valid, open_source

# Splits each dataset publishes.
SPLITS = {"mp16": ("train",), "mp16_pro": ("train",), "im2gps3k": ("test",), "yfcc4k": ("test",),
          "osv5m": ("train", "test"), "mp16_reason": ("train", "test")}
_TEXT = ("id", "country", "admin1", "city", "label", "reasoning")


class GeoLocation(tfds.core.GeneratorBasedBuilder):
  """Geotagged photos with coordinates, place names, Chain-of-Region labels, clues and reasoning."""

  VERSION = tfds.core.Version("1.0.0")
  BUILDER_CONFIGS = [tfds.core.BuilderConfig(name=fmt, description=f"{fmt} in its published layout")
                     for fmt in FORMATS]
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "Place the dataset in its published layout in manual_dir (see geojax.data.sources.default_paths), e.g. "
      "MP16_Pro_places365.csv and images/ for mp16_pro, or train.csv, test.csv and images/{train,test}/*.zip "
      "for osv5m.")

  def _info(self) -> tfds.core.DatasetInfo:
    features = {key: tfds.features.Text() for key in _TEXT}
    features.update({
        "image": tfds.features.Image(),
        "lat": np.float64, "lon": np.float64,
        "clues": tfds.features.Sequence(tfds.features.Text()),
        "locatable": np.bool_,
    })
    return tfds.core.DatasetInfo(builder=self, description=self.__doc__,
                                 features=tfds.features.FeaturesDict(features))

  def _split_generators(self, dl_manager):
    fmt = self.builder_config.name
    splits = {}
    for split in SPLITS[fmt]:
      metadata, images = default_paths(fmt, str(dl_manager.manual_dir), split)
      if os.path.exists(metadata):
        splits[split] = self._generate_examples(fmt, metadata, images)
    if not splits:
      raise FileNotFoundError(f"no {fmt} metadata in {dl_manager.manual_dir}: {self.MANUAL_DOWNLOAD_INSTRUCTIONS}")
    return splits

  def _generate_examples(self, fmt: str, metadata: str, images: str):
    source = open_source(fmt, metadata, images)
    for index, record, _ in iterate_valid(source, range(len(source))):
      if record is None:
        continue  # bad rows are skipped (TFDS reports the example count per split)
      example = {key: record[key] for key in _TEXT}
      example.update(image=io.BytesIO(record["image"]), lat=record["lat"], lon=record["lon"],
                     clues=list(record["clues"]), locatable=bool(record["locatable"]))
      yield f"{index}", example


class _RecordView:
  """A TFDS data source presented as geojax example records (image kept as encoded bytes)."""

  def __init__(self, data_source):
    self.data_source = data_source

  def __len__(self) -> int:
    return len(self.data_source)

  def __getitem__(self, index: int) -> dict:
    raw = self.data_source[index]
    record = {key: _text(raw[key]) for key in _TEXT}
    record.update(image=bytes(raw["image"]), lat=float(raw["lat"]), lon=float(raw["lon"]),
                  clues=[_text(c) for c in raw["clues"]], locatable=bool(raw["locatable"]))
    return record


def _text(value) -> str:
  return value.decode("utf-8") if isinstance(value, (bytes, np.bytes_)) else str(value)


def tfds_source(builder: tfds.core.DatasetBuilder, split: str) -> _RecordView:
  """Random-access geojax records of a prepared split (ArrayRecord file format required)."""
  return _RecordView(builder.as_data_source(split, decoders={"image": tfds.decode.SkipDecoding()}))
