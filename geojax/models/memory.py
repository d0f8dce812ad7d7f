"""Per-chip memory of GRPO training of a QwenVL model, estimated from shapes in a second (no compiler), printed by
`python -m geojax.models.memory` for the Geo-R and GLOBE recipes. `python -m geojax.plan` gives the compiled figure
(the TPU compiler's own per-chip memory of the real programs); this estimate is for what-ifs (remat policies, batch
sizes). Against the compiled 7B programs (BENCHMARKS.md, "TPU plan"; remat "full", splash attention): Geo-R's
GRPO update on 32 v5e chips 10.98 vs 9.18 GiB (+20%) and its decode-layout rollout 9.06 vs 11.47 (-21%), GLOBE's
update on 16 v5p chips 15.54 vs 19.20 (-19%).

What the code keeps, per chip (the assumptions this estimate makes):
- Parameters, gradients and AdamW m, v in model.param_dtype (float32 in every recipe), FSDP-sharded over the chips
  (with grad_accum > 1 a micro-batch's gradients are added into the accumulator as they are made: one tree).
- The reference policy of the KL term: a float32 copy of the starting parameters (`ReferencePolicy`), sharded alike.
- FSDP gathers a weight whole before its matmul, cast to the compute dtype first (the LM head is cast once before
  the log-prob chunk loop): the LM head (bfloat16, vocab x hidden: 1 GiB for 7B) and one layer's weights are
  whole on every chip at once.
- GRPO's training pass runs each prompt and its photo once and its G completions after it
  (`QwenVL.prefix_hidden_states`); batch rows are split over the chips only where their count divides (fewer
  prompts than chips: every chip holds all of them), the photos' patch rows likewise (so the vision tower's queries
  are split even where the prompts are not). Activations are bfloat16 (model.dtype). Attention
  (`geojax.models.attention`): the memory-efficient backends (splash, cudnn, blockwise; the default on every
  platform) hold one block of 512 keys' float32 scores per query at a time and keep only the log-sum-exp for the
  backward; `attention="xla"` holds the whole float32 score matrix and its softmax.
- Per layer kept for the backward (Korthikanti et al. 2022, 34*s*b*d for the layer's tensors, plus the scores:
  4 + 4 + 2 bytes per score here, where the paper's 16-bit scores take 5): remat "none" keeps all of it, "dots"
  the matmul outputs and the float32 scores, "dots_no_batch" the matmul outputs, "full" (the presets' default) only
  the layer input, plus one layer's whole working set while it is differentiated.
- The LM head runs on the completion positions in chunks of `chunk` positions, float32 logits (x3: logits, softmax,
  cotangent).
- Rollouts: the KV cache of the B*G rows (prompt + new tokens, bfloat16), and the prefill of one layer. In the
  decode layout (`decode_tensor` > 0, rollout.layout=decode) a bfloat16 copy of the weights split over
  `decode_tensor` chips instead of the gathered weights, and the rows split over the other chips.
The peak is the larger of the update and the rollout; both hold the parameters, the optimizer state and the
reference.
Under LoRA (`lora_rank`): gradients, AdamW moments and the reference are the adapters' (float32; the reference is
the shared frozen base with the adapters off), the adapted kernels of the frozen base in `quantize`'s bytes
(QLoRA), activations as without LoRA (the rank-r activations neglected); the decode layout's copy is the merged
weights, the same size as without LoRA.
"""
from __future__ import annotations

import dataclasses

import jax
import numpy as np

from geojax.models.config import QwenVLConfig

GIB = 1 << 30


def count_params(config: QwenVLConfig) -> int:
  """Exact parameter count from the module shapes (jax.eval_shape; nothing allocated)."""
  from flax import nnx

  from geojax.models.qwen_vl import QwenVL
  model = nnx.eval_shape(lambda: QwenVL(config, rngs=nnx.Rngs(0)))
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


@dataclasses.dataclass
class MemoryPlan:
  """GiB per chip."""
  params: float
  grads: float
  optimizer: float
  reference: float
  gathered: float     # weights FSDP gathers whole (the LM head and one layer)
  activations: float  # the update's, under the remat policy
  kv_cache: float     # the rollout's KV cache and prefill
  decode_copy: float = 0.0  # the decode layout's bfloat16 weights, sampled from instead of the gathered ones

  @property
  def resident(self) -> float:
    return self.params + self.optimizer + self.reference

  @property
  def update(self) -> float:
    return self.resident + self.grads + self.gathered + self.activations

  @property
  def rollout(self) -> float:
    return self.resident + (self.decode_copy or self.gathered) + self.kv_cache

  @property
  def total(self) -> float:
    return max(self.update, self.rollout)


SCORE_BLOCK = 512  # keys per block of the memory-efficient attention backends (attention.BLOCK_K)


def _layer_bytes(s: int, b: float, d: int, heads: int, keys: int, kv_dim: int, inter: int, policy: str,
                 act: int = 2, dense: bool = False) -> float:
  """Bytes one transformer layer over b rows of s queries attending to `keys` keys keeps for its backward
  (dense: whole float32 score matrices, else one block of them and a float32 log-sum-exp per query)."""
  scores = b * heads * s * (keys if dense else min(keys, SCORE_BLOCK))
  if policy == "none":
    return 17 * act * s * b * d + 10 * scores  # float32 scores and softmax, bfloat16 probabilities
  dots = act * b * s * (d + 2 * kv_dim + d + d + 2 * inter + d)  # q, k, v, attn out, o, gate, up, down
  if policy == "dots":
    return dots + 4 * (scores if dense else b * heads * s)
  if policy == "dots_no_batch":
    return dots
  return act * s * b * d  # "full": the layer input only


def _per_chip(rows: int, chips: int) -> int:
  """Rows one chip holds: split when they divide over the chips, else all of them (geojax.models.sharding)."""
  return rows // chips if rows % chips == 0 else rows


def _layer_params(config: QwenVLConfig) -> int:
  t = config.text
  kv_dim = t.num_kv_heads * t.head_dim
  return t.hidden_size * (2 * t.hidden_size + 2 * kv_dim) + 3 * t.hidden_size * t.intermediate_size


# Bytes per weight of a frozen base kernel under model.lora.quantize (nf4: 4 bits; the block scales neglected).
BASE_BYTES = {"none": 4.0, "int8": 1.0, "nf4": 0.5}


def lora_counts(config: QwenVLConfig, rank: int) -> tuple[int, int]:
  """(adapter parameters, parameters of the kernels they adapt) for LoRA of `rank` on the decoder's q/k/v/o/gate/
  up/down projections (model.lora.targets "text")."""
  t = config.text
  d, q, kv, m = t.hidden_size, t.num_heads * t.head_dim, t.num_kv_heads * t.head_dim, t.intermediate_size
  shapes = ((d, q), (d, kv), (d, kv), (q, d), (d, m), (d, m), (m, d))
  return t.num_layers * rank * sum(i + o for i, o in shapes), t.num_layers * sum(i * o for i, o in shapes)


def memory_plan(config: QwenVLConfig, *, chips: int = 32, prompts: int = 16, group: int = 4, prompt_len: int = 512,
                new_tokens: int = 256, patches: int = 1600, grad_accum: int = 1, chunk: int = 256,
                remat_policy: str | None = None, n_params: int | None = None, param_bytes: int = 4,
                act_bytes: int = 2, attention: str = "auto", decode_tensor: int = 0, lora_rank: int = 0,
                quantize: str = "none") -> MemoryPlan:
  """GiB per chip of one GRPO step (`prompts` prompts x `group` completions of `new_tokens` tokens, prompts of
  `prompt_len` tokens with one photo of `patches` patches) on `chips` chips; defaults: configs/geo_r.py on 32.
  attention: model.attention ("xla": dense scores). decode_tensor: rollout.mesh.tensor under rollout.layout=decode
  (0: the rollout samples from the training parameters). lora_rank > 0: LoRA on the decoder projections, their
  frozen kernels in `quantize` (a BASE_BYTES key)."""
  dense = attention == "xla"
  policy = remat_policy or config.remat_policy
  n = n_params if n_params is not None else count_params(config)
  t, v = config.text, config.vision
  kv_dim = t.num_kv_heads * t.head_dim
  shard = param_bytes * n / chips
  micro = prompts // grad_accum
  pc, rc = _per_chip(micro, chips), _per_chip(micro * group, chips)  # prompts, completion rows per chip
  P, N, D = prompt_len, new_tokens, t.hidden_size

  def text_layer(p):
    return (_layer_bytes(P, pc, D, t.num_heads, P, kv_dim, t.intermediate_size, p, act_bytes, dense)
            + _layer_bytes(N, rc, D, t.num_heads, P + N, kv_dim, t.intermediate_size, p, act_bytes, dense))

  vr = _per_chip(micro * patches, chips)  # patch rows per chip: pixel_values are split by rows where they divide

  def vision_layer(p):  # a full-attention block (the window blocks attend to less): vr queries over an image's keys
    return _layer_bytes(vr, 1, v.hidden_size, v.num_heads, patches, v.hidden_size, v.intermediate_size, p, act_bytes,
                        dense)

  saved = t.num_layers * text_layer(policy) + v.depth * vision_layer(policy)
  working = max(text_layer("none"), vision_layer("none"))
  logits = 3 * 4 * rc * min(chunk, N) * t.vocab_size
  rows = _per_chip(prompts * group, chips // decode_tensor if decode_tensor else chips)
  kv = rows * (P + N) * t.num_layers * 2 * kv_dim * act_bytes
  vr_all = _per_chip(prompts * patches, chips)
  prefill = max(_layer_bytes(P, _per_chip(prompts, chips), D, t.num_heads, P, kv_dim, t.intermediate_size, "none",
                             act_bytes),
                _layer_bytes(vr_all, 1, v.hidden_size, v.num_heads, patches, v.hidden_size, v.intermediate_size,
                             "none", act_bytes, dense)) / 2  # forward only: about half the layer's tensors
  gathered = act_bytes * (t.vocab_size * D + _layer_params(config))
  decode_copy = act_bytes * n / decode_tensor if decode_tensor else 0.0  # split over decode_tensor chips
  if lora_rank:
    adapters, adapted = lora_counts(config, lora_rank)
    base = param_bytes * (n - adapted) + BASE_BYTES[quantize] * adapted
    gathered = act_bytes * t.vocab_size * D + min(BASE_BYTES[quantize], act_bytes) * _layer_params(config)
    a = 4 * adapters / chips / GIB
    return MemoryPlan(params=base / chips / GIB + a, grads=a, optimizer=2 * a, reference=a, gathered=gathered / GIB,
                      activations=(saved + working + logits) / GIB, kv_cache=(kv + prefill) / GIB,
                      decode_copy=decode_copy / GIB)  # the merged weights
  return MemoryPlan(params=shard / GIB, grads=shard / GIB, optimizer=2 * shard / GIB,
                    reference=shard / GIB, gathered=gathered / GIB, activations=(saved + working + logits) / GIB,
                    kv_cache=(kv + prefill) / GIB, decode_copy=decode_copy / GIB)


def recipe_shapes(config) -> dict:
  """memory_plan's keyword arguments for a geojax config (ConfigDict): its GRPO batch and the largest photo of its
  grid buckets (else of data.max_pixels)."""
  g, d = config.grpo, config.data
  buckets = [tuple(b) for b in d.get("grid_buckets", ())]
  patches = max(h * w for h, w in buckets) if buckets else d.max_pixels // (14 * 14)
  decode_tensor = int(config.rollout.mesh.tensor) if config.rollout.layout == "decode" else 0
  return dict(prompts=g.batch_size, group=g.group_size, prompt_len=d.max_prompt_len, new_tokens=g.max_new_tokens,
              patches=patches, grad_accum=g.grad_accum, attention=config.model.attention, decode_tensor=decode_tensor)


def table(config: QwenVLConfig, **kwargs) -> str:
  n = count_params(config)
  policies = ("none", "dots", "dots_no_batch", "full")
  plans = {p: memory_plan(config, remat_policy=p, n_params=n, **kwargs) for p in policies}
  rows = [("params f32", "params"), ("grads f32", "grads"), ("AdamW m, v f32", "optimizer"),
          ("reference f32", "reference"), ("gathered weights", "gathered"), ("activations", "activations"),
          ("update", "update"), ("rollout KV cache + prefill", "kv_cache"), ("rollout decode copy", "decode_copy"),
          ("rollout", "rollout"), ("peak", "total")]
  lines = ["| GiB per chip | " + " | ".join(policies) + " |", "|---" * (len(policies) + 1) + "|"]
  for label, field in rows:
    lines.append(f"| {label} | " + " | ".join(f"{getattr(plans[p], field):.2f}" for p in policies) + " |")
  return "\n".join(lines)


def lora_table(config: QwenVLConfig, rank: int = 16, **kwargs) -> str:
  """Full fine-tuning against LoRA (`rank`) and QLoRA (int8, nf4) for one setting of `memory_plan`."""
  n = count_params(config)
  variants = {"full": {}, f"LoRA r{rank}": {"lora_rank": rank},
              f"QLoRA r{rank} int8": {"lora_rank": rank, "quantize": "int8"},
              f"QLoRA r{rank} nf4": {"lora_rank": rank, "quantize": "nf4"}}
  plans = {k: memory_plan(config, n_params=n, **kwargs, **v) for k, v in variants.items()}
  fields = ("params", "grads", "optimizer", "reference", "gathered", "activations", "kv_cache", "total")
  lines = ["| GiB per chip | " + " | ".join(fields) + " |", "|---" * (len(fields) + 1) + "|"]
  for label, plan in plans.items():
    lines.append(f"| {label} | " + " | ".join(f"{getattr(plan, f):.2f}" for f in fields) + " |")
  return "\n".join(lines)


def format_lora_plans(preset: str = "qwen2.5-vl-7b", rank: int = 16) -> str:
  """The 7B Geo-R GRPO step with LoRA and QLoRA: on 32 chips (configs/geo_r.py), a v5e-8 and one GPU (the same
  16 x G=4 batch in 4 and 16 micro-batches)."""
  from geojax.models.presets import PRESETS
  config = PRESETS[preset]
  adapters, _ = lora_counts(config, rank)
  out = [f"{preset}: {count_params(config) / 1e9:.2f}B params; LoRA r{rank} on the decoder projections: "
         f"{adapters / 1e6:.1f}M adapter params"]
  for title, kwargs in (("32 chips (configs/geo_r.py's batch), remat full", dict(chips=32)),
                        ("8 chips (v5e-8), grad_accum 4, remat full", dict(chips=8, grad_accum=4)),
                        ("1 chip (one GPU), grad_accum 16, remat full", dict(chips=1, grad_accum=16))):
    out += ["", title + ":", lora_table(config, rank, remat_policy="full", **kwargs)]
  return "\n".join(out)


if __name__ == "__main__":
  from geojax import config as gconfig
  from geojax.models.presets import PRESETS
  for spec, chips, slice_ in (("configs/geo_r.py", 32, "v5e:4x8"), ("configs/globe.py", 16, "v5p:2x2x4")):
    recipe = gconfig.load(spec)
    model = PRESETS[recipe.model.preset]
    shapes = recipe_shapes(recipe)
    print(f"\n{spec}: {recipe.model.preset} ({count_params(model) / 1e9:.2f}B params), {chips} chips ({slice_}), "
          + ", ".join(f"{k} {v}" for k, v in shapes.items()))
    print(table(model, chips=chips, **shapes))
  print()
  print(format_lora_plans())
