"""geojax.data.resize against Pillow's own bicubic resize (the resampler Qwen2-VL's reference preprocessing uses)."""
import numpy as np
import pytest
from PIL import Image

from geojax.data.resize import pass_order, resize_bicubic


def _pillow(image: Image.Image, size) -> np.ndarray:
  return np.asarray(image.resize(size, Image.Resampling.BICUBIC))


def _random_image(rng, height: int, width: int) -> Image.Image:
  # Noise: neighbouring pixels differ a lot, so rounding or tap-position errors show up.
  return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def test_equals_pillow_on_random_sizes():
  rng = np.random.default_rng(0)
  for _ in range(150):
    height, width = (int(v) for v in rng.integers(1, 300, 2))
    size = tuple(int(v) for v in rng.integers(1, 400, 2))
    image = _random_image(rng, height, width)
    np.testing.assert_array_equal(resize_bicubic(image, size), _pillow(image, size),
                                  err_msg=f"{width}x{height} -> {size}")


@pytest.mark.parametrize("in_size,out_size", [
    ((640, 480), (644, 476)),     # Qwen's smart resize of a 480x640 photo: small shrink and stretch
    ((1920, 1080), (588, 336)),   # strong downscale (15 taps per axis)
    ((10, 1999), (28, 840)),      # very tall, height shrinks, width grows
    ((1999, 10), (840, 28)),      # very wide
    ((150, 1), (168, 28)),        # one-pixel-high input
    ((1, 150), (28, 168)),
    ((64, 64), (64, 32)),         # vertical pass only
    ((64, 64), (32, 64)),         # horizontal pass only
    ((33, 17), (33, 17)),         # no pass: a copy
])
def test_equals_pillow_on_edge_cases(in_size, out_size):
  image = _random_image(np.random.default_rng(1), in_size[1], in_size[0])
  np.testing.assert_array_equal(resize_bicubic(image, out_size), _pillow(image, out_size))


def test_pass_order_is_pillows():
  """The order of the two passes changes the result; check ours against the two orders done one pass at a time."""
  rng = np.random.default_rng(2)
  cases = [((640, 480), (644, 476)), ((100, 100), (120, 150)), ((24, 278), (8, 199)), ((166, 57), (137, 5))]
  for (w, h), (ow, oh) in cases:
    image = _random_image(rng, h, w)
    horizontal_first = _pillow(Image.fromarray(_pillow(image, (ow, h))), (ow, oh))
    vertical_first = _pillow(Image.fromarray(_pillow(image, (w, oh))), (ow, oh))
    assert not np.array_equal(horizontal_first, vertical_first)  # the case tells the orders apart
    expected = vertical_first if pass_order((w, h), (ow, oh)) == "vertical" else horizontal_first
    np.testing.assert_array_equal(_pillow(image, (ow, oh)), expected)


def test_smooth_photo_and_extreme_values():
  """Saturated inputs exercise the clipping of overshooting bicubic lobes at 0 and 255."""
  checker = np.kron((np.indices((12, 16)).sum(0) % 2) * 255, np.ones((9, 9))).astype(np.uint8)
  image = Image.fromarray(np.stack([checker, 255 - checker, checker], -1))
  for size in [(100, 70), (300, 200), (37, 23)]:
    np.testing.assert_array_equal(resize_bicubic(image, size), _pillow(image, size))


def test_rejects_non_rgb_and_empty_sizes():
  with pytest.raises(ValueError, match="RGB"):
    resize_bicubic(Image.new("L", (4, 4)), (2, 2))
  with pytest.raises(ValueError, match="empty"):
    resize_bicubic(Image.new("RGB", (4, 4)), (0, 2))
