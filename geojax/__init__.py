"""geojax: train vision-language models to geolocate photos with reinforcement learning, in JAX.

Subpackages, each depending only on those before it:
  geo       geodesy, gazetteer, Chain of Region, answer parsing, rewards and metrics
  data      image preprocessing, tokenization, chat prompts, batching, Grain pipelines, datasets
  models    Flax NNX Qwen2-VL / Qwen2.5-VL, Hugging Face import/export, sharding
  sampling  on-device generation with a KV cache
  rl, sft   GRPO and supervised fine-tuning
and the entry points `geojax.train`, `geojax.eval`, `geojax.export`.
"""

__version__ = "0.1.0"
