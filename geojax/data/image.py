"""Qwen2-VL image preprocessing: smart resize, bicubic resampling, rescale + normalize, patchify.

Produces exactly what transformers' `Qwen2VLImageProcessorPil` produces, several times faster: the bicubic resize is
`geojax.data.resize` (Pillow's integer arithmetic in vectorized numba kernels), and rescale + normalize + patchify is
one pass of table lookups from the resized pixels straight into the patch layout (the table holds the reference's
float64-rescale, float32-normalize value of each uint8 level, so results are bit-identical).
"""
from __future__ import annotations

import functools
import io
import math

import numba
import numpy as np
from PIL import Image

from geojax.data.resize import channel, packed_pixels, resize_packed

# CLIP statistics used by Qwen2-VL (transformers OPENAI_CLIP_MEAN / OPENAI_CLIP_STD).
IMAGE_MEAN = (0.48145466, 0.4578275, 0.40821073)
IMAGE_STD = (0.26862954, 0.26130258, 0.27577711)
MIN_PIXELS = 56 * 56
MAX_PIXELS = 28 * 28 * 1280
MAX_ASPECT_RATIO = 200


def smart_resize(height: int, width: int, factor: int = 28, min_pixels: int = MIN_PIXELS,
                 max_pixels: int = MAX_PIXELS) -> tuple[int, int]:
  """Target (height, width): multiples of `factor`, pixel count in [min_pixels, max_pixels], aspect kept.

  Raises ValueError when the aspect ratio exceeds 200 (as the reference does).
  """
  if min(height, width) <= 0:
    raise ValueError(f"image has an empty side: {height}x{width}")
  if max(height, width) / min(height, width) > MAX_ASPECT_RATIO:
    raise ValueError(f"absolute aspect ratio must be smaller than {MAX_ASPECT_RATIO}, got {height}x{width}")
  h_bar = round(height / factor) * factor
  w_bar = round(width / factor) * factor
  if h_bar * w_bar > max_pixels:
    beta = math.sqrt((height * width) / max_pixels)
    h_bar = max(factor, math.floor(height / beta / factor) * factor)
    w_bar = max(factor, math.floor(width / beta / factor) * factor)
  elif h_bar * w_bar < min_pixels:
    beta = math.sqrt(min_pixels / (height * width))
    h_bar = math.ceil(height * beta / factor) * factor
    w_bar = math.ceil(width * beta / factor) * factor
  return h_bar, w_bar


def _normalize_table(mean=IMAGE_MEAN, std=IMAGE_STD) -> np.ndarray:
  """[3, 256] float32: value of each uint8 level per channel after the reference's rescale and normalize."""
  levels = (np.arange(256, dtype=np.float64) * (1 / 255)).astype(np.float32)
  mean32 = np.asarray(mean, np.float32)[:, None]
  std32 = np.asarray(std, np.float32)[:, None]
  return ((levels[None, :] - mean32) / std32).astype(np.float32)


_TABLE = _normalize_table()


def to_rgb(image) -> Image.Image:
  """Decodes bytes / wraps arrays, and converts to RGB compositing transparency onto white (as transformers)."""
  if isinstance(image, (bytes, bytearray, memoryview)):
    image = Image.open(io.BytesIO(bytes(image)))
    image.load()
  elif isinstance(image, np.ndarray):
    if image.dtype != np.uint8:
      raise TypeError(f"numpy images must be uint8 HWC, got {image.dtype}")
    image = Image.fromarray(image)
  if not isinstance(image, Image.Image):
    raise TypeError(f"unsupported image type {type(image).__name__}")
  if "A" in image.getbands() or image.info.get("transparency") is not None:
    rgba = image.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")
  return image if image.mode == "RGB" else image.convert("RGB")


def grid_for_size(height: int, width: int, min_pixels: int = MIN_PIXELS, max_pixels: int = MAX_PIXELS,
                  patch_size: int = 14, merge_size: int = 2) -> np.ndarray:
  """The (t, h, w) patch grid an image of this size gets, without touching pixels."""
  rh, rw = smart_resize(height, width, patch_size * merge_size, min_pixels, max_pixels)
  return np.array([1, rh // patch_size, rw // patch_size], np.int32)


def snap_grid(grid_h: int, grid_w: int, grid_buckets) -> tuple[int, int]:
  """The bucket grid (h, w) whose aspect ratio is closest (in log space) to grid_h / grid_w."""
  ratios = [abs(math.log((h / w) / (grid_h / grid_w))) for h, w in grid_buckets]
  h, w = grid_buckets[int(np.argmin(ratios))]
  return int(h), int(w)


def target_size(height: int, width: int, min_pixels: int = MIN_PIXELS, max_pixels: int = MAX_PIXELS,
                patch_size: int = 14, merge_size: int = 2, grid_buckets=None) -> tuple[int, int]:
  """The (height, width) `preprocess_image` resizes an image of this size to (its smart resize, or with
  `grid_buckets` the bucket of closest aspect ratio)."""
  rh, rw = smart_resize(height, width, patch_size * merge_size, min_pixels, max_pixels)
  if grid_buckets:
    gh, gw = snap_grid(rh // patch_size, rw // patch_size, grid_buckets)
    if gh % merge_size or gw % merge_size:
      raise ValueError(f"grid bucket {(gh, gw)} is not a multiple of merge_size {merge_size}")
    rh, rw = gh * patch_size, gw * patch_size
  return rh, rw


def image_size(image) -> tuple[int, int]:
  """(height, width) of an image (encoded bytes: read from the header, no pixels decoded), as `to_rgb` sees it."""
  if isinstance(image, (bytes, bytearray, memoryview)):
    with Image.open(io.BytesIO(bytes(image))) as im:
      width, height = im.size
    return height, width
  if isinstance(image, np.ndarray):
    return int(image.shape[0]), int(image.shape[1])
  if isinstance(image, Image.Image):
    return image.size[1], image.size[0]
  raise TypeError(f"unsupported image type {type(image).__name__}")


def preprocess_image(image, min_pixels: int = MIN_PIXELS, max_pixels: int = MAX_PIXELS, patch_size: int = 14,
                     temporal_patch_size: int = 2, merge_size: int = 2, *,
                     grid_buckets=None) -> tuple[np.ndarray, np.ndarray]:
  """Turns one image (PIL image, encoded bytes, or uint8 HWC array) into Qwen2-VL vision input.

  With `grid_buckets` (a list of (grid_h, grid_w), multiples of merge_size), the image is resized to the bucket
  grid of closest aspect ratio instead of its own smart-resize grid, so batches can share a few static shapes.

  Returns:
    pixel_values: float32 [grid_h * grid_w, 3 * temporal_patch_size * patch_size**2], patches in the
      merge-window order the vision tower expects.
    grid_thw: int32 (3,) = (1, grid_h, grid_w).
  """
  rgb = to_rgb(image)
  width, height = rgb.size
  rh, rw = target_size(height, width, min_pixels, max_pixels, patch_size, merge_size, grid_buckets)
  resized = resize_packed(packed_pixels(rgb), (rw, rh))
  pixel_values = _patchify_kernel(patch_size, merge_size, temporal_patch_size)(resized, _TABLE)
  return pixel_values, np.array([1, rh // patch_size, rw // patch_size], np.int32)


@functools.cache
def _patchify_kernel(patch: int, merge: int, temporal: int):
  """A numba kernel with the patch geometry baked in as constants (so the 14-pixel runs unroll and vectorize):
  [H, W] packed RGBX pixels, [3, 256] table -> [gh * gw, 3 * temporal * patch**2] float32, patches in merge-window
  order (merge x merge neighbouring patches are consecutive), each laid out (channel, time, row, column). A still
  image is repeated along the time axis. (numba's disk cache keys closures by their captured values, so each
  geometry gets its own cached kernel.)"""
  area = patch * patch

  @numba.njit(cache=True, nogil=True)
  def patchify(pixels, table):
    gh, gw = pixels.shape[0] // patch, pixels.shape[1] // patch
    out = np.empty((gh * gw, 3 * temporal * area), np.float32)
    i = 0
    for by in range(gh // merge):
      for bx in range(gw // merge):
        for my in range(merge):
          for mx in range(merge):
            y0, x0 = (by * merge + my) * patch, (bx * merge + mx) * patch
            for c in range(3):
              levels = table[c]
              for py in range(patch):
                line = pixels[y0 + py]
                start = c * temporal * area + py * patch
                for px in range(patch):
                  out[i, start + px] = levels[channel(line[x0 + px], c)]
                for t in range(1, temporal):
                  for px in range(patch):
                    out[i, start + t * area + px] = out[i, start + px]
            i += 1
    return out

  return patchify
