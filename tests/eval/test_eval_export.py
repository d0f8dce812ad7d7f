"""Evaluation outputs (JSONL, table, map) and the export of a checkpoint to a directory transformers loads."""
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx

from geojax import evaluation, experiment
from geojax import export, runtime
from tests.eval.helpers import two_test_records
from tests.train.helpers import DEFAULT_CONFIG, ROOT, tiny_config, tiny_overrides


@pytest.fixture(scope="module")
def stage_dir(tmp_path_factory, builtin_dir):
  """A stage directory as geojax.train writes it, holding a randomly initialized tiny model at step 7."""
  workdir = str(tmp_path_factory.mktemp("run"))
  config = tiny_config(workdir, builtin_dir)
  mesh = experiment.setup_runtime(config)
  tokenizer = experiment.load_tokenizer_for(config)
  model = experiment.build_model(config, tokenizer, mesh)
  params = nnx.state(model, nnx.Param)
  params = jax.tree.map(lambda x: x + 0.02 * jax.random.normal(jax.random.key(1), x.shape, x.dtype), params)
  path = os.path.join(workdir, "grpo")
  checkpoints = runtime.Checkpointer(os.path.join(path, "checkpoints"))
  checkpoints.save(7, {"params": params})
  checkpoints.close()
  return config, path, nnx.merge(nnx.graphdef(model), params), tokenizer


def test_evaluate_writes_predictions_table_and_map(tmp_path, builtin_dir, stage_dir):
  config, _, model, tokenizer = stage_dir
  records = experiment.load_records(config, "test")
  with config.unlocked():
    config.eval.plot = True
  out = str(tmp_path / "eval")
  result = evaluation.evaluate(model, tokenizer, records, config, out, "tiny", num_examples=8)
  assert result["n"] == 8
  rows = [json.loads(line) for line in open(os.path.join(out, "predictions.jsonl"))]
  assert len(rows) == 8
  assert {"id", "true_lat", "true_lon", "pred_lat", "pred_lon", "distance_km", "country", "reasoning",
          "completion"} <= set(rows[0])
  assert [r["true_lat"] for r in rows] == pytest.approx([r["lat"] for r in records[:8]], abs=1e-4)
  table = open(os.path.join(out, "table.md")).read()
  assert "750 km" in table and "median km" in table and "| tiny |" in table
  assert json.load(open(os.path.join(out, "metrics.json")))["n"] == 8
  with open(os.path.join(out, "map.png"), "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_export_loads_in_transformers_with_equal_logits(tmp_path, builtin_dir, stage_dir):
  import torch
  from transformers import AutoModelForImageTextToText
  config, path, model, tokenizer = stage_dir
  out = export.export(config, path, str(tmp_path / "hf"))
  hf = AutoModelForImageTextToText.from_pretrained(out, dtype=torch.float32).eval()
  batch, ours = two_test_records(config, tokenizer, model)
  with torch.no_grad():
    theirs = hf(input_ids=torch.as_tensor(batch["input_ids"], dtype=torch.long),
                attention_mask=torch.as_tensor(batch["attention_mask"], dtype=torch.long),
                pixel_values=torch.as_tensor(batch["pixel_values"]),
                image_grid_thw=torch.as_tensor(batch["image_grid_thw"], dtype=torch.long),
                mm_token_type_ids=torch.as_tensor(batch["input_ids"] == tokenizer.image_pad_id, dtype=torch.long),
                ).logits.numpy()
  keep = np.asarray(batch["attention_mask"], bool)
  np.testing.assert_allclose(ours[keep], theirs[keep], atol=1e-4 * np.abs(theirs[keep]).max())
  assert os.path.exists(os.path.join(out, "tokenizer.json"))


def test_eval_command_line_on_a_checkpoint(tmp_path, builtin_dir, stage_dir):
  _, path, _, _ = stage_dir
  out = str(tmp_path / "cli")
  args = [f"--config.{o}" for o in tiny_overrides(str(tmp_path / "w"), builtin_dir)]
  proc = subprocess.run([sys.executable, "-m", "geojax.eval", f"--config={DEFAULT_CONFIG}:ci", *args,
                         "--config.eval.plot=true", f"--checkpoint={path}", f"--out={out}", "--num_examples=4"],
                        cwd=ROOT,
                        env=dict(os.environ, JAX_PLATFORMS="cpu"), capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "| grpo step 7 |" in proc.stdout
  assert sum(1 for _ in open(os.path.join(out, "predictions.jsonl"))) == 4
  assert os.path.exists(os.path.join(out, "map.png"))
