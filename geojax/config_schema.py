"""Every config key: its default, a one-line description, and `validate`, the start-up check of a whole config.

`base_config()` is the main job (configs/default.py); the recipes in configs/ start from it and override only
what differs. `describe` and `format_config` give each key's description (`--print_config` prints them).
`validate(config)` is what every entry point runs before any work: it rejects a bad value naming its key.
"""
from __future__ import annotations

import copy
import inspect
import os
from typing import Any, Iterator

import ml_collections

from geojax.config import ConfigError, check_choice, check_range, get


def _optimizer(*, lr: float, warmup_steps: int, schedule: str, min_lr_ratio: float) -> dict[str, Any]:
  """The optimizer and schedule keys SFT and GRPO share, with their stage's defaults."""
  return {
      "lr": (lr, "peak AdamW learning rate"),
      "warmup_steps": (warmup_steps, "linear warmup steps"),
      "warmup_ratio": (0.0, "warmup as a fraction of the steps, used instead of warmup_steps when > 0"),
      "schedule": (schedule, "learning-rate decay after warmup: cosine | linear | constant"),
      "min_lr_ratio": (min_lr_ratio, "final learning rate as a fraction of lr"),
      "weight_decay": (0.0, "AdamW decoupled weight decay"),
      "b1": (0.9, "AdamW beta1"),
      "b2": (0.98, "AdamW beta2"),
      "grad_clip": (1.0, "global gradient-norm clip (0: off)"),
      "freeze_vision": (False, "train only the language model, not the vision tower"),
  }


# A section is a dict; a key is (default, description); a dict default is an open map (its keys vary by config).
# The defaults are the main job's settings; comments give the reasons for the tuned ones.
_SCHEMA: dict[str, Any] = {
    "seed": (0, "PRNG seed of the model init, data order and sampling"),
    "workdir": ("runs/default", "checkpoints (<workdir>/<stage>), evaluations, results.md and TensorBoard logs"),
    "stages": (("sft", "grpo"), "stages run in order; each resumes from its checkpoints, a finished one is skipped"),
    "eval_before": (True, "evaluate the starting model too (the 'untrained' / 'base' row)"),
    "runtime": {
        "distributed": ("auto", "auto | on | off: jax.distributed (auto: when a coordinator is given here or JAX_*)"),
        "coordinator_address": ("", "host:port of process 0 for jax.distributed (empty: JAX_COORDINATOR_ADDRESS)"),
        "num_processes": (0, "processes of a multi-host run (0: JAX_NUM_PROCESSES or auto-detect)"),
        "process_id": (-1, "this process's index (-1: JAX_PROCESS_ID or auto-detect)"),
        "mesh": {
            "data": (-1, "devices on the data-parallel mesh axis (-1: all remaining devices)"),
            "fsdp": (1, "devices on the FSDP axis, which shards parameters and optimizer state (-1: remaining)"),
            "tensor": (1, "devices on the tensor-parallel axis (-1: remaining)"),
        },
        "matmul_precision": ("default", "default | high | highest | bfloat16: jax_default_matmul_precision"),
        "compilation_cache_dir": ("~/.cache/geojax/jax_cache", "JAX's persistent compilation cache: a second run "
                                  "loads its programs instead of compiling them (GRPO's first step); empty: off"),
        "keep_freed_memory": ("auto", "auto | on | off: glibc malloc keeps freed memory for reuse instead of mapping "
                              "fresh pages for every large buffer (XLA:CPU's per-step buffers; the process keeps its "
                              "peak); auto: on when the devices are CPUs (geojax.runtime.keep_freed_memory)"),
    },
    "model": {
        "preset": ("tiny", "architecture: a geojax.models.PRESETS name, or tiny (random init sized by model.tiny)"),
        "hf_path": ("", "local Hugging Face directory (weights + tokenizer) to start from; empty: random init"),
        "tokenizer": ("tiny", "tiny | qwen2 | a local HF directory; empty: the tokenizer in model.hf_path"),
        "dtype": ("float32", "compute dtype: float32 | bfloat16 | float16"),
        "param_dtype": ("float32", "dtype the parameters and optimizer state are kept in"),
        "attention": ("auto", "attention backend: auto (splash on TPU, cudnn on GPU, else blockwise) | blockwise "
                      "(online softmax in XLA, memory linear in length) | xla (dense scores) | cudnn | splash"),
        "tiny": {
            "version": ("qwen2_5_vl", "architecture of preset tiny: qwen2_5_vl | qwen2_vl"),
            "hidden_size": (128, "text hidden size of preset tiny"),
            "num_layers": (4, "decoder layers of preset tiny"),
            "vision_depth": (2, "vision blocks of preset tiny"),
        },
        "lora": {
            "rank": (0, "LoRA rank: train low-rank adapters on the frozen base instead of every weight; 0: off"),
            "alpha": (32.0, "LoRA alpha: the adapters' output is scaled by alpha / rank (as peft's lora_alpha)"),
            "dropout": (0.0, "dropout on the adapters' input in the training losses (not sampling, not the reference)"),
            "targets": ("text", "modules with adapters: text (the decoder's q/k/v/o/gate/up/down projections) | "
                        "vision (the vision blocks') | all | a regex over module paths "
                        "(per layer, full match: language_model/layers/0/self_attn/q_proj; the layers are one scanned "
                        "stack, so a regex matches all of a stack's layers or none)"),
            "quantize": ("none", "QLoRA: the frozen base of the targeted modules quantized by qwix: none | int8 | nf4"),
            "init_from": ("", "a PEFT LoRA adapter directory (adapter_config.json + adapter_model.safetensors) to "
                          "start the adapters from; its r and lora_alpha must equal rank and alpha"),
        },
    },
    "data": {
        "source": ("builtin", "builtin (map tiles, built into data.dir on first use) | arrayrecord (data.dir shards)"),
        "dir": ("runs/builtin_data", "dataset directory: <split>-*-of-*.array_record shards, or the built-in data"),
        # ~10-30 s to build; the tiny model needs many tiles per country to use the image
        "n_train": (8000, "built-in data: train examples (~10-30 s to build 8000)"),
        "n_test": (400, "built-in data: test examples"),
        "sea_fraction": (0.1, "built-in data: share of open-sea tiles (not locatable)"),
        "image_size": (56, "built-in data: tile side in pixels, a multiple of 28"),
        "prompt": ("coords", "chat prompt: a geojax.data.chat.PROMPTS name"),
        "answer": ("latlon", "answer format of SFT targets, parsed for rewards and eval: latlon | chain | globe "
                   "(| locatable: yes / no, to train a locatability reward model with SFT only)"),
        "think": ("reasoning", "globe answers' <think> text: reasoning (the record's) | clues (its clue entities, "
                  "comma-separated: a fifth of the tokens)"),
        # the coords prompt is 88 tokens, 4 of them image tokens
        "max_prompt_len": (96, "prompt tokens with image tokens, one static length (a longer prompt is a bad record)"),
        "workers": (0, "Grain worker processes (0: in-process)"),
        # "(49, 2)": ~55 km resolution; no near-random decimal digits diluting the loss
        "decimals": (0, "digits of the coordinates written in answer texts"),
        "min_pixels": (56 * 56, "images are resized to at least this many pixels (Qwen-VL smart resize)"),
        "max_pixels": (56 * 56, "images are resized to at most this many pixels"),
        "grid_buckets": ((), "image grids (h, w) in 14-pixel patches, even numbers, each photo resized to the one "
                             "nearest its aspect ratio: a run compiles for these shapes only; empty: each photo's own "
                             "grid within min/max_pixels"),
    },
    "sft": {
        # the image->place mapping is still improving fast at 600-900 steps
        "steps": (1000, "optimizer steps"),
        "batch_size": (32, "examples per step, over all devices"),
        "grad_accum": (1, "micro-batches per step; divides sft.batch_size"),
        **_optimizer(lr=3e-3, warmup_steps=20, schedule="cosine", min_lr_ratio=0.1),
        "max_target_len": (16, "answer tokens of an SFT target (longer answers are shortened)"),
    },
    "mining": {
        "radius_km": (0.0, "Geo-R hard-sample mining before GRPO (0: off): the model's greedy predictions of train "
                           "samples within this distance of the truth are hotspots, and GRPO trains only on samples "
                           "farther than this from every hotspot"),
        "num_examples": (0, "train samples predicted to find the hotspots (0: the whole split)"),
        "random": (False, "GRPO on a random subset of the hard subset's size instead (Geo-R's control arm)"),
    },
    "grpo": {
        # 100 steps gained 3-14% of median km over seeds 0-2, 300 without the KL 11-13% (README: The main job)
        "steps": (300, "policy updates (one per rollout batch)"),
        "batch_size": (8, "prompts per step; each is sampled grpo.group_size times"),
        # 8 x 8: more prompts per step, less noisy updates than 4 x 16
        "group_size": (8, "completions per prompt, the group the advantages are relative to"),
        "grad_accum": (1, "micro-batches per optimizer update; grpo.minibatches x grpo.grad_accum divides batch_size"),
        "updates_per_rollout": (1, "optimizer passes over each rollout (PPO epochs); > 1: old log-probs are taken "
                                   "before the first, so the clip binds"),
        "minibatches": (1, "optimizer updates per pass, each on 1/minibatches of the rollout's prompts"),
        # 2e-4 drifted below the (now much better) SFT model on seed 0
        **_optimizer(lr=1e-4, warmup_steps=5, schedule="constant", min_lr_ratio=1.0),
        # 0.7: rollouts near the greedy answer that evaluation scores
        "temperature": (0.7, "sampling temperature of the rollouts (> 0: a group needs different samples)"),
        "top_k": (0, "sample among the k most likely tokens (0: all)"),
        "top_p": (1.0, "nucleus sampling mass (1: off)"),
        "max_new_tokens": (16, "completion length limit of the rollouts"),
        # 0 (as DAPO and Dr. GRPO): no reference pass, a third less work a step; 0.04 gained less at 300 steps
        "beta": (0.0, "weight of the KL to the frozen reference (the model at the start of GRPO); 0: no reference"),
        "kl": ("k3", "KL estimator: a geojax.rl.KL_ESTIMATORS name"),
        "eps_low": (0.2, "ratio clip below: 1 - eps_low"),
        "eps_high": (0.2, "ratio clip above: 1 + eps_high (DAPO clip-higher: > eps_low)"),
        "loss": ("grpo", "policy loss: a geojax.rl.POLICY_LOSSES name: grpo (PPO clip per token) | gspo | cispo"),
        "advantage": ("grpo", "advantage estimator: a geojax.rl.ADVANTAGE_ESTIMATORS name (multi: per reward)"),
        # Geo-R's and GLOBE's code (TRL); Tunix uses 1e-6
        "adv_eps": (1e-4, "added to the group's reward std before dividing (advantage grpo and multi)"),
        "agg": ("sequence-mean-token-mean", "loss aggregation over tokens: a geojax.rl.AGGREGATIONS name"),
        "tis_cap": (0.0, "truncated importance sampling: policy term x min(p_trainer / p_sampler, cap) (0: off)"),
        "mis_threshold": (0.0, "masked importance sampling: drop tokens or sequences whose p_trainer / p_sampler is "
                               "outside [1/t, t] (0: off)"),
        "mis_level": ("token", "token | sequence: what masked importance sampling drops"),
        "dynamic_sampling": (False, "DAPO: train on groups whose rewards differ, rolling out more batches for them"),
        "max_rollouts": (4, "rollouts per step at most with dynamic_sampling (short: uninformative groups fill)"),
        "rewards": ({"exp_distance": 1.0}, "reward name (geojax.geo.REWARDS, or locatability) -> weight"),
        # exp(-d / 750 km)
        "reward_params": ({"exp_distance": {"tau_km": 750.0}}, "reward name -> keyword arguments of that reward"),
        "combine": ("sum", "sum | product of the weighted rewards"),
        "reward_model": ("", "local HF directory of the locatability reward model (GLOBE); empty: that reward is off"),
    },
    "rollout": {
        "layout": ("train", "decode: before each GRPO rollout, cast the policy to model.dtype and reshard it by the "
                             "decode rules (geojax.sampling.DECODE_RULES: heads, MLP and vocabulary over tensor, whole "
                             "along the embedding) on rollout.mesh, so the decode loop gathers no weight (under LoRA: "
                             "the merged weights, base + adapters, a QLoRA base dequantized) | train: "
                             "sample with the training parameters as they are"),
        "mesh": {
            "data": (-1, "rollout devices splitting the rows (-1: all remaining devices)"),
            "fsdp": (1, "rollout devices on the fsdp axis (the decode rules shard no weight over it; rows split)"),
            "tensor": (1, "rollout devices splitting heads, MLP and vocabulary (-1: all remaining devices)"),
        },
        "devices": (0, "devices of the rollouts' own (the last N; rollout.mesh lays them out, runtime.mesh the rest): "
                       "with rollout.off_policy, rollouts sample beside the update instead of taking turns with it; "
                       "needs rollout.layout 'decode' (0: rollouts run on the training devices)"),
        "off_policy": (False, "one-step off-policy GRPO: rollout k+1 is sampled with the policy before update k, "
                              "while update k runs, and each update's ratio is taken against the sampler's "
                              "log-probs (False: on-policy, each rollout sampled by the policy it updates)"),
    },
    "eval": {
        "split": ("test", "split evaluated"),
        "num_examples": (0, "examples evaluated (0: the whole split)"),
        "batch_size": (50, "examples per generation batch"),
        "max_new_tokens": (16, "answer length limit (greedy decoding)"),
        "every": (0, "also evaluate every N steps during a stage (0: only at stage ends)"),
        "plot": (True, "draw map.png of predictions against the truth"),
        "at_stage_end": (True, "evaluate after each stage (the result table's rows)"),
    },
    "checkpoint": {
        "every": (50, "save every N steps (and at the end of a stage)"),
        "keep": (2, "checkpoints kept per stage"),
        "async_save": (True, "write checkpoints in the background while training goes on"),
    },
    "log": {
        "every": (10, "write metrics every N steps"),
        "tensorboard": (True, "also write metrics to TensorBoard under <workdir>/tb"),
        "progress": (True, "show a progress bar"),
    },
}


def _walk(schema: dict, prefix: str = "") -> Iterator[tuple[str, Any]]:
  for key, entry in schema.items():
    if isinstance(entry, dict):
      yield from _walk(entry, f"{prefix}{key}.")
    else:
      yield prefix + key, entry


DESCRIPTIONS: dict[str, str] = {key: doc for key, (_, doc) in _walk(_SCHEMA)}


def base_config() -> ml_collections.ConfigDict:
  """A fresh config holding every key at its default, locked: a config file can change keys but not add one."""

  def build(schema: dict) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    for key, entry in schema.items():
      c[key] = build(entry) if isinstance(entry, dict) else copy.deepcopy(entry[0])
    return c

  c = build(_SCHEMA)
  c.lock()
  return c


def _described(dotted_key: str) -> str | None:
  """The key itself, or for a key inside an open map (grpo.rewards.exp_distance) the map's key, if described."""
  parts = dotted_key.split(".")
  while parts and ".".join(parts) not in DESCRIPTIONS:
    parts.pop()
  return ".".join(parts) if parts else None


def describe(dotted_key: str) -> str:
  """The description of a key ("" for a key the schema does not know)."""
  key = _described(dotted_key)
  return DESCRIPTIONS[key] if key else ""


def flatten(config: ml_collections.ConfigDict, prefix: str = "") -> Iterator[tuple[str, Any]]:
  """(dotted key, value) of every leaf; an empty map is a leaf."""
  for key, value in config.items():
    if isinstance(value, ml_collections.ConfigDict) and len(value):
      yield from flatten(value, f"{prefix}{key}.")
    else:
      yield prefix + key, value.to_dict() if isinstance(value, ml_collections.ConfigDict) else value


def format_config(config: ml_collections.ConfigDict) -> str:
  """One line per key, `key = value  # description`, in the schema's order, values as Python literals."""
  order = {key: i for i, key in enumerate(DESCRIPTIONS)}
  rank = lambda key: order.get(_described(key), len(order))  # unknown keys last
  rows = [(f"{key} = {value!r}", describe(key)) for key, value in sorted(flatten(config), key=lambda kv: rank(kv[0]))]
  width = max(len(text) for text, _ in rows)
  return "\n".join(f"{text:<{width}}  # {doc}" if doc else text for text, doc in rows)


# ---- validate ---------------------------------------------------------------------------------------------------


def validate(c: ml_collections.ConfigDict, *, reads_data: bool = True, needs_weights: bool = True,
             platform: str | None = None) -> None:
  """Rejects a bad config before any work with a ConfigError naming the key. Every entry point runs it.

  reads_data: whether the entry point reads the dataset (train, eval; not export), so that data.dir must exist.
  needs_weights: whether it loads the model's weights (all but geojax.plan, which compiles with shapes only).
  platform: where the programs run, "cpu" | "gpu" | "tpu", to check model.attention against (geojax.plan: its
    target's). None: `experiment.build_model` checks it on the mesh's devices; asking JAX for this host's platform
    here would start its backend before `jax.distributed.initialize`, which multi-process runs must call first.
  """
  from geojax.data.chat import ANSWER_FORMATS, PROMPTS, THINK_SOURCES
  from geojax.experiment import DTYPES
  from geojax.geo import REWARDS
  from geojax.learners import LEARNERS, LOCATABILITY  # locatability: scored by grpo.reward_model, not geo.REWARDS
  from geojax.models.attention import BACKENDS, check_backend
  from geojax.models.presets import PRESETS
  from geojax.rl import (ADVANTAGE_ESTIMATORS, AGGREGATIONS, KL_ESTIMATORS, MIS_LEVELS, MULTI_REWARD_KINDS,
                         POLICY_LOSSES, RENAMED_AGGREGATIONS)
  STAGES = tuple(LEARNERS)
  for stage in get(c, "stages"):
    if stage not in STAGES:
      raise ConfigError(f"config key 'stages' holds {stage!r}; expected stages from {list(STAGES)}")
  check_choice(c, "runtime.distributed", ("auto", "on", "off"))
  check_choice(c, "runtime.keep_freed_memory", ("auto", "on", "off"))
  check_choice(c, "runtime.matmul_precision", ("default", "highest", "high", "bfloat16"))
  check_range(c, "runtime.num_processes", 0)
  check_range(c, "runtime.process_id", -1)
  for axis, size in get(c, "runtime.mesh").items():
    if not isinstance(size, int) or (size < 1 and size != -1):
      raise ConfigError(f"config key 'runtime.mesh.{axis}' is {size!r}; expected a size >= 1 or -1")
  if list(c.runtime.mesh.values()).count(-1) > 1:
    raise ConfigError(f"config key 'runtime.mesh' is {dict(c.runtime.mesh)}: at most one axis may be -1")

  check_choice(c, "rollout.layout", ("decode", "train"))
  for axis, size in get(c, "rollout.mesh").items():
    if not isinstance(size, int) or (size < 1 and size != -1):
      raise ConfigError(f"config key 'rollout.mesh.{axis}' is {size!r}; expected a size >= 1 or -1")
  if list(c.rollout.mesh.values()).count(-1) > 1:
    raise ConfigError(f"config key 'rollout.mesh' is {dict(c.rollout.mesh)}: at most one axis may be -1")
  check_range(c, "rollout.devices", 0)
  if c.rollout.devices and c.rollout.layout != "decode":
    raise ConfigError(f"config key 'rollout.devices' is {c.rollout.devices}: rollouts on devices of their own need "
                      "rollout.layout 'decode' (the weights are cast and moved to them once per rollout)")

  m = c.model
  check_choice(c, "model.preset", ["tiny", *PRESETS])
  check_choice(c, "model.dtype", list(DTYPES))
  check_choice(c, "model.param_dtype", list(DTYPES))
  check_choice(c, "model.attention", list(BACKENDS))
  if platform is not None:
    try:
      check_backend(m.attention, platform)
    except ValueError as e:
      raise ConfigError(f"config key {e}") from None
  if m.preset != "tiny" and not m.hf_path and needs_weights:
    raise ConfigError(f"config key 'model.hf_path' is empty: preset {m.preset!r} needs pretrained weights "
                      "(a local Hugging Face directory)")
  if m.hf_path and not os.path.isdir(m.hf_path):
    raise ConfigError(f"config key 'model.hf_path' is {m.hf_path!r}: not a directory")
  if not m.tokenizer and not m.hf_path and needs_weights:
    raise ConfigError("config key 'model.tokenizer' is empty and so is model.hf_path, the tokenizer's fallback")
  if m.tokenizer not in ("", "tiny", "qwen2") and not os.path.exists(m.tokenizer):
    raise ConfigError(f"config key 'model.tokenizer' is {m.tokenizer!r}: expected tiny, qwen2 or a local HF directory")
  check_choice(c, "model.tiny.version", ("qwen2_5_vl", "qwen2_vl"))
  for key in ("hidden_size", "num_layers", "vision_depth"):
    check_range(c, f"model.tiny.{key}", 1)
  _validate_lora(c)

  d = c.data
  check_choice(c, "data.source", ("builtin", "arrayrecord"))
  if d.source == "arrayrecord" and reads_data:
    if not d.dir:
      raise ConfigError("config key 'data.dir' is empty: data.source 'arrayrecord' reads its shards from it")
    if not os.path.isdir(d.dir):
      raise ConfigError(f"config key 'data.dir' is {d.dir!r}: no such directory (data.source 'arrayrecord')")
  if d.source == "builtin":
    check_range(c, "data.n_train", 1)
    check_range(c, "data.n_test", 1)
    check_range(c, "data.sea_fraction", 0.0, 1.0)
    if not isinstance(d.image_size, int) or d.image_size <= 0 or d.image_size % 28:
      raise ConfigError(f"config key 'data.image_size' is {d.image_size!r}; expected a positive multiple of 28")
  check_choice(c, "data.prompt", sorted(PROMPTS))
  check_choice(c, "data.answer", ANSWER_FORMATS)
  check_range(c, "data.max_prompt_len", 8)
  check_range(c, "data.workers", 0)
  check_range(c, "data.min_pixels", 1)
  check_range(c, "data.max_pixels", d.min_pixels)
  for bucket in d.grid_buckets:
    if (not isinstance(bucket, (tuple, list)) or len(bucket) != 2
        or not all(isinstance(x, int) and not isinstance(x, bool) and x > 0 and x % 2 == 0 for x in bucket)):
      raise ConfigError(f"config key 'data.grid_buckets' holds {bucket!r}; expected (h, w) pairs of positive even "
                        "patch counts")
  check_range(c, "data.decimals", 0, 8)
  check_choice(c, "data.think", THINK_SOURCES)
  if d.answer == "locatable" and (c.eval_before or c.eval.at_stage_end or c.eval.every or tuple(c.stages) != ("sft",)):
    raise ConfigError("config key 'data.answer' is 'locatable': its answers are yes / no, not places, so it trains a "
                      "reward model with SFT only; set stages=('sft',), eval_before=False, eval.at_stage_end=False, "
                      "eval.every=0")
  check_range(c, "mining.radius_km", 0.0)
  check_range(c, "mining.num_examples", 0)
  if c.mining.radius_km and "grpo" not in c.stages:
    raise ConfigError("config key 'mining.radius_km' is set but stages has no 'grpo': mining selects GRPO's samples")

  for stage in STAGES:
    s = c[stage]
    check_range(c, f"{stage}.steps", 0)
    check_range(c, f"{stage}.batch_size", 1)
    check_range(c, f"{stage}.grad_accum", 1)
    if s.batch_size % s.grad_accum:
      raise ConfigError(f"config key '{stage}.grad_accum' ({s.grad_accum}) must divide '{stage}.batch_size' "
                        f"({s.batch_size})")
    check_range(c, f"{stage}.lr", 0.0)
    check_range(c, f"{stage}.warmup_steps", 0)
    check_range(c, f"{stage}.warmup_ratio", 0.0, 1.0)
    check_choice(c, f"{stage}.schedule", ("cosine", "constant", "linear"))
    check_range(c, f"{stage}.min_lr_ratio", 0.0, 1.0)
    check_range(c, f"{stage}.weight_decay", 0.0)
    check_range(c, f"{stage}.b1", 0.0, 1.0)
    check_range(c, f"{stage}.b2", 0.0, 1.0)
    check_range(c, f"{stage}.grad_clip", 0.0)
  check_range(c, "sft.max_target_len", 1)

  g = c.grpo
  check_range(c, "grpo.group_size", 2)
  check_range(c, "grpo.temperature", 0.0)
  if g.temperature == 0:
    raise ConfigError("config key 'grpo.temperature' is 0: greedy samples of a group are identical")
  check_range(c, "grpo.top_k", 0)
  check_range(c, "grpo.top_p", 0.0, 1.0)
  check_range(c, "grpo.max_new_tokens", 1)
  check_range(c, "grpo.beta", 0.0)
  check_choice(c, "grpo.kl", sorted(KL_ESTIMATORS))
  check_range(c, "grpo.eps_low", 0.0, 1.0)
  check_range(c, "grpo.eps_high", 0.0)
  check_choice(c, "grpo.advantage", sorted(ADVANTAGE_ESTIMATORS))
  check_range(c, "grpo.adv_eps", 0.0)
  if g.agg in RENAMED_AGGREGATIONS:
    raise ConfigError(f"config key 'grpo.agg' is {g.agg!r}: {RENAMED_AGGREGATIONS[g.agg]}")
  check_choice(c, "grpo.agg", sorted(AGGREGATIONS))
  check_choice(c, "grpo.loss", sorted(POLICY_LOSSES))
  check_range(c, "grpo.updates_per_rollout", 1)
  check_range(c, "grpo.minibatches", 1)
  if g.batch_size % (g.minibatches * g.grad_accum):
    raise ConfigError(f"config keys 'grpo.minibatches' x 'grpo.grad_accum' ({g.minibatches} x {g.grad_accum}) must "
                      f"divide 'grpo.batch_size' ({g.batch_size})")
  check_range(c, "grpo.tis_cap", 0.0)
  if 0 < g.tis_cap < 1:
    raise ConfigError(f"config key 'grpo.tis_cap' is {g.tis_cap!r}: a cap below 1 scales down every token; "
                      "expected 0 (off) or >= 1")
  check_range(c, "grpo.mis_threshold", 0.0)
  if 0 < g.mis_threshold <= 1:
    raise ConfigError(f"config key 'grpo.mis_threshold' is {g.mis_threshold!r}: expected 0 (off) or > 1 (tokens "
                      "whose ratio is outside [1/t, t] are dropped)")
  check_choice(c, "grpo.mis_level", MIS_LEVELS)
  if c.rollout.off_policy:
    for key in ("grpo.tis_cap", "grpo.mis_threshold"):
      if get(c, key):
        raise ConfigError(f"config key '{key}' is {get(c, key)!r}: with rollout.off_policy the ratio is already taken "
                          "against the sampler's log-probs, so there is no rollout/trainer gap left to correct")
    if g.dynamic_sampling and g.max_rollouts > 1:
      raise ConfigError("config key 'grpo.dynamic_sampling' is True: rollout.off_policy keeps one rollout ahead, "
                        "which dynamic sampling (several batches chosen from) does not support")
  check_range(c, "grpo.max_rollouts", 1)
  check_choice(c, "grpo.combine", ("sum", "product"))
  if g.advantage in MULTI_REWARD_KINDS and g.combine != "sum":
    raise ConfigError(f"config key 'grpo.combine' is {g.combine!r}: advantage {g.advantage!r} normalizes each "
                      "reward in its group and sums them with the grpo.rewards weights; use 'sum'")
  for name, weight in g.rewards.items():
    if name not in REWARDS and name != LOCATABILITY:
      raise ConfigError(f"config key 'grpo.rewards.{name}' is not a reward; known: {sorted([*REWARDS, LOCATABILITY])}")
    if not isinstance(weight, (int, float)) or isinstance(weight, bool):
      raise ConfigError(f"config key 'grpo.rewards.{name}' is {weight!r}; expected a number")
  if not any(w for n, w in g.rewards.items() if n != LOCATABILITY):
    raise ConfigError("config key 'grpo.rewards' has no reward with a non-zero weight")
  for name, kwargs in g.reward_params.items():
    if name not in REWARDS:
      raise ConfigError(f"config key 'grpo.reward_params.{name}' is not a reward; known: {sorted(REWARDS)}")
    accepted = set(inspect.signature(REWARDS[name]).parameters) - {"batch", "gaz"}
    for arg in kwargs.keys():
      if arg not in accepted:
        raise ConfigError(f"config key 'grpo.reward_params.{name}.{arg}' is not a parameter of reward {name!r}; "
                          f"it takes {sorted(accepted)}")
  if g.reward_model and not os.path.isdir(g.reward_model):
    raise ConfigError(f"config key 'grpo.reward_model' is {g.reward_model!r}: not a directory")

  check_range(c, "eval.batch_size", 1)
  check_range(c, "eval.num_examples", 0)
  check_range(c, "eval.max_new_tokens", 1)
  check_range(c, "eval.every", 0)
  check_range(c, "checkpoint.every", 1)
  check_range(c, "checkpoint.keep", 1)
  check_range(c, "log.every", 1)


def _validate_lora(c: ml_collections.ConfigDict) -> None:
  """model.lora: what geojax's LoRA can do (adapters on Dense projections, a quantized base only under adapters)."""
  import re

  from geojax.models.lora import QUANTIZE, TARGETS
  lc = c.model.lora
  check_range(c, "model.lora.rank", 0)
  check_range(c, "model.lora.dropout", 0.0, 1.0)
  if lc.dropout >= 1:
    raise ConfigError(f"config key 'model.lora.dropout' is {lc.dropout!r}; expected a rate in [0, 1)")
  if not isinstance(lc.alpha, (int, float)) or lc.alpha <= 0:
    raise ConfigError(f"config key 'model.lora.alpha' is {lc.alpha!r}; expected a number > 0")
  check_choice(c, "model.lora.quantize", list(QUANTIZE))
  if lc.targets not in TARGETS:
    try:
      re.compile(lc.targets)
    except re.error as e:
      raise ConfigError(f"config key 'model.lora.targets' is {lc.targets!r}: not one of {sorted(TARGETS)} nor a "
                        f"regex ({e})") from None
  if lc.rank == 0:
    for key, off in (("quantize", "none"), ("init_from", ""), ("dropout", 0.0)):
      if lc[key] != off:
        raise ConfigError(f"config key 'model.lora.{key}' is {lc[key]!r} but model.lora.rank is 0 (LoRA off): "
                          f"set a rank or leave {key} at {off!r}")
  if lc.init_from and not os.path.isfile(os.path.join(lc.init_from, "adapter_config.json")):
    raise ConfigError(f"config key 'model.lora.init_from' is {lc.init_from!r}: not a PEFT adapter directory "
                      "(no adapter_config.json)")
