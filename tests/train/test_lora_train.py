"""LoRA / QLoRA training (SFT -> GRPO, rollouts in the decode layout): only the adapters train and are checkpointed,
the GRPO reference shares the frozen base, and a resumed run reproduces the uninterrupted one exactly (dropout
included)."""
import os
import shutil

import jax
import numpy as np
from flax import nnx

from geojax import experiment, train
from geojax.learners import GRPOLearner
from geojax.models import lora
from tests.train.helpers import losses, tiny_config
from tests.train.test_resume import _truncate_checkpoints

LORA = {"sft.steps": 2, "model.lora.rank": 4, "model.lora.alpha": 8.0, "model.lora.dropout": 0.1,
        "model.lora.targets": "all", "model.lora.quantize": "int8",
        "rollout.layout": "decode", "rollout.mesh.tensor": 2}  # rollouts sample the merged weights, split over 2


def _only_adapters(tree) -> bool:
  return all(isinstance(v, nnx.LoRAParam) for _, v in nnx.to_flat_state(tree))


def test_lora_trains_and_resumes_exactly(tmp_path, builtin_dir):
  full = str(tmp_path / "full")
  train.train(tiny_config(full, builtin_dir, **LORA))
  sft_full, grpo_full = losses(full, "sft"), losses(full, "grpo")
  assert sorted(grpo_full) == [1, 2, 3] and all(np.isfinite(list(sft_full.values())))

  resumed = str(tmp_path / "resumed")
  shutil.copytree(full, resumed)
  _truncate_checkpoints(resumed, "grpo", 1)
  os.remove(os.path.join(resumed, "grpo", "metrics.jsonl"))
  config = tiny_config(resumed, builtin_dir, **LORA)
  train.train(config)
  grpo_resumed = losses(resumed, "grpo")
  for step in (2, 3):
    np.testing.assert_allclose(grpo_resumed[step], grpo_full[step], rtol=1e-5, atol=1e-7)

  # the learner's state, its optimizer state and checkpoints hold the adapters only; the base is shared, not copied
  mesh = experiment.setup_runtime(config)
  tokenizer = experiment.load_tokenizer_for(config)
  with jax.set_mesh(mesh):
    model = experiment.build_model(config, tokenizer, mesh)
    learner = GRPOLearner.from_config(config, model, tokenizer, mesh, experiment.load_records(config, "train"))
    assert _only_adapters(learner.state["params"]) and _only_adapters(learner.reference.params)
    n_adapters = lora.count_trainable(model)
    assert sum(x.size for x in jax.tree.leaves(learner.state["opt_state"])) <= 2 * n_adapters + 8
    restored, _, _ = learner.checkpoints.restore({"params": learner.state["params"]}, data=False)
    assert sum(x.size for x in jax.tree.leaves(restored)) == n_adapters
    learner.close()
