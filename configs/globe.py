"""GLOBE (arXiv 2506.14674): GRPO on Qwen2.5-VL-7B-Instruct with accuracy, visual-match and format rewards.

Settings from the paper: G=16, temperature 1.0, top_p 0.9, top_k 50, max completion 1024, KL beta 0.001, lr 1e-6,
warmup ratio 0.01, clip eps 0.2, one epoch over MP16-Reason train (33,721 samples). Rewards: accuracy 1,
visual match 0.5, format 1; the locatability reward (0.5) is on only when grpo.reward_model names a reward-model
checkpoint (a VLM scored P(yes)/(P(yes)+P(no)); GLOBE did not release theirs). Optional SFT stage
(`:sft` variant): lr 1e-5, 2 epochs, vision tower frozen.

  python -m geojax.train --config=configs/globe.py --config.model.hf_path=/models/Qwen2.5-VL-7B-Instruct \
      --config.data.dir=/data/mp16_reason_arrayrecord
"""
import ml_collections


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.workdir = "runs/globe"
  c.stages = ("grpo",)
  c.eval_before = False

  c.runtime = ml_collections.ConfigDict()
  c.runtime.distributed = "auto"
  c.runtime.coordinator_address = ""
  c.runtime.num_processes = 0
  c.runtime.process_id = -1
  c.runtime.mesh = ml_collections.ConfigDict({"data": 1, "fsdp": -1, "tensor": 1})
  c.runtime.matmul_precision = "default"

  c.model = ml_collections.ConfigDict()
  c.model.preset = "qwen2.5-vl-7b"
  c.model.hf_path = ""              # REQUIRED: local Qwen2.5-VL-7B-Instruct directory
  c.model.tokenizer = ""
  c.model.dtype = "bfloat16"
  c.model.param_dtype = "float32"
  c.model.tiny = ml_collections.ConfigDict({"version": "qwen2_5_vl", "hidden_size": 128, "num_layers": 4,
                                            "vision_depth": 2})  # sizes of preset "tiny"

  c.data = ml_collections.ConfigDict()
  c.data.source = "arrayrecord"     # MP16-Reason records: reasoning text and clue entities per sample
  c.data.dir = ""
  c.data.n_train = 0
  c.data.n_test = 0
  c.data.sea_fraction = 0.1         # built-in data: share of open-sea tiles (not locatable)
  c.data.image_size = 0
  c.data.prompt = "globe"
  c.data.answer = "globe"           # <think>...</think><answer>country: X\ncity: Y</answer>
  c.data.max_prompt_len = 512
  c.data.workers = 8
  c.data.min_pixels = 56 * 56
  c.data.decimals = 4                # digits of the coordinates in answer texts
  c.data.max_pixels = 28 * 28 * 1280

  c.sft = ml_collections.ConfigDict()
  c.sft.steps = 1054                # 33,721 samples x 2 epochs / batch 64
  c.sft.batch_size = 64
  c.sft.grad_accum = 1
  c.sft.lr = 1e-5
  c.sft.warmup_steps = 0
  c.sft.warmup_ratio = 0.03
  c.sft.schedule = "cosine"
  c.sft.min_lr_ratio = 0.0
  c.sft.weight_decay = 0.0
  c.sft.b1 = 0.9
  c.sft.b2 = 0.999
  c.sft.grad_clip = 1.0
  c.sft.freeze_vision = True
  c.sft.max_target_len = 1024

  c.grpo = ml_collections.ConfigDict()
  c.grpo.steps = 4215               # 33,721 prompts / 8 per step = one epoch
  c.grpo.batch_size = 8
  c.grpo.group_size = 16
  c.grpo.grad_accum = 2
  c.grpo.lr = 1e-6
  c.grpo.warmup_steps = 0
  c.grpo.warmup_ratio = 0.01
  c.grpo.schedule = "cosine"
  c.grpo.min_lr_ratio = 0.0
  c.grpo.weight_decay = 0.0
  c.grpo.b1 = 0.9
  c.grpo.b2 = 0.999
  c.grpo.grad_clip = 1.0
  c.grpo.freeze_vision = False
  c.grpo.temperature = 1.0
  c.grpo.top_k = 50
  c.grpo.top_p = 0.9
  c.grpo.max_new_tokens = 1024
  c.grpo.beta = 0.001
  c.grpo.kl = "k3"
  c.grpo.eps_low = 0.2
  c.grpo.eps_high = 0.2
  c.grpo.advantage = "grpo"
  c.grpo.agg = "sequence-mean-token-mean"
  c.grpo.dynamic_sampling = False  # DAPO: train on groups whose rewards differ, rolling out more batches to find them
  c.grpo.max_rollouts = 4          # rollouts per step at most with dynamic_sampling (short: uninformative groups fill)
  c.grpo.rewards = ml_collections.ConfigDict({"globe_accuracy": 1.0, "globe_visual": 0.5, "globe_format": 1.0,
                                              "locatability": 0.5})  # locatability: only with reward_model
  c.grpo.reward_params = ml_collections.ConfigDict()  # per-reward keyword arguments, e.g. exp_distance.tau_km
  c.grpo.combine = "sum"
  c.grpo.reward_model = ""          # local HF dir of a locatability VLM; empty turns that reward off

  c.eval = ml_collections.ConfigDict()
  c.eval.split = "test"
  c.eval.num_examples = 0
  c.eval.batch_size = 64
  c.eval.max_new_tokens = 1024
  c.eval.every = 500
  c.eval.plot = True
  c.eval.at_stage_end = True        # evaluate after each stage (the table's rows)

  c.checkpoint = ml_collections.ConfigDict()
  c.checkpoint.every = 200
  c.checkpoint.keep = 3
  c.checkpoint.async_save = True

  c.log = ml_collections.ConfigDict()
  c.log.every = 10
  c.log.tensorboard = True
  c.log.progress = True

  if variant == "sft":  # the optional SFT stage on the reasoning texts first
    c.stages = ("sft", "grpo")
  elif variant:
    raise ValueError(f"unknown variant {variant!r} of configs/globe.py (known: sft)")
  return c
