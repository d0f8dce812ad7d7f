"""Images per second (one core) of geojax.data.preprocess_image vs transformers' Qwen2VLImageProcessorPil.

  HF_HUB_OFFLINE=1 python scripts/bench_preprocess.py [--repeats 30]

Times are CPU seconds of this (single-threaded) process, i.e. images per second per core. Both run in this
process on the same decoded images (and, separately, from JPEG bytes, where decoding is a shared cost, timed alone
too), and the outputs are compared before timing.
"""
from __future__ import annotations

import argparse
import io
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil  # noqa: E402

from geojax.data.image import MAX_PIXELS, preprocess_image, smart_resize  # noqa: E402
from geojax.data.resize import resize_bicubic  # noqa: E402

CASES = [  # (name, height, width, max_pixels)
    ("mp16-like 480x640", 480, 640, MAX_PIXELS),
    ("1024x768", 768, 1024, MAX_PIXELS),
    ("1920x1080 -> 1M px", 1080, 1920, MAX_PIXELS),
    ("1920x1080 -> 200k px", 1080, 1920, 256 * 28 * 28),
    ("640x480 -> 200k px", 480, 640, 256 * 28 * 28),
]


def _photo(h: int, w: int, seed: int = 0) -> Image.Image:
  """A smooth, photo-like image (random noise compresses unrealistically badly)."""
  rng = np.random.default_rng(seed)
  small = rng.integers(0, 256, (max(h // 16, 2), max(w // 16, 2), 3), dtype=np.uint8)
  return Image.fromarray(small).resize((w, h), Image.Resampling.BILINEAR)


def _best_seconds(fn, repeats: int) -> float:
  """Median CPU seconds of this process per call: images per second per core, robust to a busy machine."""
  fn()
  times = []
  for _ in range(repeats):
    start = time.process_time()
    fn()
    times.append(time.process_time() - start)
  return float(np.median(times))


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--repeats", type=int, default=30)
  args = parser.parse_args()
  print(f"{'case':28s} {'from':6s} {'ours img/s':>11s} {'hf img/s':>10s} {'ratio':>6s} {'max|diff|':>10s}"
        f" {'decode ms':>10s} {'ratio w/o decode':>17s}")
  for name, h, w, max_pixels in CASES:
    image = _photo(h, w)
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=90)
    jpeg = buf.getvalue()
    reference = Qwen2VLImageProcessorPil(max_pixels=max_pixels)
    ref_pixels = reference(images=image, return_tensors="np")["pixel_values"]
    ours_pixels, _ = preprocess_image(image, max_pixels=max_pixels)
    diff = float(np.abs(ours_pixels - ref_pixels).max())
    # From JPEG bytes both sides first decode with the same libjpeg-turbo (via PIL): a shared cost, timed alone.
    decode = _best_seconds(lambda: Image.open(io.BytesIO(jpeg)).load(), args.repeats)
    for source, ours_fn, ref_fn, shared in [
        ("pil", lambda: preprocess_image(image, max_pixels=max_pixels),
         lambda: reference(images=image, return_tensors="np"), 0.0),
        ("jpeg", lambda: preprocess_image(jpeg, max_pixels=max_pixels),
         lambda: reference(images=Image.open(io.BytesIO(jpeg)), return_tensors="np"), decode),
    ]:
      ours = _best_seconds(ours_fn, args.repeats)
      ref = _best_seconds(ref_fn, args.repeats)
      shared_ms = f"{shared * 1e3:10.2f}" if shared else f"{'-':>10s}"
      without = f"{(ref - shared) / max(ours - shared, 1e-9):17.2f}" if shared else f"{'-':>17s}"
      print(f"{name:28s} {source:6s} {1 / ours:11.1f} {1 / ref:10.1f} {ref / ours:6.2f} {diff:10.2e}"
            f" {shared_ms} {without}", flush=True)
  print(f"\nthe bicubic resize alone (RGB image in, uint8 pixels out, bit-identical):\n"
        f"{'case':28s} {'target':>10s} {'Pillow ms':>10s} {'geojax ms':>10s} {'ratio':>6s}")
  for name, h, w, max_pixels in CASES:
    image = _photo(h, w)
    th, tw = smart_resize(h, w, max_pixels=max_pixels)
    assert np.array_equal(resize_bicubic(image, (tw, th)),
                          np.asarray(image.resize((tw, th), Image.Resampling.BICUBIC)))
    pillow = _best_seconds(lambda: np.asarray(image.resize((tw, th), Image.Resampling.BICUBIC)), args.repeats)
    ours = _best_seconds(lambda: resize_bicubic(image, (tw, th)), args.repeats)
    print(f"{name:28s} {f'{tw}x{th}':>10s} {pillow * 1e3:10.2f} {ours * 1e3:10.2f} {pillow / ours:6.2f}", flush=True)


if __name__ == "__main__":
  main()
