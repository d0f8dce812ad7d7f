"""Tiny random Qwen2-VL / Qwen2.5-VL models built in transformers (torch, CPU) and matching prompts."""
from __future__ import annotations

import numpy as np

IMAGE_ID, VIDEO_ID, VISION_START_ID, VISION_END_ID = 100, 101, 102, 103
VOCAB = 128
PATCH_DIM = 3 * 2 * 14 * 14


def hf_config(version: str, *, tie: bool = False, depth: int = 4):
  """A tiny transformers config of either version (hidden 32-64, 2 text layers)."""
  from transformers import Qwen2_5_VLConfig, Qwen2VLConfig
  text = dict(vocab_size=VOCAB, hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, rms_norm_eps=1e-6,
              rope_parameters=dict(rope_type="default", mrope_section=[2, 2, 2], rope_theta=10000.0))
  ids = dict(image_token_id=IMAGE_ID, video_token_id=VIDEO_ID, vision_start_token_id=VISION_START_ID,
             vision_end_token_id=VISION_END_ID, tie_word_embeddings=tie)
  if version == "qwen2_vl":
    vision = dict(depth=depth, embed_dim=32, hidden_size=48, num_heads=2, mlp_ratio=2)
    return Qwen2VLConfig(text_config=text, vision_config=vision, **ids)
  # window 56 px = 2x2 merged tokens, so images of 4+ merged tokens per side have several windows.
  vision = dict(depth=depth, hidden_size=32, intermediate_size=40, num_heads=2, out_hidden_size=48, window_size=56,
                fullatt_block_indexes=[1, depth - 1])
  return Qwen2_5_VLConfig(text_config=text, vision_config=vision, **ids)


def hf_model(version: str, *, tie: bool = False, seed: int = 0):
  import torch
  from transformers import Qwen2_5_VLForConditionalGeneration, Qwen2VLForConditionalGeneration
  torch.manual_seed(seed)
  cls = Qwen2VLForConditionalGeneration if version == "qwen2_vl" else Qwen2_5_VLForConditionalGeneration
  model = cls(hf_config(version, tie=tie)).eval()
  with torch.no_grad():  # random init puts some weights at exactly 0/1; perturb so every tensor matters
    for p in model.parameters():
      p.add_(0.05 * torch.randn_like(p))
  return model


def prompt(rng: np.random.Generator, parts: list) -> list[int]:
  """Token ids: an int part is that many random text tokens, a (t, h, w) part is one image."""
  ids: list[int] = []
  for part in parts:
    if isinstance(part, int):
      ids += rng.integers(0, 90, size=part).tolist()
    else:
      t, h, w = part
      ids += [VISION_START_ID] + [IMAGE_ID] * (t * h * w // 4) + [VISION_END_ID]
  return ids


def left_pad(rows: list[list[int]], pad_id: int = 0) -> tuple[np.ndarray, np.ndarray]:
  length = max(len(r) for r in rows)
  ids = np.full((len(rows), length), pad_id, np.int32)
  mask = np.zeros((len(rows), length), np.int32)
  for i, r in enumerate(rows):
    ids[i, length - len(r):] = r
    mask[i, length - len(r):] = 1
  return ids, mask


def pixels(rng: np.random.Generator, grids: list) -> np.ndarray:
  n = sum(t * h * w for t, h, w in grids)
  return rng.standard_normal((n, PATCH_DIM)).astype(np.float32)
