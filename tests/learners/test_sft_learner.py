"""The SFT learner: its update is the whole batch's token mean whatever grad_accum is (answers of unequal
length put unequal token counts in the micro-batches)."""
import jax
import jax.numpy as jnp
import numpy as np

from geojax import experiment
from geojax.data.batch import put_batch
from geojax.learners import SFTLearner
from geojax.learners.sft import SFT_KEYS
from geojax.models import grid_tuple
from tests.train.helpers import assert_same_first_adam_step, tiny_config


def test_update_is_the_same_whatever_grad_accum(tmp_path, builtin_dir):
  results = {}
  for n in (1, 2, 4):
    config = tiny_config(str(tmp_path / str(n)), builtin_dir, **{"sft.grad_accum": n})
    mesh = experiment.setup_runtime(config)
    tokenizer = experiment.load_tokenizer_for(config)
    with jax.set_mesh(mesh):
      model = experiment.build_model(config, tokenizer, mesh)
      learner = SFTLearner.from_config(config, model, tokenizer, mesh, experiment.load_records(config, "train"))
      batch = next(learner.loader)
      counts = (np.asarray(batch["loss_mask"]) * np.asarray(batch["example_mask"])[:, None]).sum(axis=1)
      state = jax.tree.map(jnp.copy, learner.state)
      results[n] = learner.update(state, put_batch(batch, mesh, SFT_KEYS), grid_tuple(batch["image_grid_thw"]))
      learner.close()
  assert len(set(counts.reshape(4, -1).sum(axis=1).tolist())) > 1  # micro-batches of unequal token counts
  (one, m1) = results[1]
  for n in (2, 4):
    state, m = results[n]
    np.testing.assert_allclose(float(m["loss"]), float(m1["loss"]), rtol=1e-5)
    np.testing.assert_allclose(float(m["grad_norm"]), float(m1["grad_norm"]), rtol=1e-4)
    assert_same_first_adam_step(one, state, atol=2e-6)
