"""GLOBE (arXiv 2506.14674): GRPO on Qwen2.5-VL-7B-Instruct with accuracy, visual-match and format rewards.

Settings from the paper: G=16, temperature 1.0, top_p 0.9, top_k 50, max completion 1024, KL beta 0.001, lr 1e-6,
warmup ratio 0.01, clip eps 0.2, one epoch over MP16-Reason train (33,721 samples). Rewards: accuracy 1,
visual match 0.5, format 1; the locatability reward (0.5) is on only when grpo.reward_model names a reward-model
checkpoint (a VLM scored P(yes)/(P(yes)+P(no)); GLOBE did not release theirs). Optional SFT stage
(`:sft` variant): lr 1e-5, 2 epochs, vision tower frozen. Every other key keeps its default
(geojax/config_schema.py); `--print_config` lists them all.

  python -m geojax.train --config=configs/globe.py --config.model.hf_path=/models/Qwen2.5-VL-7B-Instruct \
      --config.data.dir=/data/mp16_reason_arrayrecord
  python -m geojax.train --config=configs/globe.py:builtin     # the tiny model on the built-in data (README)

Variant `builtin` runs the whole pipeline on this machine: the main job's tiny model and data (configs/default.py),
CoT SFT on `<think>clues</think><answer>country: X\ncity: Y</answer>` (the record's clue entities as the reasoning:
a fifth of the tokens of its reasoning text; the short prompt `globe_short`), then GRPO with accuracy 1, visual
clues 0.5 and format 1, then the evaluation table, names geocoded offline to coordinates for the distance columns.
Locatability (0.5) joins when grpo.reward_model names a reward model; variant `locatability` trains one here, the
tiny model answering yes / no on the built-in `locatable` flag, and export makes it the directory the reward reads:

  python -m geojax.train --config=configs/globe.py:locatability
  python -m geojax.export --config=configs/globe.py:locatability --checkpoint=runs/globe_locatability/sft \
      --out=runs/globe_locatability/hf
  python -m geojax.train --config=configs/globe.py:builtin --config.grpo.reward_model=runs/globe_locatability/hf
"""
import ml_collections

from geojax.config_schema import base_config


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  c = base_config()
  c.workdir = "runs/globe"
  c.stages = ("grpo",)
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

  c.data.source = "arrayrecord"     # MP16-Reason records: reasoning text and clue entities per sample
  c.data.dir = ""                   # REQUIRED: holds train / test shards
  c.data.update(n_train=0, n_test=0, image_size=0)  # built-in data only
  c.data.prompt = "globe"
  c.data.answer = "globe"           # <think>...</think><answer>country: X\ncity: Y</answer>
  c.data.max_prompt_len = 512
  c.data.workers = 8
  c.data.decimals = 4
  c.data.max_pixels = 28 * 28 * 1280
  # Photos resized to five grids (1:1, 4:3, 3:4, 16:9, 9:16; at most 400 image tokens, so every prompt fits
  # max_prompt_len): each program compiles for five image shapes at most. `python -m geojax.plan` plans the largest.
  c.data.grid_buckets = ((40, 40), (34, 46), (46, 34), (30, 52), (52, 30))

  c.sft.steps = 1054                # 33,721 samples x 2 epochs / batch 64
  c.sft.batch_size = 64
  c.sft.lr = 1e-5
  c.sft.update(warmup_steps=0, warmup_ratio=0.03, min_lr_ratio=0.0, b2=0.999)
  c.sft.freeze_vision = True
  c.sft.max_target_len = 1024

  c.grpo.steps = 4215               # 33,721 prompts / 8 per step = one epoch
  c.grpo.batch_size = 8
  c.grpo.group_size = 16
  c.grpo.grad_accum = 2
  c.grpo.lr = 1e-6
  c.grpo.update(warmup_steps=0, warmup_ratio=0.01, schedule="cosine", min_lr_ratio=0.0, b2=0.999)
  c.grpo.update(temperature=1.0, top_k=50, top_p=0.9, max_new_tokens=1024)
  c.grpo.beta = 0.001
  c.grpo.rewards = ml_collections.ConfigDict({"globe_accuracy": 1.0, "globe_visual": 0.5, "globe_format": 1.0,
                                              "locatability": 0.5})  # locatability: only with reward_model
  # strict=True scores exactly as the release's reward code (README: where the papers and their code disagree)
  c.grpo.reward_params = ml_collections.ConfigDict({name: {"strict": False}
                                                    for name in ("globe_accuracy", "globe_visual", "globe_format")})

  c.eval.update(batch_size=64, max_new_tokens=1024, every=500)
  c.checkpoint.update(every=200, keep=3)

  for name in filter(None, variant.split(",")):
    if name == "sft":  # the optional SFT stage on the reasoning texts first
      c.stages = ("sft", "grpo")
    elif name == "builtin":
      _builtin(c)
    elif name == "locatability":
      _locatability(c)
    else:
      raise ValueError(f"unknown variant {name!r} of configs/globe.py (known: sft, builtin, locatability)")
  return c


def _tiny(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The main job's runtime, rollout, model, data, SFT, evaluation and checkpoint settings (every key's default)."""
  d = base_config()
  for section in ("runtime", "rollout", "model", "data", "sft", "eval", "checkpoint"):
    c[section] = d[section]
  c.eval_before = True
  return d


def _builtin(c: ml_collections.ConfigDict) -> None:
  """The tiny model on the built-in data with GLOBE's pipeline: CoT SFT, then GRPO with GLOBE's rewards and
  sampling settings (temperature 1.0, top-p 0.9, top-k 50, KL beta 0.001), G=8 x 8 prompts (the paper: 16)."""
  d = _tiny(c)
  c.workdir = "runs/globe_builtin"
  c.stages = ("sft", "grpo")
  c.data.update(prompt="globe_short", answer="globe", think="clues", max_prompt_len=92)
  c.sft.max_target_len = 80         # the longest clue answer is 78 tokens (median 61)
  rewards, params = c.grpo.rewards, c.grpo.reward_params
  c.grpo = d.grpo
  c.grpo.rewards, c.grpo.reward_params = rewards, params
  c.grpo.update(steps=100, temperature=1.0, top_p=0.9, top_k=50, beta=0.001, max_new_tokens=80)
  c.eval.max_new_tokens = 80


def _locatability(c: ml_collections.ConfigDict) -> None:
  """A locatability reward model for GLOBE: the tiny model, SFT to answer yes / no to LocatabilityReward's
  question on the built-in tiles (open sea: no). Export its checkpoint to get the grpo.reward_model directory."""
  _tiny(c)
  c.workdir = "runs/globe_locatability"
  c.stages = ("sft",)
  c.eval_before = False
  c.eval.at_stage_end = False
  c.data.update(prompt="locatability", answer="locatable", max_prompt_len=112)
  c.sft.update(steps=200, max_target_len=4)
