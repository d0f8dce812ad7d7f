"""The TFDS builder prepares and reads a dataset without TensorFlow installed."""
import importlib.util

import pytest

pytest.importorskip("tensorflow_datasets")

from geojax.data.batching import ExampleTransform  # noqa: E402
from geojax.data.pipeline import make_loader  # noqa: E402
from geojax.data.tokenizer import load_tokenizer  # noqa: E402
from tests.data.test_sources import _make  # noqa: E402


def test_prepare_and_read_without_tensorflow(tmp_path):
  import tensorflow_datasets as tfds

  from geojax.data.tfds_builder import GeoLocation, tfds_source
  assert importlib.util.find_spec("tensorflow") is None  # the point of the test
  manual = tmp_path / "manual"
  manual.mkdir()
  _make(manual, "osv5m")
  builder = GeoLocation(config="osv5m", data_dir=str(tmp_path / "tfds"), file_format="array_record")
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(manual)))
  assert builder.info.splits["test"].num_examples == 4  # 3 bad rows skipped
  source = tfds_source(builder, "test")
  records = sorted((source[i] for i in range(len(source))), key=lambda r: r["id"])
  assert records[0]["id"] == "500" and records[0]["country"] == "France" and records[0]["image"][:2] == b"\xff\xd8"
  assert records[0]["label"].startswith("Country: France")
  transform = ExampleTransform(load_tokenizer("tiny"), prompt="coords", mode="rl", max_pixels=56 * 56)
  batches = list(make_loader(source, transform, batch_size=4, seed=0, num_epochs=1, shard_index=0, shard_count=1))
  assert sum(b["example_mask"].sum() for b in batches) == 4
