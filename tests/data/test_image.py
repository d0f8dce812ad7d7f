"""preprocess_image against transformers' Qwen2VLImageProcessorPil (the reference for Qwen2-VL inputs)."""
import io

import numpy as np
import pytest
from PIL import Image
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from geojax.data.image import grid_for_size, preprocess_image

SIZES = [(1, 1), (3, 7), (13, 29), (28, 28), (56, 56), (1, 150), (150, 1), (2, 399), (400, 3), (10, 1999),
         (37, 911), (224, 224), (480, 640), (640, 480), (333, 517), (1080, 1920), (1500, 1499), (2300, 1100)]


def _random_image(h, w, mode="RGB", seed=0):
  rng = np.random.default_rng(seed + h * 7919 + w)
  channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
  data = rng.integers(0, 256, (h, w, channels), dtype=np.uint8)
  return Image.fromarray(data[..., 0] if channels == 1 else data, mode)


def _reference(image, **kwargs):
  out = Qwen2VLImageProcessorPil(**kwargs)(images=image, return_tensors="np")
  return out["pixel_values"], out["image_grid_thw"][0]


@pytest.mark.parametrize("h,w", SIZES)
def test_matches_reference(h, w):
  image = _random_image(h, w)
  ref_pixels, ref_grid = _reference(image)
  pixels, grid = preprocess_image(image)
  np.testing.assert_array_equal(grid, ref_grid)
  assert pixels.shape == ref_pixels.shape and pixels.dtype == np.float32
  assert np.abs(pixels - ref_pixels).max() <= 1e-5
  np.testing.assert_array_equal(grid_for_size(h, w), grid)


@pytest.mark.parametrize("min_pixels,max_pixels", [(4 * 28 * 28, 64 * 28 * 28), (256 * 28 * 28, 256 * 28 * 28),
                                                    (28 * 28, 16 * 28 * 28)])
@pytest.mark.parametrize("h,w", [(17, 800), (480, 640), (1200, 90)])
def test_pixel_bounds_match_reference(h, w, min_pixels, max_pixels):
  image = _random_image(h, w, seed=1)
  ref_pixels, ref_grid = _reference(image, min_pixels=min_pixels, max_pixels=max_pixels)
  pixels, grid = preprocess_image(image, min_pixels=min_pixels, max_pixels=max_pixels)
  np.testing.assert_array_equal(grid, ref_grid)
  assert np.abs(pixels - ref_pixels).max() <= 1e-5


@pytest.mark.parametrize("mode", ["L", "RGBA"])
def test_modes_and_encoded_bytes(mode):
  image = _random_image(97, 131, mode)
  ref_pixels, _ = _reference(image)
  assert np.abs(preprocess_image(image)[0] - ref_pixels).max() <= 1e-5
  buf = io.BytesIO()
  image.save(buf, format="PNG")
  assert np.abs(preprocess_image(buf.getvalue())[0] - ref_pixels).max() <= 1e-5


def test_jpeg_bytes_and_array_inputs():
  image = _random_image(300, 200)
  buf = io.BytesIO()
  image.save(buf, format="JPEG", quality=90)
  decoded = Image.open(io.BytesIO(buf.getvalue()))
  ref_pixels, _ = _reference(decoded)
  assert np.abs(preprocess_image(buf.getvalue())[0] - ref_pixels).max() <= 1e-5
  assert np.abs(preprocess_image(np.asarray(decoded.convert("RGB")))[0] - ref_pixels).max() <= 1e-5


def test_rejects_extreme_aspect_ratio_like_reference():
  image = _random_image(1, 201)
  with pytest.raises(ValueError):
    _reference(image)
  with pytest.raises(ValueError):
    preprocess_image(image)
