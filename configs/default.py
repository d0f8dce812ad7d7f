"""The main job: a tiny Qwen2-VL-style model (random init) learns to geolocate the built-in map tiles.

SFT on the answer text, then GRPO with a distance reward, then evaluation on the held-out split; the metric
table is printed for the untrained model, after SFT and after GRPO. Runs on a 2-core CPU in ~5-6 minutes.

  python -m geojax.train --config=configs/default.py            # the main job
  python -m geojax.train --config=configs/default.py:ci         # ~1-2 minute end-to-end check
  python -m geojax.train --config=configs/default.py --config.grpo.steps=50 --config.workdir=runs/x
"""
import ml_collections


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.workdir = "runs/default"
  c.stages = ("sft", "grpo")        # run in order; each resumes from its own checkpoints in workdir/<stage>
  c.eval_before = True              # evaluate the starting model too (the "untrained" row)

  c.runtime = ml_collections.ConfigDict()
  c.runtime.distributed = "auto"    # auto: jax.distributed when a coordinator is given (here or JAX_* env)
  c.runtime.coordinator_address = ""
  c.runtime.num_processes = 0
  c.runtime.process_id = -1
  c.runtime.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1})  # -1: all remaining devices
  c.runtime.matmul_precision = "default"

  c.model = ml_collections.ConfigDict()
  c.model.preset = "tiny"           # geojax.models.PRESETS name, used when hf_path is empty (random init)
  c.model.hf_path = ""              # a local Hugging Face directory (weights + tokenizer) to start from
  c.model.tokenizer = "tiny"        # "tiny" | "qwen2" | a local HF dir; defaults to hf_path when that is set
  c.model.dtype = "float32"         # compute dtype
  c.model.param_dtype = "float32"
  c.model.tiny = ml_collections.ConfigDict({"version": "qwen2_5_vl", "hidden_size": 128, "num_layers": 4,
                                            "vision_depth": 2})  # sizes of preset "tiny"

  c.data = ml_collections.ConfigDict()
  c.data.source = "builtin"         # builtin (built on first use into data.dir) | arrayrecord
  c.data.dir = "runs/builtin_data"
  c.data.n_train = 8000             # ~10-30 s to build; the tiny model needs many tiles per country to use the image
  c.data.n_test = 400
  c.data.sea_fraction = 0.1         # built-in data: share of open-sea tiles (not locatable)
  c.data.image_size = 56
  c.data.prompt = "coords"          # geojax.data.PROMPTS key
  c.data.answer = "latlon"          # answer format written by SFT targets and parsed for rewards/eval
  c.data.max_prompt_len = 96        # the prompt is 88 tokens (4 of them image tokens); one static length
  c.data.workers = 0                # Grain worker processes (0: in-process)
  c.data.min_pixels = 56 * 56
  c.data.decimals = 0               # "(49, 2)": ~55 km resolution; no near-random decimal digits diluting the loss
  c.data.max_pixels = 56 * 56

  c.sft = ml_collections.ConfigDict()
  c.sft.steps = 1000                # the image->place mapping is still improving fast at 600-900 steps
  c.sft.batch_size = 32
  c.sft.grad_accum = 1
  c.sft.lr = 3e-3
  c.sft.warmup_steps = 20
  c.sft.warmup_ratio = 0.0          # used instead of warmup_steps when > 0
  c.sft.schedule = "cosine"         # cosine | constant
  c.sft.min_lr_ratio = 0.1
  c.sft.weight_decay = 0.0
  c.sft.b1 = 0.9
  c.sft.b2 = 0.98
  c.sft.grad_clip = 1.0
  c.sft.freeze_vision = False
  c.sft.max_target_len = 16

  c.grpo = ml_collections.ConfigDict()
  c.grpo.steps = 100
  c.grpo.batch_size = 8             # prompts per step; each is sampled group_size times
  c.grpo.group_size = 8             # 8 x 8: more prompts per step, less noisy updates than 4 x 16
  c.grpo.grad_accum = 1
  c.grpo.lr = 1e-4                  # 2e-4 drifted below the (now much better) SFT model on seed 0
  c.grpo.warmup_steps = 5
  c.grpo.warmup_ratio = 0.0
  c.grpo.schedule = "constant"
  c.grpo.min_lr_ratio = 1.0
  c.grpo.weight_decay = 0.0
  c.grpo.b1 = 0.9
  c.grpo.b2 = 0.98
  c.grpo.grad_clip = 1.0
  c.grpo.freeze_vision = False
  c.grpo.temperature = 0.7          # rollouts near the greedy answer that evaluation scores
  c.grpo.top_k = 0
  c.grpo.top_p = 1.0
  c.grpo.max_new_tokens = 16
  c.grpo.beta = 0.04                # KL weight to the frozen reference (the model at the start of GRPO)
  c.grpo.kl = "k3"
  c.grpo.eps_low = 0.2
  c.grpo.eps_high = 0.2
  c.grpo.advantage = "grpo"
  c.grpo.agg = "sequence-mean-token-mean"
  c.grpo.dynamic_sampling = False  # DAPO: train on groups whose rewards differ, rolling out more batches to find them
  c.grpo.max_rollouts = 4          # rollouts per step at most with dynamic_sampling (short: uninformative groups fill)
  c.grpo.rewards = ml_collections.ConfigDict({"exp_distance": 1.0})
  c.grpo.reward_params = ml_collections.ConfigDict({"exp_distance": {"tau_km": 750.0}})  # exp(-d / 750 km)
  c.grpo.combine = "sum"            # sum | product of the weighted rewards
  c.grpo.reward_model = ""          # checkpoint of a locatability reward model (GLOBE); off when empty

  c.eval = ml_collections.ConfigDict()
  c.eval.split = "test"
  c.eval.num_examples = 0           # 0: the whole split
  c.eval.batch_size = 50
  c.eval.max_new_tokens = 16
  c.eval.every = 0                  # also evaluate every N steps during a stage (0: only at stage ends)
  c.eval.plot = True
  c.eval.at_stage_end = True        # evaluate after each stage (the table's rows)

  c.checkpoint = ml_collections.ConfigDict()
  c.checkpoint.every = 50
  c.checkpoint.keep = 2
  c.checkpoint.async_save = True

  c.log = ml_collections.ConfigDict()
  c.log.every = 10
  c.log.tensorboard = True
  c.log.progress = True

  if variant == "ci":  # the same pipeline, small enough for a CI end-to-end test
    c.workdir = "runs/default_ci"
    c.data.dir = "runs/builtin_data_ci"
    c.data.n_train = 256
    c.data.n_test = 32
    c.sft.steps = 20
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
