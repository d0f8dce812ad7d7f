"""Published Qwen2-VL / Qwen2.5-VL architectures (values of their config.json files) and tiny test models.

Full-size presets use remat_policy="full" (see geojax.models.memory for the per-chip budget).

    config = PRESETS["qwen2.5-vl-7b"]            # a QwenVLConfig
    config = tiny_config("qwen2_5_vl", vocab_size=tok.vocab_size, image_token_id=tok.image_pad_id, ...)
"""
from __future__ import annotations

from geojax.models.config import QwenVLConfig, TextConfig, VisionConfig

# Published sizes (billions of parameters, as listed on the model cards / safetensors metadata).
PUBLISHED_PARAMS_B = {
    "qwen2-vl-2b": 2.21, "qwen2-vl-7b": 8.29,
    "qwen2.5-vl-3b": 3.75, "qwen2.5-vl-7b": 8.29, "qwen2.5-vl-32b": 33.5, "qwen2.5-vl-72b": 73.4,
}


def _qwen2_vl(vocab, hidden, inter, layers, heads, kv, tie) -> QwenVLConfig:
  text = TextConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=inter, num_layers=layers, num_heads=heads,
                    num_kv_heads=kv, rms_norm_eps=1e-6, rope_theta=1_000_000.0, mrope_section=(16, 24, 24),
                    max_position_embeddings=32768, tie_word_embeddings=tie)
  vision = VisionConfig(depth=32, hidden_size=1280, intermediate_size=5120, num_heads=16, out_hidden_size=hidden,
                        hidden_act="quick_gelu", fullatt_block_indexes=tuple(range(32)))
  return QwenVLConfig(version="qwen2_vl", text=text, vision=vision, remat_policy="full")


def _qwen2_5_vl(vocab, hidden, inter, layers, heads, kv, tie, vision_inter, max_pos=128000) -> QwenVLConfig:
  text = TextConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=inter, num_layers=layers, num_heads=heads,
                    num_kv_heads=kv, rms_norm_eps=1e-6, rope_theta=1_000_000.0, mrope_section=(16, 24, 24),
                    max_position_embeddings=max_pos, tie_word_embeddings=tie)
  vision = VisionConfig(depth=32, hidden_size=1280, intermediate_size=vision_inter, num_heads=16,
                        out_hidden_size=hidden, hidden_act="silu", window_size=112,
                        fullatt_block_indexes=(7, 15, 23, 31), tokens_per_second=2)
  return QwenVLConfig(version="qwen2_5_vl", text=text, vision=vision, remat_policy="full")


PRESETS: dict[str, QwenVLConfig] = {
    "qwen2-vl-2b": _qwen2_vl(151936, 1536, 8960, 28, 12, 2, True),
    "qwen2-vl-7b": _qwen2_vl(152064, 3584, 18944, 28, 28, 4, False),
    "qwen2.5-vl-3b": _qwen2_5_vl(151936, 2048, 11008, 36, 16, 2, True, 3420),
    "qwen2.5-vl-7b": _qwen2_5_vl(152064, 3584, 18944, 28, 28, 4, False, 3420),
    "qwen2.5-vl-32b": _qwen2_5_vl(152064, 5120, 27648, 64, 40, 8, False, 3456),
    "qwen2.5-vl-72b": _qwen2_5_vl(152064, 8192, 29568, 80, 64, 8, False, 3456),
}


def tiny_config(version: str = "qwen2_5_vl", *, vocab_size: int = 151936, image_token_id: int = 151655,
                video_token_id: int = 151656, vision_start_token_id: int = 151652,
                vision_end_token_id: int = 151653, eos_token_id: int | None = 151645,
                bos_token_id: int | None = 151643, hidden_size: int = 64, num_layers: int = 2,
                vision_depth: int = 2, tie_word_embeddings: bool = True, **overrides) -> QwenVLConfig:
  """A few-million-parameter model of either architecture for tests and CPU smoke runs."""
  text = TextConfig(vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                    num_layers=num_layers, num_heads=4, num_kv_heads=2, rms_norm_eps=1e-6, rope_theta=10000.0,
                    mrope_section=_section(hidden_size // 4), max_position_embeddings=4096,
                    tie_word_embeddings=tie_word_embeddings, bos_token_id=bos_token_id, eos_token_id=eos_token_id)
  if version == "qwen2_vl":
    vision = VisionConfig(depth=vision_depth, hidden_size=32, intermediate_size=64, num_heads=2,
                          out_hidden_size=hidden_size, hidden_act="quick_gelu",
                          fullatt_block_indexes=tuple(range(vision_depth)))
  else:
    vision = VisionConfig(depth=vision_depth, hidden_size=32, intermediate_size=64, num_heads=2,
                          out_hidden_size=hidden_size, hidden_act="silu", window_size=112,
                          fullatt_block_indexes=(vision_depth - 1,))
  return QwenVLConfig(version=version, text=text, vision=vision, image_token_id=image_token_id,
                      video_token_id=video_token_id, vision_start_token_id=vision_start_token_id,
                      vision_end_token_id=vision_end_token_id, **overrides)


def _section(head_dim: int) -> tuple[int, int, int]:
  """Split head_dim/2 rotary bands over (t, h, w) in the published 16:24:24 proportion."""
  half = head_dim // 2
  t = half // 4
  h = (half - t) // 2
  return (t, h, half - t - h)
