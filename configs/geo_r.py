"""Geo-R (arXiv 2601.00388): Chain-of-Region SFT, then GRPO with the distance reward, on Qwen2.5-VL-7B.

Settings from the paper and its released code (see the README's recipe notes): SFT AdamW lr 1e-5, batch 64, one
epoch; GRPO G=4, KL beta 0.04 (k3), clip eps 0.2, lr 1e-6, temperature 0.9, top_k 50, top_p 1.0, max prompt 512,
max completion 256, one policy update per rollout, bf16; reward = distance (code version, 750/3000 km) + format.
Every other key keeps its default (geojax/config_schema.py); `--print_config` lists them all.

  python -m geojax.train --config=configs/geo_r.py --config.model.hf_path=/models/Qwen2.5-VL-7B-Instruct \
      --config.data.dir=/data/mp16_pro_arrayrecord
  python -m geojax.train --config=configs/geo_r.py:builtin     # the tiny model on the built-in data (README)

Variant `builtin` runs the whole pipeline on this machine: the main job's tiny model and data (configs/default.py),
Chain-of-Region SFT (whole-degree coordinates, the short prompt `geo_r_short`), hard-sample mining (the SFT model
predicts 2,000 train tiles; those it places within 200 km are hotspots; GRPO drops every tile within 200 km of one),
GRPO with the distance (code version) and format rewards, and the evaluation table.
"""
import ml_collections

from geojax.config_schema import base_config


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  c = base_config()
  c.workdir = "runs/geo_r"
  c.eval_before = False
  c.runtime.mesh.update(data=1, fsdp=-1)  # FSDP over all devices
  # Rollouts sample from a bfloat16 copy split over heads / MLP / vocabulary on 4 chips (rows over the rest), so
  # the decode loop gathers no weight: `python -m geojax.plan` compiles it (BENCHMARKS.md: TPU plan)
  c.rollout.layout = "decode"
  c.rollout.mesh.update(data=-1, fsdp=1, tensor=4)

  c.model.preset = "qwen2.5-vl-7b"
  c.model.hf_path = ""              # REQUIRED: local Qwen2.5-VL-7B-Instruct directory
  c.model.tokenizer = ""            # empty: the tokenizer in hf_path
  c.model.dtype = "bfloat16"

  c.data.source = "arrayrecord"     # records in the geojax.data schema; Chain-of-Region labels from GPS
  c.data.dir = ""                   # REQUIRED: holds train / test shards
  c.data.update(n_train=0, n_test=0, image_size=0)  # built-in data only
  c.data.prompt = "geo_r"
  c.data.answer = "chain"           # Country / State / City / Coordinates
  c.data.max_prompt_len = 512
  c.data.workers = 8
  c.data.decimals = 4
  c.data.max_pixels = 28 * 28 * 1280
  # Photos resized to five grids (1:1, 4:3, 3:4, 16:9, 9:16; at most 400 image tokens, so every prompt fits
  # max_prompt_len): each program compiles for five image shapes at most. `python -m geojax.plan` plans the largest.
  c.data.grid_buckets = ((40, 40), (34, 46), (46, 34), (30, 52), (52, 30))

  c.sft.steps = 7813                # 500K samples / batch 64 = one epoch
  c.sft.batch_size = 64
  c.sft.lr = 1e-5
  c.sft.update(warmup_steps=0, warmup_ratio=0.03, min_lr_ratio=0.0, b2=0.999)
  c.sft.max_target_len = 256

  c.grpo.steps = 12500              # 200K hard samples / 16 prompts per step = one epoch
  c.grpo.batch_size = 16
  c.grpo.group_size = 4
  c.grpo.lr = 1e-6
  c.grpo.beta = 0.04
  c.grpo.update(warmup_steps=0, b2=0.999)
  c.grpo.update(temperature=0.9, top_k=50, max_new_tokens=256)
  # The released code sums the distance reward (750/3000 km) and a format reward. Its format regex never
  # matched a coordinate (a known defect), so ours checks the documented "(lat, lon)" answer instead. The
  # paper's reward is the variant `:paper`: distance (750/2500 km) x format.
  c.grpo.rewards = ml_collections.ConfigDict({"geo_r_distance": 1.0, "geo_r_format": 1.0})
  # strict=True scores exactly as the release's reward code (README: where the papers and their code disagree)
  c.grpo.reward_params = ml_collections.ConfigDict({"geo_r_distance": {"strict": False},
                                                    "geo_r_format": {"strict": False}})

  c.eval.update(batch_size=64, max_new_tokens=256, every=1000)
  c.checkpoint.update(every=500, keep=3)

  for name in filter(None, variant.split(",")):  # e.g. configs/geo_r.py:3b,paper
    if name == "3b":  # the model of the released RL script
      c.model.preset = "qwen2.5-vl-3b"
    elif name == "builtin":
      _builtin(c)
    elif name == "paper":  # the paper's reward: distance with 750/2500 km breakpoints, times format
      c.grpo.rewards = ml_collections.ConfigDict({"geo_r_distance_paper": 1.0, "geo_r_format": 1.0})
      c.grpo.reward_params = ml_collections.ConfigDict({"geo_r_distance_paper": {"strict": False},
                                                        "geo_r_format": {"strict": False}})
      c.grpo.combine = "product"
    else:
      raise ValueError(f"unknown variant {name!r} of configs/geo_r.py (known: 3b, paper, builtin)")
  return c


def _builtin(c: ml_collections.ConfigDict) -> None:
  """The tiny model on the built-in data: the main job's model, data and optimizer settings (every key's default),
  with Geo-R's answers, mining and rewards, and its sampling settings (G=4, temperature 0.9, top-k 50)."""
  d = base_config()
  for section in ("runtime", "rollout", "model", "data", "sft", "eval", "checkpoint"):
    c[section] = d[section]
  c.workdir = "runs/geo_r_builtin"
  c.eval_before = True
  c.data.update(prompt="geo_r_short", answer="chain", max_prompt_len=100, decimals=0)
  c.sft.max_target_len = 48         # 99% of the chain answers fit (median 30 tokens)
  c.mining.update(radius_km=200.0, num_examples=2000)
  rewards, params = c.grpo.rewards, c.grpo.reward_params
  c.grpo = d.grpo
  c.grpo.rewards, c.grpo.reward_params = rewards, params
  c.grpo.update(steps=100, beta=0.04, group_size=4, batch_size=16, temperature=0.9, top_k=50, max_new_tokens=48)
  c.eval.max_new_tokens = 48
