"""Random-weight Qwen-VL models built in transformers (torch, CPU), and left-padded image prompts for them.

For comparisons with transformers on the same weights: build the model here, `save_pretrained` it and `load_hf` the
directory. Used by the sampler tests and scripts/bench_sampler.py; needs torch and transformers (imported lazily).
"""
from __future__ import annotations

import dataclasses

import numpy as np

# Token ids used by the tiny vocabularies (the real Qwen ids are used when the vocabulary is big enough).
TINY_IDS = dict(image_token_id=250, video_token_id=251, vision_start_token_id=252, vision_end_token_id=253)
TINY_EOS = 254
TINY_PAD = 255


def hf_config(version: str, *, vocab_size: int, hidden_size: int, num_layers: int, num_heads: int,
              num_kv_heads: int, intermediate_size: int, vision_hidden: int = 32, vision_depth: int = 2,
              vision_heads: int = 2, tie_word_embeddings: bool = False):
  """A transformers Qwen2-VL / Qwen2.5-VL config with the given language-model and vision-tower sizes."""
  from transformers import Qwen2_5_VLConfig, Qwen2VLConfig
  head_dim = hidden_size // num_heads
  unit = head_dim // 2 // 8  # mrope_section splits the head_dim/2 rotary frequencies t:h:w = 2:3:3 (Qwen: 16,24,24)
  mrope_section = [2 * unit, 3 * unit, head_dim // 2 - 5 * unit]
  big_vocab = vocab_size > 151656
  ids = {} if big_vocab else dict(TINY_IDS)
  eos = 151645 if big_vocab else TINY_EOS
  text = dict(vocab_size=vocab_size, hidden_size=hidden_size, num_hidden_layers=num_layers,
              num_attention_heads=num_heads, num_key_value_heads=num_kv_heads, intermediate_size=intermediate_size,
              max_position_embeddings=4096, rms_norm_eps=1e-6, eos_token_id=eos, bos_token_id=eos,
              rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": mrope_section},
              tie_word_embeddings=tie_word_embeddings)
  vision = dict(depth=vision_depth, hidden_size=vision_hidden, num_heads=vision_heads, in_channels=3, patch_size=14,
                spatial_merge_size=2, temporal_patch_size=2)
  if version == "qwen2_5_vl":
    vision.update(intermediate_size=2 * vision_hidden, out_hidden_size=hidden_size, window_size=112,
                  fullatt_block_indexes=[vision_depth - 1], hidden_act="silu")
    config = Qwen2_5_VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=tie_word_embeddings,
                              **ids)
  elif version == "qwen2_vl":
    vision.update(embed_dim=vision_hidden, mlp_ratio=2, hidden_size=hidden_size)
    config = Qwen2VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=tie_word_embeddings, **ids)
  else:
    raise ValueError(f"unknown version {version!r}")
  return config


def build_hf_model(config, path: str | None = None, seed: int = 0, init_std: float | None = None):
  """Instantiates the model with random weights (seeded), in eval mode; saves it to `path` if given."""
  import torch
  from transformers import Qwen2_5_VLForConditionalGeneration, Qwen2VLForConditionalGeneration
  torch.manual_seed(seed)
  cls = Qwen2_5_VLForConditionalGeneration if config.model_type == "qwen2_5_vl" else Qwen2VLForConditionalGeneration
  model = cls(config).eval()
  if init_std is not None:  # wider weights make greedy choices well separated (no near-ties to flip in float32)
    with torch.no_grad():
      for p in model.parameters():
        if p.dim() >= 2:
          p.normal_(0.0, init_std)
  if path is not None:
    model.save_pretrained(path)
  return model


@dataclasses.dataclass
class PromptBatch:
  """Left-padded prompts with one image each (same grid), as numpy arrays in the geojax batch layout."""
  input_ids: np.ndarray       # int32 [B, L]
  attention_mask: np.ndarray  # int32 [B, L]
  pixel_values: np.ndarray    # float32 [B * P, 3 * 2 * 14 * 14]
  image_grid_thw: np.ndarray  # int32 [B, 3]
  pad_id: int

  def torch_inputs(self, image_token_id: int) -> dict:
    """The same batch as transformers' generate wants it (int64 ids, mm_token_type_ids)."""
    import torch
    ids = torch.from_numpy(self.input_ids.astype(np.int64))
    return dict(input_ids=ids, attention_mask=torch.from_numpy(self.attention_mask.astype(np.int64)),
                pixel_values=torch.from_numpy(self.pixel_values),
                image_grid_thw=torch.from_numpy(self.image_grid_thw.astype(np.int64)),
                mm_token_type_ids=(ids == image_token_id).to(torch.int64))


def make_prompts(config, batch: int, *, grid_hw: tuple[int, int] = (4, 4), min_text: int = 3, max_text: int = 9,
                 seed: int = 0) -> PromptBatch:
  """Random text around one image per prompt: [text] <vision_start> <image>*n <vision_end> [text], left-padded."""
  rng = np.random.default_rng(seed)
  merge = config.vision_config.spatial_merge_size
  h, w = grid_hw
  n_image_tokens = h * w // (merge * merge)
  eos = config.text_config.eos_token_id
  pad = eos if isinstance(eos, int) else eos[0]
  special = {config.image_token_id, config.video_token_id, config.vision_start_token_id, config.vision_end_token_id,
             pad}
  text_vocab = min(config.text_config.vocab_size, 240)  # plain tokens drawn below every special id

  def text(n):
    ids = rng.integers(0, text_vocab, size=n)
    return [int(t) for t in ids if int(t) not in special] or [1]

  rows = []
  for _ in range(batch):
    before = text(int(rng.integers(1, max_text - min_text + 2)))
    after = text(int(rng.integers(min_text, max_text + 1)))
    rows.append(before + [config.vision_start_token_id] + [config.image_token_id] * n_image_tokens
                + [config.vision_end_token_id] + after)
  length = max(len(r) for r in rows)
  input_ids = np.full((batch, length), pad, np.int32)
  attention_mask = np.zeros((batch, length), np.int32)
  for i, r in enumerate(rows):
    input_ids[i, length - len(r):] = r
    attention_mask[i, length - len(r):] = 1
  patch_dim = 3 * config.vision_config.temporal_patch_size * config.vision_config.patch_size ** 2
  pixel_values = rng.standard_normal((batch * h * w, patch_dim)).astype(np.float32)
  image_grid_thw = np.tile(np.array([[1, h, w]], np.int32), (batch, 1))
  return PromptBatch(input_ids, attention_mask, pixel_values, image_grid_thw, pad)


def hf_generate(model, prompts: PromptBatch, max_new_tokens: int, **kwargs):
  """transformers' generate on the batch; returns only the new tokens, int64 numpy [B, <= max_new_tokens]."""
  import torch
  inputs = prompts.torch_inputs(model.config.image_token_id)
  with torch.no_grad():
    out = model.generate(**inputs, max_new_tokens=max_new_tokens, pad_token_id=prompts.pad_id, **kwargs)
  return out[:, prompts.input_ids.shape[1]:].numpy()
