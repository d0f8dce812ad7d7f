"""`geojax.export` of a LoRA run: merged weights that transformers loads, and a PEFT adapter directory that peft
loads onto the base model, both with the logits of geojax's LoRA model."""
import os

import jax
import numpy as np
import pytest

from geojax import experiment, export, runtime
from geojax.models import lora, save_hf
from tests.eval.helpers import two_test_records
from tests.train.helpers import tiny_config

peft = pytest.importorskip("peft")


def _logits_torch(model, batch, image_pad_id):
  import torch
  with torch.no_grad():
    return model(input_ids=torch.as_tensor(batch["input_ids"], dtype=torch.long),
                 attention_mask=torch.as_tensor(batch["attention_mask"], dtype=torch.long),
                 pixel_values=torch.as_tensor(batch["pixel_values"]),
                 image_grid_thw=torch.as_tensor(batch["image_grid_thw"], dtype=torch.long),
                 mm_token_type_ids=torch.as_tensor(batch["input_ids"] == image_pad_id, dtype=torch.long)).logits.numpy()


def test_lora_export_merged_and_peft_adapter(tmp_path, builtin_dir):
  import torch
  from transformers import AutoModelForImageTextToText
  config = tiny_config(str(tmp_path / "run"), builtin_dir, **{"model.lora.rank": 4, "model.lora.alpha": 8.0})
  mesh = experiment.setup_runtime(config)
  tokenizer = experiment.load_tokenizer_for(config)
  with jax.set_mesh(mesh):
    model = experiment.build_model(config, tokenizer, mesh)
    save_hf(lora.merged_model(model), str(tmp_path / "base"))  # fresh adapters (B = 0): the base model
    rng = np.random.default_rng(0)
    lora.set_adapter_tensors(model, {k: (a + 0.2 * rng.standard_normal(a.shape), 0.2 * rng.standard_normal(b.shape))
                                     for k, (a, b) in lora.adapter_tensors(model).items()})
    _, adapters, _ = lora.split_params(model)
    checkpoints = runtime.Checkpointer(str(tmp_path / "run" / "grpo" / "checkpoints"))
    checkpoints.save(3, {"params": adapters})
    checkpoints.close()
  out = export.export(config, str(tmp_path / "run" / "grpo"), str(tmp_path / "hf"),
                      adapter_out=str(tmp_path / "adapter"))
  batch, ours = two_test_records(config, tokenizer, model)
  keep = np.asarray(batch["attention_mask"], bool)
  merged = AutoModelForImageTextToText.from_pretrained(out, dtype=torch.float32).eval()
  base = AutoModelForImageTextToText.from_pretrained(str(tmp_path / "base"), dtype=torch.float32)
  with_adapter = peft.PeftModel.from_pretrained(base, str(tmp_path / "adapter")).eval()
  assert os.path.exists(tmp_path / "adapter" / "adapter_model.safetensors")
  for theirs in (_logits_torch(merged, batch, tokenizer.image_pad_id),
                 _logits_torch(with_adapter, batch, tokenizer.image_pad_id)):
    np.testing.assert_allclose(ours[keep], theirs[keep], atol=5e-4 * np.abs(theirs[keep]).max())
