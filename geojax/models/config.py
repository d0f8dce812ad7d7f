"""Model configuration of Qwen2-VL / Qwen2.5-VL: frozen dataclasses (hashable, so usable as static jit args).

`QwenVLConfig.from_hf(d)` reads a transformers config.json dict, both the nested layout that transformers 5
writes (`text_config` / `vision_config`) and the flat layout of the published checkpoints (text fields at
the top level, `rope_scaling` with `mrope_section`). Every field transformers' modeling code reads is honoured or,
where geojax's model computes something else, refused with an error naming it (`HF_FIELDS`). `to_hf()` writes the
nested transformers-5 layout.
"""
from __future__ import annotations

import dataclasses
from typing import Any

VERSIONS = ("qwen2_vl", "qwen2_5_vl")
REMAT_POLICIES = ("none", "full", "dots", "dots_no_batch")
ATTENTION_BACKENDS = ("auto", "xla", "blockwise", "cudnn", "splash")  # geojax.models.attention.BACKENDS

# Every config field that transformers' Qwen2-VL / Qwen2.5-VL modeling code reads (text and vision), and what
# from_hf does with it. Fields it does not read (dtype, initializer_range, use_cache, ...) change nothing computed.
HF_FIELDS = {
    **dict.fromkeys(
        ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
         "num_key_value_heads", "rms_norm_eps", "max_position_embeddings", "image_token_id", "video_token_id",
         "depth", "embed_dim", "mlp_ratio", "num_heads", "out_hidden_size", "patch_size", "temporal_patch_size",
         "in_channels", "spatial_merge_size", "window_size", "fullatt_block_indexes", "tokens_per_second",
         "tie_word_embeddings", "text_config", "vision_config"), "honoured"),
    "rope_parameters": "honoured: rope_theta, mrope_section; refused: a text rope_type other than default (or the "
                       "legacy mrope), a vision rope_type other than axial",
    "hidden_act": "refused unless silu (text: the decoder MLP is silu(gate) * up) or, for the vision blocks, one of "
                  "geojax.models.layers.ACTIVATIONS",
    "head_dim": "refused unless hidden_size / num_attention_heads (what the projections use)",
    "use_sliding_window": "refused when true: every decoder layer attends to the whole sequence",
    "layer_types": "refused unless every layer is full_attention",
    "sliding_window": "read by transformers only for sliding_attention layers, which are refused",
    "attention_dropout": "refused unless 0: geojax trains without attention dropout",
    "pad_token_id": "no effect on outputs: the embedding's padding_idx only freezes the pad row, and pad positions "
                    "are masked",
    "_attn_implementation": "the attention kernel transformers runs, not what it computes",
}


@dataclasses.dataclass(frozen=True)
class TextConfig:
  """The Qwen2 language decoder."""
  vocab_size: int = 151936
  hidden_size: int = 1536
  intermediate_size: int = 8960
  num_layers: int = 28
  num_heads: int = 12
  num_kv_heads: int = 2
  rms_norm_eps: float = 1e-6
  rope_theta: float = 1_000_000.0
  mrope_section: tuple[int, ...] = (16, 24, 24)
  max_position_embeddings: int = 32768
  tie_word_embeddings: bool = True
  bos_token_id: int | None = 151643
  eos_token_id: int | None = 151645

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_heads


@dataclasses.dataclass(frozen=True)
class VisionConfig:
  """The vision tower. `hidden_size` is the width of the blocks (Qwen2-VL calls it embed_dim) and
  `out_hidden_size` the width the patch merger projects to (the language model's hidden size)."""
  depth: int = 32
  hidden_size: int = 1280
  intermediate_size: int = 5120
  num_heads: int = 16
  out_hidden_size: int = 1536
  hidden_act: str = "quick_gelu"
  patch_size: int = 14
  temporal_patch_size: int = 2
  in_channels: int = 3
  spatial_merge_size: int = 2
  rope_theta: float = 10000.0
  # Qwen2.5-VL window attention; Qwen2-VL ignores these (every block attends over the whole image).
  window_size: int = 112
  fullatt_block_indexes: tuple[int, ...] = (7, 15, 23, 31)
  tokens_per_second: int = 2

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_heads

  @property
  def patch_dim(self) -> int:
    return self.in_channels * self.temporal_patch_size * self.patch_size * self.patch_size


@dataclasses.dataclass(frozen=True)
class QwenVLConfig:
  """A whole Qwen-VL model plus the training-side knobs (remat policy, sharding rules)."""
  version: str = "qwen2_vl"
  text: TextConfig = TextConfig()
  vision: VisionConfig = VisionConfig()
  image_token_id: int = 151655
  video_token_id: int = 151656
  vision_start_token_id: int = 151652
  vision_end_token_id: int = 151653
  # "none" | "full" | "dots" | "dots_no_batch": jax.checkpoint policy around each decoder / vision block.
  remat_policy: str = "none"
  # "auto" | "xla" | "blockwise" | "cudnn" | "splash": the attention backend (geojax.models.attention).
  attention: str = "auto"
  # Logical-axis rules ((logical, mesh axes or None), ...); None means sharding.DEFAULT_RULES.
  sharding_rules: tuple[tuple[str, Any], ...] | None = None

  def __post_init__(self):
    if self.version not in VERSIONS:
      raise ValueError(f"version must be one of {VERSIONS}, got {self.version!r}")
    if self.remat_policy not in REMAT_POLICIES:
      raise ValueError(f"remat_policy must be one of {REMAT_POLICIES}, got {self.remat_policy!r}")
    if self.attention not in ATTENTION_BACKENDS:
      raise ValueError(f"attention must be one of {ATTENTION_BACKENDS}, got {self.attention!r}")
    if sum(self.text.mrope_section) * 2 != self.text.head_dim:
      raise ValueError(f"mrope_section {self.text.mrope_section} must sum to head_dim/2 = {self.text.head_dim // 2}")

  def replace(self, **changes) -> "QwenVLConfig":
    return dataclasses.replace(self, **changes)

  @classmethod
  def from_hf(cls, hf: dict) -> "QwenVLConfig":
    """From a transformers config.json dict (nested v5 layout or flat published layout). A field whose value
    geojax's model does not compute (see `HF_FIELDS`) is a ValueError naming the field."""
    model_type = hf.get("model_type", "")
    if model_type not in VERSIONS:
      raise ValueError(f"unsupported model_type {model_type!r}; expected one of {VERSIONS}")
    text = dict(hf)
    text.update(hf.get("text_config") or {})
    _check_text_fields(text, "text_config." if hf.get("text_config") else "")
    rope = dict(text.get("rope_parameters") or text.get("rope_scaling") or {})
    # transformers 5 ties when either the root or (pre-v5 saves) the text config says so
    tie = bool(hf.get("tie_word_embeddings", False)) or bool((hf.get("text_config") or {}).get("tie_word_embeddings"))
    text_cfg = TextConfig(
        vocab_size=int(text["vocab_size"]), hidden_size=int(text["hidden_size"]),
        intermediate_size=int(text["intermediate_size"]), num_layers=int(text["num_hidden_layers"]),
        num_heads=int(text["num_attention_heads"]),
        num_kv_heads=int(text.get("num_key_value_heads") or text["num_attention_heads"]),
        rms_norm_eps=float(text.get("rms_norm_eps", 1e-6)),
        rope_theta=float(rope.get("rope_theta", text.get("rope_theta", 1_000_000.0))),
        mrope_section=tuple(int(s) for s in rope.get("mrope_section", (16, 24, 24))),
        max_position_embeddings=int(text.get("max_position_embeddings", 32768)), tie_word_embeddings=tie,
        bos_token_id=text.get("bos_token_id"), eos_token_id=_first(text.get("eos_token_id")))
    v = hf.get("vision_config") or {}
    _check_vision_fields(v, model_type)
    vrope = v.get("rope_parameters") or {}
    common = dict(
        depth=int(v["depth"]), num_heads=int(v["num_heads"]), patch_size=int(v.get("patch_size", 14)),
        temporal_patch_size=int(v.get("temporal_patch_size", 2)),
        in_channels=int(v.get("in_channels", v.get("in_chans", 3))),
        spatial_merge_size=int(v.get("spatial_merge_size", 2)), rope_theta=float(vrope.get("rope_theta", 10000.0)))
    if model_type == "qwen2_vl":
      embed_dim = int(v["embed_dim"])
      vision_cfg = VisionConfig(
          hidden_size=embed_dim, intermediate_size=int(embed_dim * v.get("mlp_ratio", 4)),
          out_hidden_size=int(v["hidden_size"]), hidden_act=v.get("hidden_act", "quick_gelu"),
          fullatt_block_indexes=tuple(range(int(v["depth"]))), **common)
    else:
      vision_cfg = VisionConfig(
          hidden_size=int(v["hidden_size"]), intermediate_size=int(v["intermediate_size"]),
          out_hidden_size=int(v["out_hidden_size"]), hidden_act=v.get("hidden_act", "silu"),
          window_size=int(v.get("window_size", 112)),
          fullatt_block_indexes=tuple(int(i) for i in v.get("fullatt_block_indexes", (7, 15, 23, 31))),
          tokens_per_second=int(v.get("tokens_per_second", 2)), **common)
    return cls(
        version=model_type, text=text_cfg, vision=vision_cfg,
        image_token_id=int(hf.get("image_token_id", 151655)), video_token_id=int(hf.get("video_token_id", 151656)),
        vision_start_token_id=int(hf.get("vision_start_token_id", 151652)),
        vision_end_token_id=int(hf.get("vision_end_token_id", 151653)))

  def to_hf(self) -> dict:
    """The transformers-5 config.json dict (loadable by Qwen2VLConfig / Qwen2_5_VLConfig)."""
    t, v = self.text, self.vision
    text = {
        "model_type": f"{self.version}_text", "vocab_size": t.vocab_size, "hidden_size": t.hidden_size,
        "intermediate_size": t.intermediate_size, "num_hidden_layers": t.num_layers,
        "num_attention_heads": t.num_heads, "num_key_value_heads": t.num_kv_heads, "hidden_act": "silu",
        "rms_norm_eps": t.rms_norm_eps, "max_position_embeddings": t.max_position_embeddings,
        "rope_parameters": {"rope_type": "default", "rope_theta": t.rope_theta,
                            "mrope_section": list(t.mrope_section)},
        "use_sliding_window": False, "sliding_window": None, "attention_dropout": 0.0,
        "bos_token_id": t.bos_token_id, "eos_token_id": t.eos_token_id, "pad_token_id": None,
        "layer_types": ["full_attention"] * t.num_layers,
    }
    vision = {
        "model_type": f"{self.version}_vision", "depth": v.depth, "num_heads": v.num_heads,
        "hidden_act": v.hidden_act, "patch_size": v.patch_size, "temporal_patch_size": v.temporal_patch_size,
        "in_channels": v.in_channels, "spatial_merge_size": v.spatial_merge_size,
        "rope_parameters": {"rope_type": "axial", "rope_theta": v.rope_theta},
    }
    if self.version == "qwen2_vl":
      if v.intermediate_size % v.hidden_size:
        raise ValueError("Qwen2-VL stores mlp_ratio as an integer; intermediate_size must be a multiple of hidden_size")
      vision.update(embed_dim=v.hidden_size, hidden_size=v.out_hidden_size,
                    mlp_ratio=v.intermediate_size // v.hidden_size)
      arch = "Qwen2VLForConditionalGeneration"
    else:
      vision.update(hidden_size=v.hidden_size, intermediate_size=v.intermediate_size, out_hidden_size=v.out_hidden_size,
                    window_size=v.window_size, fullatt_block_indexes=list(v.fullatt_block_indexes),
                    tokens_per_second=v.tokens_per_second)
      arch = "Qwen2_5_VLForConditionalGeneration"
    return {
        "architectures": [arch], "model_type": self.version, "text_config": text, "vision_config": vision,
        "image_token_id": self.image_token_id, "video_token_id": self.video_token_id,
        "vision_start_token_id": self.vision_start_token_id, "vision_end_token_id": self.vision_end_token_id,
        "tie_word_embeddings": t.tie_word_embeddings,
    }


def _first(value):
  return value[0] if isinstance(value, (list, tuple)) else value


def _refuse(field: str, value, why: str):
  raise ValueError(f"unsupported Hugging Face config field {field} = {value!r}: {why}")


def _check_text_fields(text: dict, prefix: str) -> None:
  """Refuses text fields whose value geojax's decoder does not compute (transformers reads each of them)."""
  act = text.get("hidden_act", "silu")
  if act != "silu":
    _refuse(prefix + "hidden_act", act, "geojax's Qwen2 decoder MLP computes silu(gate) * up; only 'silu' is supported")
  rope_key = "rope_parameters" if text.get("rope_parameters") else "rope_scaling"
  rope = text.get(rope_key) or {}
  rope_type = rope.get("rope_type", rope.get("type", "default"))
  if rope_type not in ("default", "mrope"):
    _refuse(f"{prefix}{rope_key}.rope_type", rope_type, "geojax computes unscaled multimodal rotary positions; "
            "only 'default' (or the legacy 'mrope') is supported")
  head_dim = text.get("head_dim")
  if head_dim is not None and int(head_dim) != int(text["hidden_size"]) // int(text["num_attention_heads"]):
    _refuse(prefix + "head_dim", head_dim, "expected hidden_size / num_attention_heads "
            f"= {int(text['hidden_size']) // int(text['num_attention_heads'])}")
  if text.get("use_sliding_window"):
    _refuse(prefix + "use_sliding_window", True, "geojax's decoder layers attend to the whole sequence")
  layer_types = text.get("layer_types") or []
  if any(t != "full_attention" for t in layer_types):
    _refuse(prefix + "layer_types", sorted(set(layer_types)), "only 'full_attention' layers are supported")
  dropout = float(text.get("attention_dropout") or 0.0)
  if dropout:
    _refuse(prefix + "attention_dropout", dropout, "geojax trains without attention dropout; expected 0")


def _check_vision_fields(v: dict, model_type: str) -> None:
  from geojax.models.layers import ACTIVATIONS
  act = v.get("hidden_act", "quick_gelu" if model_type == "qwen2_vl" else "silu")
  if act not in ACTIVATIONS:
    _refuse("vision_config.hidden_act", act, f"geojax's vision blocks support {sorted(ACTIVATIONS)}")
  rope_type = (v.get("rope_parameters") or {}).get("rope_type", "axial")
  if rope_type != "axial":
    _refuse("vision_config.rope_parameters.rope_type", rope_type, "the vision tower's rotary positions are axial")
