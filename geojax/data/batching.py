"""From example records to static-shape model batches.

`ExampleTransform` turns one record into features (chat token ids, image patches, targets) and raises
`BadRecord` for data that cannot be used. `collate` pads a group of features sharing an image grid into a batch:

  input_ids      int32   [B, L]     SFT: prompt + answer, RIGHT-padded; RL/eval: prompt only, LEFT-padded
  attention_mask int32   [B, L]     1 for real tokens
  position_ids   int32   [3, B, L]  M-RoPE positions (geojax.data.mrope.rope_index), 0 on padding
  rope_deltas    int32   [B]        for positions of generated tokens (see mrope.py)
  pixel_values   float32 [B*P, 1176] one image per row, rows' patches concatenated; P = t*h*w of the shared grid
  image_grid_thw int32   [B, 3]     the same grid on every row
  example_mask   float32 [B]        1 for real examples, 0 for filler rows (copies of row 0) that fill a batch
  SFT only:  loss_mask float32 [B, L]  1 where input token t is an answer token to predict (answer + <|im_end|>)
  RL / eval: lat, lon float32 [B]; id, country, admin1, city object [B] (str); clues object [B] (list of str)

A prompt never gets cut: a prompt longer than the allowed length (which would split the image) is a bad record;
only the answer of an SFT example is shortened to `max_answer_len` tokens.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import numpy as np

from geojax.data.chat import answer_text, encode_chat_parts, get_prompt, image_token_count
from geojax.data.image import MAX_PIXELS, MIN_PIXELS, image_size, preprocess_image, target_size
from geojax.data.mrope import rope_index
from geojax.data.records import record_problem

MODES = ("sft", "rl")
PATCH_SIZE = 14  # preprocess_image's (Qwen2-VL's) patch side


class BadRecord(ValueError):
  """A record that cannot be used (unreadable image, bad coordinates, empty caption, too long...)."""


def bucket_length(n: int, buckets: Sequence[int], multiple: int = 64) -> int:
  """Smallest bucket >= n; without buckets (or past the largest) n rounded up to `multiple`."""
  for b in sorted(buckets):
    if n <= b:
      return int(b)
  return int(-(-n // multiple) * multiple)


@dataclasses.dataclass
class ExampleTransform:
  """Record -> features for `collate`. Picklable (runs in Grain worker processes).

  Attributes:
    tokenizer: a geojax.data.tokenizer.Tokenizer.
    prompt: a geojax.data.PROMPTS key ("geo_r", "globe", "coords").
    mode: "sft" (prompt + answer) or "rl" (prompt only; ground truth kept for rewards / metrics).
    answer: answer format of SFT targets ("chain", "globe", "latlon"); default: the prompt's.
    max_prompt_len / max_answer_len: prompts longer are bad records; answers longer are shortened.
    grid_buckets: optional list of (grid_h, grid_w) images are resized to (nearest aspect ratio).
    seq_buckets: sequence lengths batches are padded to (the smallest that fits); empty: multiples of 64.
    think: what GLOBE answers hold inside <think>: the record's "reasoning" or its "clues" (see answer_text).
  """
  tokenizer: Any
  prompt: str = "geo_r"
  mode: str = "sft"
  answer: str | None = None
  system: str | None = None
  min_pixels: int = MIN_PIXELS
  max_pixels: int = MAX_PIXELS
  max_prompt_len: int = 4096
  max_answer_len: int = 1024
  grid_buckets: Sequence[Sequence[int]] | None = None
  seq_buckets: Sequence[int] = ()
  decimals: int = 4
  think: str = "reasoning"
  merge_size: int = 2

  def __post_init__(self):
    if self.mode not in MODES:
      raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
    spec = get_prompt(self.prompt)
    self._user = spec.user
    self._system = spec.system if self.system is None else self.system
    self.answer = self.answer or spec.answer

  def __call__(self, record: Mapping[str, Any]) -> dict:
    target = self._target(record)
    try:
      pixel_values, grid = preprocess_image(record["image"], self.min_pixels, self.max_pixels,
                                            merge_size=self.merge_size, grid_buckets=self.grid_buckets)
    except Exception as e:  # PIL raises many types for truncated / corrupt files
      raise BadRecord(f"unreadable image ({type(e).__name__})") from e
    features = self._features(record, target, grid)
    self._check_patches(features, pixel_values)
    features["pixel_values"] = pixel_values
    return features

  def describe(self, record: Mapping[str, Any]) -> dict:
    """What `__call__` returns but the image patches: the grid comes from the image's header, the raw image is
    kept under "_image" for `decode`. Cheap, so that every process can bucket a whole global batch and decode
    only its own rows (make_loader's shard_by="rows")."""
    target = self._target(record)
    try:
      height, width = target_size(*image_size(record["image"]), self.min_pixels, self.max_pixels, PATCH_SIZE,
                                  self.merge_size, self.grid_buckets)
      grid = np.array([1, height // PATCH_SIZE, width // PATCH_SIZE], np.int32)
    except Exception as e:
      raise BadRecord(f"unreadable image ({type(e).__name__})") from e
    return dict(self._features(record, target, grid), _image=record["image"])

  def decode(self, features: Mapping[str, Any]) -> dict:
    """`describe`'s features with the image patches: equal to `__call__` of the record."""
    image = features["_image"]
    features = {k: v for k, v in features.items() if k != "_image"}
    try:
      pixel_values, grid = preprocess_image(image, self.min_pixels, self.max_pixels,
                                            merge_size=self.merge_size, grid_buckets=self.grid_buckets)
    except Exception as e:
      raise BadRecord(f"unreadable image ({type(e).__name__})") from e
    if not np.array_equal(grid, features["grid_thw"]):
      raise BadRecord(f"image grid {grid.tolist()} differs from its header's {features['grid_thw'].tolist()}")
    self._check_patches(features, pixel_values)
    features["pixel_values"] = pixel_values
    return features

  def blank(self, features: Mapping[str, Any]) -> dict:
    """`describe`'s features with zero image patches: the stand-in for a row whose image fails to decode."""
    n_patches = int(np.prod(features["grid_thw"]))
    return dict({k: v for k, v in features.items() if k != "_image"},
                pixel_values=np.zeros((n_patches, 3 * 2 * PATCH_SIZE ** 2), np.float32))

  def _target(self, record: Mapping[str, Any]) -> str | None:
    """The SFT answer text (None in "rl" mode); raises BadRecord for records that cannot be used."""
    problem = record_problem(record, self.answer if self.mode == "sft" else None)
    if problem:
      raise BadRecord(problem)
    if self.mode != "sft":
      return None
    target = answer_text(record, self.answer, self.decimals, self.think)
    if not target.strip():
      raise BadRecord("empty caption")
    return target

  def _features(self, record: Mapping[str, Any], target: str | None, grid: np.ndarray) -> dict:
    n_image = image_token_count(grid, self.merge_size)
    prompt_ids, answer_ids = encode_chat_parts(self.tokenizer, self._system, self._user, n_image, target)
    if len(prompt_ids) > self.max_prompt_len:
      raise BadRecord("prompt too long")
    answer_ids = answer_ids[:self.max_answer_len]
    length = len(prompt_ids) + len(answer_ids)
    return {
        "prompt_ids": np.asarray(prompt_ids, np.int32), "answer_ids": np.asarray(answer_ids, np.int32),
        "grid_thw": grid, "seq_len": bucket_length(length, self.seq_buckets),
        "id": str(record.get("id", "")), "lat": float(record["lat"]), "lon": float(record["lon"]),
        "country": str(record.get("country") or ""), "admin1": str(record.get("admin1") or ""),
        "city": str(record.get("city") or ""), "clues": list(record.get("clues") or []),
    }

  def _check_patches(self, features: Mapping[str, Any], pixel_values: np.ndarray) -> None:
    """The trap of truncated prompts: placeholders must equal image features, checked per example."""
    n_pads = int(np.count_nonzero(features["prompt_ids"] == self.tokenizer.image_pad_id))
    if n_pads * self.merge_size ** 2 != pixel_values.shape[0]:
      raise ValueError(f"{n_pads} image tokens but {pixel_values.shape[0]} patches (grid "
                       f"{features['grid_thw'].tolist()})")

  @staticmethod
  def bucket_key(features: Mapping[str, Any]) -> tuple:
    """Examples with equal keys can share a batch: same image grid, same padded length."""
    return (*(int(x) for x in features["grid_thw"]), int(features["seq_len"]))

  def collate(self, features: Sequence[Mapping[str, Any]], batch_size: int | None = None,
              real: Sequence[bool] | None = None) -> dict:
    return collate(features, self.mode, self.tokenizer, batch_size=batch_size, merge_size=self.merge_size, real=real)


def collate(features: Sequence[Mapping[str, Any]], mode: str, tokenizer, batch_size: int | None = None,
            seq_len: int | None = None, merge_size: int = 2, real: Sequence[bool] | None = None) -> dict:
  """Pads features with one shared image grid into a batch (format in the module docstring).

  With `batch_size` larger than len(features), filler rows copy row 0 and get example_mask 0 (so the image
  features stay consistent and no row is fully masked). With `real`, `features` are all the rows (fillers
  included, e.g. one process's rows of a global batch) and `real` says which are real examples.
  """
  if not features:
    raise ValueError("collate needs at least one example")
  grids = np.stack([f["grid_thw"] for f in features]).astype(np.int32)
  if not (grids == grids[0]).all():
    raise ValueError(f"examples of one batch must share an image grid, got {np.unique(grids, axis=0).tolist()}")
  n_real = len(features)
  batch_size = batch_size or n_real
  if n_real > batch_size:
    raise ValueError(f"{n_real} examples for a batch of {batch_size}")
  rows = list(features) + [features[0]] * (batch_size - n_real)
  is_real = np.arange(batch_size) < n_real
  if real is not None:
    is_real = np.asarray(real, bool)
    if is_real.shape != (batch_size,) or n_real != batch_size:
      raise ValueError(f"real marks {is_real.shape} rows of a batch of {n_real} rows, padded to {batch_size}")
  lengths = [len(f["prompt_ids"]) + (len(f["answer_ids"]) if mode == "sft" else 0) for f in rows]
  seq_len = seq_len or max(max(int(f["seq_len"]) for f in rows), max(lengths))
  input_ids = np.full((batch_size, seq_len), tokenizer.pad_id, np.int32)
  attention_mask = np.zeros((batch_size, seq_len), np.int32)
  batch: dict[str, Any] = {}
  if mode == "sft":
    loss_mask = np.zeros((batch_size, seq_len), np.float32)
    for i, f in enumerate(rows):
      n_prompt, n = len(f["prompt_ids"]), lengths[i]
      input_ids[i, :n_prompt] = f["prompt_ids"]
      input_ids[i, n_prompt:n] = f["answer_ids"]
      attention_mask[i, :n] = 1
      loss_mask[i, n_prompt:n] = 1.0 if is_real[i] else 0.0
    batch["loss_mask"] = loss_mask
  elif mode == "rl":
    for i, f in enumerate(rows):
      n = lengths[i]
      input_ids[i, seq_len - n:] = f["prompt_ids"]
      attention_mask[i, seq_len - n:] = 1
  else:
    raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
  grid_batch = np.repeat(grids[:1], batch_size, axis=0)
  position_ids, rope_deltas = rope_index(
      input_ids, attention_mask, grid_batch, spatial_merge_size=merge_size, image_token_id=tokenizer.image_pad_id,
      vision_start_token_id=tokenizer.vision_start_id)
  batch.update({
      "input_ids": input_ids, "attention_mask": attention_mask,
      "position_ids": position_ids.astype(np.int32), "rope_deltas": rope_deltas.astype(np.int32),
      "pixel_values": np.concatenate([f["pixel_values"] for f in rows], axis=0),
      "image_grid_thw": grid_batch,
      "example_mask": is_real.astype(np.float32),
  })
  if mode == "rl":
    batch["lat"] = np.array([f["lat"] for f in rows], np.float32)
    batch["lon"] = np.array([f["lon"] for f in rows], np.float32)
    for key in ("id", "country", "admin1", "city", "clues"):
      column = np.empty(batch_size, dtype=object)
      column[:] = [f[key] for f in rows]
      batch[key] = column
  return batch
