"""What the export tests compare: geojax's logits on two test records, in the batch transformers gets too."""
import numpy as np

from geojax import experiment
from geojax.data.batching import ExampleTransform


def two_test_records(config, tokenizer, model) -> tuple[dict, np.ndarray]:
  """The batch of the first two test records (coordinates prompt) and the model's logits on it."""
  records = experiment.load_records(config, "test")[:2]
  transform = ExampleTransform(tokenizer, prompt="coords", mode="sft", answer="latlon", min_pixels=56 * 56,
                               max_pixels=56 * 56)
  batch = transform.collate([transform(r) for r in records])
  ours = np.asarray(model(batch["input_ids"], batch["attention_mask"], batch["pixel_values"],
                          batch["image_grid_thw"], batch["position_ids"]))
  return batch, ours
