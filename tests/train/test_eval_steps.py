"""Evaluation scalars go to TensorBoard at the training step the model was evaluated at, not at 1, 2, 3."""
from geojax import runtime, train
from tests.train.helpers import tiny_config


def test_eval_scalars_are_logged_at_the_stage_step(tmp_path, builtin_dir, monkeypatch):
  written = []
  real_write = runtime.MetricWriter.write

  def record(self, step, scalars, prefix=""):
    written.append((prefix, step))
    return real_write(self, step, scalars, prefix)

  monkeypatch.setattr(runtime.MetricWriter, "write", record)
  config = tiny_config(str(tmp_path), builtin_dir, **{"eval_before": True, "eval.at_stage_end": True,
                                                      "log.tensorboard": True})
  train.train(config)
  evals = [(prefix, step) for prefix, step in written if prefix.startswith("eval/")]
  assert evals == [("eval/start/", 0), ("eval/sft/", config.sft.steps), ("eval/grpo/", config.grpo.steps)]
