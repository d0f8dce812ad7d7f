"""Sources in each published layout (tiny fake datasets), conversion to ArrayRecord, loading the result."""
import csv
import io
import json
import tarfile
import zipfile

import pytest

from geojax.data.batching import BadRecord, ExampleTransform
from geojax.data.convert import convert, main
from geojax.data.pipeline import make_loader
from geojax.data.records import ArrayRecordSource
from geojax.data.sources import ImageStore, default_paths, open_source
from geojax.data.tokenizer import load_tokenizer
from tests.data.fakes import png_bytes

PLACES = [(48.8566, 2.3522), (35.6762, 139.6503), (-33.8688, 151.2093), (40.7128, -74.0060)]


def _write_csv(path, header, rows):
  with open(path, "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(header)
    w.writerows(rows)


def _jpeg(i):
  return png_bytes(40 + i, 60, seed=i, fmt="JPEG")


def _mp16_like(tmp_path, fmt):
  """mp16 / mp16_pro: nested IMG_IDs, images in a tar shard; im2gps3k / yfcc4k: flat folder."""
  names = [f"5b/a{i}/{1000 + i}.jpg" if fmt.startswith("mp16") else f"{1000 + i}_photo.jpg" for i in range(4)]
  rows = []
  for i, (lat, lon) in enumerate(PLACES):
    row = [names[i], "author", lat, lon]
    if fmt == "mp16_pro":
      row += ["Paris", "", "Ile-de-France", "", "France"] if i == 0 else ["", "", "", "", ""]
    rows.append(row)
  rows.append(["missing/file.jpg", "a", 10.0, 10.0] + ([""] * 5 if fmt == "mp16_pro" else []))
  rows.append([names[1], "a", "nan", 10.0] + ([""] * 5 if fmt == "mp16_pro" else []))
  rows.append([names[2], "a", 95.0, 10.0] + ([""] * 5 if fmt == "mp16_pro" else []))
  header = ["IMG_ID", "AUTHOR", "LAT", "LON"] + (["city", "county", "state", "region", "country"]
                                                 if fmt == "mp16_pro" else [])
  metadata, image_root = default_paths(fmt, str(tmp_path))
  _write_csv(metadata, header, rows)
  (tmp_path / image_root.rsplit("/", 1)[-1]).mkdir()
  if fmt.startswith("mp16"):
    with tarfile.open(f"{image_root}/shard-000.tar", "w") as t:
      for i, name in enumerate(names):
        data = _jpeg(i)
        info = tarfile.TarInfo(f"mp16/{name}")
        info.size = len(data)
        t.addfile(info, io.BytesIO(data))
  else:
    for i, name in enumerate(names):
      (tmp_path / image_root.rsplit("/", 1)[-1] / name).write_bytes(_jpeg(i))
  return metadata, image_root


def _osv5m(tmp_path):
  metadata, image_root = default_paths("osv5m", str(tmp_path), "test")
  header = ["id", "latitude", "longitude", "thumb_original_url", "country", "region", "sub-region", "city"]
  rows = [[str(500 + i), lat, lon, "", "FR" if i == 0 else "", "", "", ""] for i, (lat, lon) in enumerate(PLACES)]
  rows += [["999", 10.0, 10.0, "", "", "", "", ""], ["501", "", 10.0, "", "", "", "", ""],
           ["502", 10.0, -190.0, "", "", "", "", ""]]
  _write_csv(metadata, header, rows)
  (tmp_path / "images" / "test").mkdir(parents=True)
  with zipfile.ZipFile(f"{image_root}/00.zip", "w") as z:
    for i in range(4):
      z.writestr(f"00/{500 + i}.jpg", _jpeg(i))
  return metadata, image_root


def _mp16_reason(tmp_path):
  metadata, image_root = default_paths("mp16_reason", str(tmp_path), "train")
  (tmp_path / "images").mkdir()
  lines = []
  for i, (lat, lon) in enumerate(PLACES):
    (tmp_path / "images" / f"{i}.jpg").write_bytes(_jpeg(i))
    lines.append({"image": f"{i}.jpg", "lat": lat, "lon": lon, "country": "Somewhere", "city": f"City{i}",
                  "reasoning": "Signs and trees.", "clues": ["sign", "tree"]})
  lines += [{"image": "nope.jpg", "lat": 1, "lon": 2}, {"image": "1.jpg", "lat": None, "lon": 2},
            {"image": "2.jpg", "lat": -91, "lon": 2}]
  with open(metadata, "w") as f:
    f.write("\n".join(json.dumps(x) for x in lines) + "\n{broken json\n")
  return metadata, image_root


def _make(tmp_path, fmt):
  if fmt == "osv5m":
    return _osv5m(tmp_path)
  if fmt == "mp16_reason":
    return _mp16_reason(tmp_path)
  return _mp16_like(tmp_path, fmt)


@pytest.mark.parametrize("fmt", ["mp16", "mp16_pro", "im2gps3k", "yfcc4k", "osv5m", "mp16_reason"])
def test_source_convert_and_load(tmp_path, fmt):
  metadata, images = _make(tmp_path, fmt)
  source = open_source(fmt, metadata, images)
  assert len(source) >= 7
  first = source[0]
  assert first["image"] == _jpeg(0) and abs(first["lat"] - 48.8566) < 1e-9
  assert first["label"].startswith("Country: France / State: Ile-de-France / City: ")
  assert first["country"] and first["admin1"] and first["city"]
  if fmt in ("osv5m", "mp16_pro"):
    assert first["country"] == "France"  # OSV-5M's ISO code is spelled out
  assert source[3]["label"].startswith("Country: United States")
  for bad in (4, 5, 6):
    with pytest.raises(BadRecord):
      source[bad]
  if fmt == "mp16_reason":
    assert first["clues"] == ["sign", "tree"] and first["reasoning"] == "Signs and trees."
    assert first["city"] == "City0"

  out = tmp_path / "ar"
  result = convert(fmt, metadata, [images], str(out), "train", num_shards=2, progress=False)
  assert result["written"] == 4 and sum(result["skipped"].values()) == len(source) - 4
  converted = ArrayRecordSource(str(out), "train")
  assert sorted(converted[i]["id"] for i in range(4)) == sorted(source[i]["id"] for i in range(4))
  transform = ExampleTransform(load_tokenizer("tiny"), prompt="geo_r", mode="sft", max_pixels=56 * 56)
  loader = make_loader(converted, transform, batch_size=2, seed=0, num_epochs=1, shard_index=0, shard_count=1)
  batches = list(loader)
  assert sum(b["example_mask"].sum() for b in batches) == 4


def test_hotspot_mining_in_converter(tmp_path):
  metadata, images = _make(tmp_path, "im2gps3k")
  _write_csv(tmp_path / "hot.csv", ["LAT", "LON"], [[48.9, 2.4], [-34.0, 151.0]])  # near Paris and Sydney
  out = tmp_path / "hard"
  result = convert("im2gps3k", metadata, [images], str(out), hotspots=str(tmp_path / "hot.csv"), progress=False)
  assert result["mined_out"] == 2 and result["written"] == 2
  ids = {ArrayRecordSource(str(out), "train")[i]["id"] for i in range(2)}
  assert ids == {"1001_photo.jpg", "1003_photo.jpg"}


def test_cli_and_all_bad_source(tmp_path, capsys):
  metadata, images = _make(tmp_path, "yfcc4k")
  assert main(["--format", "yfcc4k", "--root", str(tmp_path), "--out", str(tmp_path / "o"), "--check_images"]) == 0
  assert "wrote 4 records" in capsys.readouterr().out
  _write_csv(tmp_path / "bad.csv", ["IMG_ID", "LAT", "LON"], [["x.jpg", 1, 2], ["y.jpg", "nan", 2]])
  assert main(["--format", "yfcc4k", "--metadata", str(tmp_path / "bad.csv"), "--images", images,
               "--out", str(tmp_path / "o2")]) == 1
  assert "no usable record" in capsys.readouterr().err


def test_check_images_skips_and_reports_a_truncated_jpeg(tmp_path, capsys):
  """A JPEG cut in half passes PIL's verify(); --check_images decodes it fully, so it is skipped and counted."""
  from PIL import Image
  metadata, images = _make(tmp_path, "yfcc4k")
  cut = tmp_path / "yfcc4k" / "1002_photo.jpg"
  whole = cut.read_bytes()
  cut.write_bytes(whole[:len(whole) // 2])
  with Image.open(cut) as im:
    im.verify()  # the check this replaces: no error
  assert main(["--format", "yfcc4k", "--root", str(tmp_path), "--out", str(tmp_path / "o"), "--check_images"]) == 0
  out = capsys.readouterr().out
  assert "wrote 3 records" in out and "'truncated image': 1" in out, out
  result = convert("yfcc4k", metadata, [images], str(tmp_path / "o2"), check_images=True, progress=False)
  assert result["written"] == 3 and result["skipped"]["truncated image"] == 1
  assert "1002_photo.jpg" not in {ArrayRecordSource(str(tmp_path / "o2"), "train")[i]["id"] for i in range(3)}


def test_image_store_truncated_and_pickled(tmp_path):
  (tmp_path / "a.jpg").write_bytes(_jpeg(0)[:50])
  store = ImageStore(str(tmp_path))
  import pickle
  assert pickle.loads(pickle.dumps(store)).get("a") == _jpeg(0)[:50]
  with pytest.raises(BadRecord, match="missing"):
    store.get("b.jpg")
  with pytest.raises(FileNotFoundError):
    ImageStore(str(tmp_path / "nope")).get("a")
