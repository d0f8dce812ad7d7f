"""Multimodal rotary positions (M-RoPE) of Qwen2-VL / Qwen2.5-VL, computed on the host in numpy.

`rope_index` gives the same numbers as transformers' `Qwen2VLModel.get_rope_index` /
`Qwen2_5_VLModel.get_rope_index` for still images (no video): text tokens count up by one on all three
axes; the tokens of an image with merged grid (t, h, w) get (start + t_i, start + h_i, start + w_i) and the
text after it resumes at start + max(h, w). Padding (attention_mask == 0) gets position 0 and is skipped.

Positions of tokens generated after a prompt: `position = n_valid_prompt_tokens + rope_deltas + step`
(the same on all three axes; step 0 is the first new token), i.e. one past the largest prompt position.
"""
from __future__ import annotations

import numpy as np


def _image_runs(is_image: np.ndarray) -> list[tuple[int, int]]:
  """(start, end) of each maximal run of True in a 1-D boolean array."""
  padded = np.concatenate([[False], is_image, [False]]).astype(np.int8)
  edges = np.flatnonzero(np.diff(padded))
  return list(zip(edges[0::2].tolist(), edges[1::2].tolist()))


def rope_index(
    input_ids: np.ndarray,
    attention_mask: np.ndarray | None = None,
    image_grid_thw: np.ndarray | None = None,
    *,
    spatial_merge_size: int = 2,
    image_token_id: int = 151655,
    vision_start_token_id: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
  """3-D rotary positions for a batch, equal to transformers' `get_rope_index` (images only).

  Args:
    input_ids: int [B, L] token ids (left or right padding allowed).
    attention_mask: [B, L], 1 for real tokens, 0 for padding; None means all real.
    image_grid_thw: int [n_images, 3] patch grids (t, h, w) of the images in the order they appear,
      row after row of the batch; None when there are no images.
    spatial_merge_size: patch merge size of the vision tower (2 for all Qwen2/2.5-VL models).
    image_token_id: id of the image placeholder (`<|image_pad|>`) token.
    vision_start_token_id: accepted for API symmetry; runs of image tokens alone define the images.

  Returns:
    position_ids int32 [3, B, L] and rope_deltas int32 [B] (max position + 1 - number of real tokens).

  Raises:
    ValueError: when the image tokens do not match the grids (for example a prompt truncated inside an
      image), naming the row and the counts.
  """
  del vision_start_token_id
  input_ids = np.asarray(input_ids)
  if input_ids.ndim != 2:
    raise ValueError(f"input_ids must be [B, L], got shape {input_ids.shape}")
  batch, length = input_ids.shape
  mask = np.ones_like(input_ids, dtype=bool) if attention_mask is None else np.asarray(attention_mask).astype(bool)
  grids = np.zeros((0, 3), np.int64) if image_grid_thw is None else np.asarray(image_grid_thw, np.int64).reshape(-1, 3)
  merge_area = spatial_merge_size * spatial_merge_size
  tokens_per_image = grids.prod(-1) // merge_area

  positions = np.zeros((3, batch, length), np.int64)
  deltas = np.zeros((batch,), np.int64)
  next_image = 0
  for row in range(batch):
    ids = input_ids[row][mask[row]]
    n = ids.shape[0]
    row_pos = np.zeros((3, n), np.int64)
    current = 0  # next text position
    cursor = 0  # next token index in ids
    for run_start, run_end in _image_runs(ids == image_token_id) + [(n, n)]:
      text_len = run_start - cursor
      row_pos[:, cursor:run_start] = current + np.arange(text_len)
      current += text_len
      cursor = run_start
      while cursor < run_end:  # a run may hold several back-to-back images
        if next_image >= len(grids):
          raise ValueError(
              f"row {row}: image tokens at {cursor}..{run_end - 1} but only {len(grids)} image grids were given "
              f"(image tokens and image features do not match)")
        t, h, w = grids[next_image]
        gh, gw = h // spatial_merge_size, w // spatial_merge_size
        count = int(tokens_per_image[next_image])
        if cursor + count > run_end:
          raise ValueError(
              f"row {row}: image {next_image} with grid {(int(t), int(h), int(w))} needs {count} image tokens, "
              f"found {run_end - cursor} (image tokens and image features do not match; truncated prompt?)")
        ti, hi, wi = np.meshgrid(np.arange(t), np.arange(gh), np.arange(gw), indexing="ij")
        row_pos[:, cursor:cursor + count] = current + np.stack([ti.ravel(), hi.ravel(), wi.ravel()])
        current += max(gh, gw)
        cursor += count
        next_image += 1
    positions[:, row, mask[row]] = row_pos
    deltas[row] = (row_pos.max() + 1 if n else 0) - n
  if next_image != len(grids):
    raise ValueError(
        f"{len(grids)} image grids were given but the image tokens cover only {next_image} images "
        f"(image tokens and image features do not match)")
  return positions.astype(np.int32), deltas.astype(np.int32)


def next_positions(position_ids, attention_mask=None):
  """[B] int32 position of the first token generated after each prompt: one past the largest position of its
  real tokens (the same on all three axes). The one definition the sampler and the training pass share; works on
  numpy and jax arrays (inside jit too)."""
  if isinstance(position_ids, np.ndarray):
    xp = np
  else:
    import jax.numpy as xp  # here, so host-side data workers importing this module never load jax
  if attention_mask is not None:
    position_ids = xp.where(attention_mask.astype(bool)[None], position_ids, -1)
  return (xp.max(position_ids, axis=(0, 2)) + 1).astype(xp.int32)
