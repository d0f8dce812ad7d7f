"""save_hf -> transformers from_pretrained round trip, published-name loading, and key errors."""
import json
import os

import numpy as np
import pytest
import torch

from geojax.models import load_hf, save_hf
from geojax.models.safetensors_io import SafetensorsFile, write_file
from tests.models import tiny_hf
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
