"""Qwen2-VL image preprocessing: smart resize, bicubic resampling, rescale + normalize, patchify.

Produces exactly what transformers' `Qwen2VLImageProcessorPil` produces, but faster: the image is resized as a PIL
image without numpy round trips, and rescale + normalize + patchify is one lookup-table gather from the uint8
pixels straight into the patch layout (the table holds the reference's float64-rescale, float32-normalize values,
so results are bit-identical).
"""
from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image

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
  factor = patch_size * merge_size
  rh, rw = smart_resize(height, width, factor, min_pixels, max_pixels)
  if grid_buckets:
    gh, gw = snap_grid(rh // patch_size, rw // patch_size, grid_buckets)
    if gh % merge_size or gw % merge_size:
      raise ValueError(f"grid bucket {(gh, gw)} is not a multiple of merge_size {merge_size}")
    rh, rw = gh * patch_size, gw * patch_size
  resized = rgb.resize((rw, rh), resample=Image.Resampling.BICUBIC)
  pixels = np.asarray(resized)  # [rh, rw, 3] uint8
  gh, gw = rh // patch_size, rw // patch_size
  m, p = merge_size, patch_size
  # [gh/m, m, p, gw/m, m, p, C] -> [gh/m, gw/m, m(h), m(w), C, p(h), p(w)]: done on uint8, so the copy is cheap.
  blocks = pixels.reshape(gh // m, m, p, gw // m, m, p, 3).transpose(0, 3, 1, 4, 6, 2, 5)
  levels = np.ascontiguousarray(blocks).reshape(gh * gw, 3, p * p)
  out = np.empty((gh * gw, 3, temporal_patch_size, p * p), np.float32)
  for c in range(3):
    np.take(_TABLE[c], levels[:, c], out=out[:, c, 0], mode="clip")  # levels are < 256: clip never clips
    # A still image is repeated along the temporal patch axis.
    for t in range(1, temporal_patch_size):
      out[:, c, t] = out[:, c, 0]
  return out.reshape(gh * gw, -1), np.array([1, gh, gw], np.int32)
