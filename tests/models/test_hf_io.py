"""save_hf -> transformers from_pretrained round trip, published-name loading, and key errors."""
import json
import os

import numpy as np
import pytest
import torch

from geojax.models import load_hf, save_hf
from geojax.models.safetensors_io import SafetensorsFile, write_file
from tests.models.test_qwen_vl import CASES, forward, hf_logits, make_batch


def _hf_class(version):
  from transformers import Qwen2_5_VLForConditionalGeneration, Qwen2VLForConditionalGeneration
  return Qwen2VLForConditionalGeneration if version == "qwen2_vl" else Qwen2_5_VLForConditionalGeneration


@pytest.mark.parametrize("version,tie", [("qwen2_vl", False), ("qwen2_5_vl", False), ("qwen2_5_vl", True)])
def test_export_loads_in_transformers_with_equal_logits(hf_checkpoint, rng, tmp_path, version, tie):
  hf, path = hf_checkpoint(version, tie=tie)
  save_hf(load_hf(path), str(tmp_path))
  assert {"config.json", "generation_config.json", "model.safetensors.index.json"} <= set(os.listdir(tmp_path))
  reloaded, info = _hf_class(version).from_pretrained(str(tmp_path), output_loading_info=True)
  assert not info["missing_keys"] and not info["unexpected_keys"], info
  ids, mask, pixels, grids = make_batch(rng, CASES["two_images_one_row"])
  want = hf_logits(hf, ids, mask, pixels, grids)
  got = hf_logits(reloaded.eval(), ids, mask, pixels, grids)
  assert np.abs(got - want).max() <= 1e-6 * np.abs(want).max()


def test_sharded_export_and_published_names(hf_checkpoint, rng, tmp_path):
  """Several shards, and transformers-5 in-memory tensor names (model.visual.*, model.language_model.*)."""
  hf, path = hf_checkpoint("qwen2_5_vl")
  model = load_hf(path)
  save_hf(model, str(tmp_path / "sharded"), max_shard_bytes=20_000)
  assert len([f for f in os.listdir(tmp_path / "sharded") if f.endswith(".safetensors")]) > 1
  legacy = tmp_path / "legacy"
  legacy.mkdir()
  src = SafetensorsFile(os.path.join(path, "model.safetensors"))
  old = lambda k: "model." + k if k.startswith("visual.") else k.replace("model.", "model.language_model.", 1)
  write_file(str(legacy / "model.safetensors"), {old(k): np.asarray(src.tensor(k)) for k in src.keys()})
  with open(os.path.join(path, "config.json")) as f:
    (legacy / "config.json").write_text(f.read())
  ids, mask, pixels, grids = make_batch(rng, CASES["one_image"])
  want = forward(model, ids, mask, pixels, grids)
  for other in (tmp_path / "sharded", legacy):
    np.testing.assert_array_equal(forward(load_hf(str(other)), ids, mask, pixels, grids), want)


def test_missing_and_unexpected_tensors_are_named(hf_checkpoint, tmp_path):
  _, path = hf_checkpoint("qwen2_vl")
  src = SafetensorsFile(os.path.join(path, "model.safetensors"))
  tensors = {k: np.asarray(src.tensor(k)) for k in src.keys()}
  tensors.pop("model.norm.weight")
  tensors["model.extra.weight"] = np.zeros(3, np.float32)
  write_file(str(tmp_path / "model.safetensors"), tensors)
  with open(os.path.join(path, "config.json")) as f:
    (tmp_path / "config.json").write_text(f.read())
  with pytest.raises(ValueError, match=r"missing tensors \['model.norm.weight'\].*model.extra.weight"):
    load_hf(str(tmp_path))


def test_config_round_trip(hf_checkpoint):
  from geojax.models import QwenVLConfig
  for version in ("qwen2_vl", "qwen2_5_vl"):
    _, path = hf_checkpoint(version)
    with open(os.path.join(path, "config.json")) as f:
      config = QwenVLConfig.from_hf(json.load(f))
    assert QwenVLConfig.from_hf(config.to_hf()) == config


def test_bfloat16_checkpoints_load_and_export(hf_checkpoint, rng, tmp_path):
  """Published checkpoints are bfloat16 safetensors; exports may be too."""
  import ml_dtypes
  hf, _ = hf_checkpoint("qwen2_5_vl")
  bf16_dir, out_dir = tmp_path / "bf16", tmp_path / "out"
  hf_bf16 = _hf_class("qwen2_5_vl")(hf.config).eval()
  hf_bf16.load_state_dict(hf.state_dict())
  hf_bf16.to(torch.bfloat16).save_pretrained(str(bf16_dir))
  hf_rounded = _hf_class("qwen2_5_vl")(hf.config).eval()  # bf16-rounded weights, float32 buffers and compute
  hf_rounded.load_state_dict({k: v.to(torch.float32) for k, v in hf_bf16.state_dict().items()})
  model = load_hf(str(bf16_dir))
  ids, mask, pixels, grids = make_batch(rng, CASES["one_image"])
  want = hf_logits(hf_rounded, ids, mask, pixels, grids)
  assert np.abs(forward(model, ids, mask, pixels, grids) - want).max() <= 1e-5 * np.abs(want).max()
  save_hf(model, str(out_dir), dtype=ml_dtypes.bfloat16)
  assert json.loads((out_dir / "config.json").read_text())["dtype"] == "bfloat16"
  reloaded, info = _hf_class("qwen2_5_vl").from_pretrained(str(out_dir), output_loading_info=True,
                                                            dtype=torch.float32)  # f32 rotary buffers
  assert not info["missing_keys"] and not info["unexpected_keys"]
  got = hf_logits(reloaded.eval(), ids, mask, pixels, grids)
  assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()


# config.json of the published checkpoints (flat text fields, rope_scaling), as on the hub.
QWEN2_5_VL_7B_CONFIG = {
    "architectures": ["Qwen2_5_VLForConditionalGeneration"], "attention_dropout": 0.0, "bos_token_id": 151643,
    "eos_token_id": 151645, "vision_start_token_id": 151652, "vision_end_token_id": 151653,
    "vision_token_id": 151654, "image_token_id": 151655, "video_token_id": 151656, "hidden_act": "silu",
    "hidden_size": 3584, "initializer_range": 0.02, "intermediate_size": 18944, "max_position_embeddings": 128000,
    "max_window_layers": 28, "model_type": "qwen2_5_vl", "num_attention_heads": 28, "num_hidden_layers": 28,
    "num_key_value_heads": 4, "rms_norm_eps": 1e-06, "rope_theta": 1000000.0, "sliding_window": 32768,
    "tie_word_embeddings": False, "torch_dtype": "bfloat16", "transformers_version": "4.41.2", "use_cache": True,
    "use_sliding_window": False,
    "vision_config": {"depth": 32, "hidden_act": "silu", "hidden_size": 1280, "intermediate_size": 3420,
                      "num_heads": 16, "in_chans": 3, "out_hidden_size": 3584, "patch_size": 14,
                      "spatial_merge_size": 2, "spatial_patch_size": 14, "window_size": 112,
                      "fullatt_block_indexes": [7, 15, 23, 31], "tokens_per_second": 2, "temporal_patch_size": 2},
    "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]}, "vocab_size": 152064,
}
QWEN2_VL_2B_CONFIG = {
    "architectures": ["Qwen2VLForConditionalGeneration"], "attention_dropout": 0.0, "bos_token_id": 151643,
    "eos_token_id": 151645, "vision_start_token_id": 151652, "vision_end_token_id": 151653,
    "vision_token_id": 151654, "image_token_id": 151655, "video_token_id": 151656, "hidden_act": "silu",
    "hidden_size": 1536, "initializer_range": 0.02, "intermediate_size": 8960, "max_position_embeddings": 32768,
    "max_window_layers": 28, "model_type": "qwen2_vl", "num_attention_heads": 12, "num_hidden_layers": 28,
    "num_key_value_heads": 2, "rms_norm_eps": 1e-06, "rope_theta": 1000000.0, "sliding_window": 32768,
    "tie_word_embeddings": True, "torch_dtype": "bfloat16", "transformers_version": "4.41.2", "use_cache": True,
    "use_sliding_window": False,
    "vision_config": {"depth": 32, "embed_dim": 1280, "mlp_ratio": 4, "num_heads": 16, "in_chans": 3,
                      "hidden_size": 1536, "patch_size": 14, "spatial_merge_size": 2, "spatial_patch_size": 14,
                      "temporal_patch_size": 2},
    "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]}, "vocab_size": 151936,
}


@pytest.mark.parametrize("name,published", [("qwen2.5-vl-7b", QWEN2_5_VL_7B_CONFIG),
                                            ("qwen2-vl-2b", QWEN2_VL_2B_CONFIG)])
def test_published_flat_configs_match_presets(name, published):
  from transformers import AutoConfig

  from geojax.models import PRESETS, QwenVLConfig
  ours = QwenVLConfig.from_hf(published)
  preset = PRESETS[name].replace(remat_policy="none")
  assert ours.text == preset.text and ours.vision == preset.vision
  # our nested export reads back in transformers as the same architecture
  hf = AutoConfig.for_model(**ours.to_hf())
  assert hf.text_config.hidden_size == published["hidden_size"]
  assert hf.vision_config.depth == 32 and hf.image_token_id == 151655
