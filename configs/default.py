"""The main job: a tiny Qwen2-VL-style model (random init) learns to geolocate the built-in map tiles.

SFT on the answer text, then GRPO with a distance reward, then evaluation on the held-out split; the metric
table is printed for the untrained model, after SFT and after GRPO. About 12.5 CPU-minutes (7.3 minutes wall)
on a 2-core CPU (README: The main job). Its settings are the defaults of every key (geojax/config_schema.py,
each with its reason); `--print_config` lists them.

  python -m geojax.train --config=configs/default.py            # the main job
  python -m geojax.train --config=configs/default.py:ci         # the whole path in ~1.5 CPU-minutes
  python -m geojax.train --config=configs/default.py --config.grpo.steps=50 --config.workdir=runs/x
  python -m geojax.train --config=configs/default.py --print_config
"""
import ml_collections

from geojax.config_schema import base_config


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  c = base_config()
  if variant == "ci":  # the same pipeline small enough for CI; enough SFT that its row is no longer all zeros
    c.workdir = "runs/default_ci"
    c.data.dir = "runs/builtin_data_ci"
    c.data.n_train = 256
    c.data.n_test = 32
    c.sft.steps = 150               # 20 left every answer unparsable; 150: ~15% within 750 km, median ~5,000 km
    c.sft.batch_size = 16
    c.grpo.steps = 4
    c.grpo.batch_size = 4
    c.grpo.group_size = 4
    c.eval.num_examples = 32
    c.eval.batch_size = 32
    c.checkpoint.every = 10
  elif variant:
    raise ValueError(f"unknown variant {variant!r} of configs/default.py (known: ci)")
  return c
