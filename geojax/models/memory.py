"""Per-chip memory plan for GRPO training of a QwenVL model (bytes of params, grads, optimizer state,
reference model, activations, rollout KV cache), printed by `python -m geojax.models.memory`.

Assumptions (change them with the arguments):
- Parameters, gradients and AdamW moments in float32, fully sharded over all chips (fsdp x tensor), compute
  in bfloat16; a frozen bfloat16 reference model for the KL term, sharded the same way.
- Activations of one micro-batch per chip. Per decoder layer (Korthikanti et al. 2022, 16-bit activations,
  no sequence parallelism): remat "none" keeps s*b*d*(34 + 5*a*s/d) bytes, "dots" keeps the matmul outputs
  (q, k, v, attention scores, attention out, o, gate, up, down), "dots_no_batch" the same minus the
  batched attention matmuls, "full" keeps only the layer input (2*s*b*d) plus one layer's working set
  during the backward. The LM head runs in `token_logprobs` chunks of `chunk` positions (float32).
- Vision tower: `images` per sequence of `patches` patches; same remat rule with full attention per image.
- Rollouts: KV cache of `rollout_batch` sequences per chip, bfloat16.

Result for Qwen2.5-VL-7B on 32 chips (v5p-64 / v4-64 = 32 chips; `python -m geojax.models.memory`), GRPO
with 8 sequences of 1024 tokens per chip per micro-batch, one 448x448 image each (1024 patches), 16
rollout sequences of 1024 tokens per chip, chunk 256:

| GiB per chip          | none  | dots  | dots_no_batch | full  |
|-----------------------|-------|-------|---------------|-------|
| params f32            |  0.97 |  0.97 |  0.97         |  0.97 |
| grads f32             |  0.97 |  0.97 |  0.97         |  0.97 |
| AdamW m, v f32        |  1.93 |  1.93 |  1.93         |  1.93 |
| reference bf16        |  0.48 |  0.48 |  0.48         |  0.48 |
| activations           | 92.79 | 75.84 | 35.34         |  7.66 |
| rollout KV cache bf16 |  0.88 |  0.88 |  0.88         |  0.88 |
| total                 | 98.00 | 81.06 | 40.56         | 12.88 |

(Of the 7.66 GiB under "full", 3.7 GiB is the float32 logits chunk: 8 x 256 x 152k x 3; chunk=64 cuts it
to 0.9 GiB.) So on v5p (95 GB HBM) "dots_no_batch" fits with room (and "dots" just fits); on v4 (32 GB HBM) use "full"
(the default of the full-size presets: `PRESETS[...].remat_policy == "full"`), or "dots_no_batch" with a
micro-batch of 4. Set it with `QwenVLConfig.remat_policy` / `load_hf(path, remat_policy=...)`.
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
  params: float
  grads: float
  optimizer: float
  reference: float
  activations: float
  kv_cache: float

  @property
  def total(self) -> float:
    return self.params + self.grads + self.optimizer + self.reference + self.activations + self.kv_cache


def _layer_activation_bytes(s: int, b: int, d: int, heads: int, kv_dim: int, inter: int, policy: str) -> float:
  """Bytes one transformer layer keeps for its backward, 16-bit activations."""
  scores = 2 * b * heads * s * s  # bf16 attention probabilities
  if policy == "none":
    return s * b * d * (34 + 5 * heads * s / d)
  dots = 2 * b * s * (d + 2 * kv_dim + d + d + 2 * inter + d)  # q, k, v, attn out, o, gate, up, down
  if policy == "dots":
    return dots + 2 * scores
  if policy == "dots_no_batch":
    return dots
  return 2 * s * b * d  # "full": the layer input only


# Bytes per weight of a frozen base kernel under model.lora.quantize (nf4: 4 bits; per-channel scales neglected).
BASE_BYTES = {"none": 4.0, "int8": 1.0, "nf4": 0.5}


def lora_counts(config: QwenVLConfig, rank: int) -> tuple[int, int]:
  """(adapter parameters, parameters of the kernels they adapt) for LoRA of `rank` on the decoder's q/k/v/o/gate/
  up/down projections (model.lora.targets "text")."""
  t = config.text
  d, q, kv, m = t.hidden_size, t.num_heads * t.head_dim, t.num_kv_heads * t.head_dim, t.intermediate_size
  shapes = ((d, q), (d, kv), (d, kv), (q, d), (d, m), (d, m), (m, d))
  return t.num_layers * rank * sum(i + o for i, o in shapes), t.num_layers * sum(i * o for i, o in shapes)


def memory_plan(config: QwenVLConfig, *, chips: int = 32, micro_batch: int = 8, seq_len: int = 1024,
                images: int = 1, patches: int = 1024, rollout_batch: int = 16, chunk: int = 256,
                remat_policy: str | None = None, n_params: int | None = None, lora_rank: int = 0,
                quantize: str = "none") -> MemoryPlan:
  """GiB per chip for one GRPO training step of `config` on `chips` chips (see the module docstring).

  lora_rank > 0: LoRA on the decoder projections (quantize: their frozen base in int8 / nf4, QLoRA). Gradients,
  AdamW moments and the reference are the adapters' (float32; the reference shares the frozen base), activations
  as without LoRA (the rank-r activations are neglected)."""
  policy = remat_policy or config.remat_policy
  n = n_params if n_params is not None else count_params(config)
  t, v = config.text, config.vision
  shard = n / chips
  kv_dim = t.num_kv_heads * t.head_dim
  text_layers = t.num_layers * _layer_activation_bytes(seq_len, micro_batch, t.hidden_size, t.num_heads, kv_dim,
                                                       t.intermediate_size, policy)
  vision_layers = v.depth * _layer_activation_bytes(patches, micro_batch * images, v.hidden_size, v.num_heads,
                                                    v.hidden_size, v.intermediate_size, policy)
  # Working set of the layer being recomputed / differentiated, and the float32 logits chunk (x3: logits,
  # softmax, its cotangent).
  working = _layer_activation_bytes(seq_len, micro_batch, t.hidden_size, t.num_heads, kv_dim, t.intermediate_size,
                                    "none")
  logits = 3 * 4 * micro_batch * chunk * t.vocab_size
  kv = rollout_batch * seq_len * t.num_layers * 2 * kv_dim * 2
  activations = (text_layers + vision_layers + working + logits) / GIB
  if lora_rank:
    adapters, adapted = lora_counts(config, lora_rank)
    base = 4 * (n - adapted) + BASE_BYTES[quantize] * adapted
    return MemoryPlan(params=(base + 4 * adapters) / chips / GIB, grads=4 * adapters / chips / GIB,
                      optimizer=8 * adapters / chips / GIB, reference=4 * adapters / chips / GIB,
                      activations=activations, kv_cache=kv / GIB)
  return MemoryPlan(params=4 * shard / GIB, grads=4 * shard / GIB, optimizer=8 * shard / GIB,
                    reference=2 * shard / GIB, activations=activations, kv_cache=kv / GIB)


def table(config: QwenVLConfig, **kwargs) -> str:
  n = count_params(config)
  policies = ("none", "dots", "dots_no_batch", "full")
  plans = {p: memory_plan(config, remat_policy=p, n_params=n, **kwargs) for p in policies}
  rows = [("params f32", "params"), ("grads f32", "grads"), ("AdamW m, v f32", "optimizer"),
          ("reference bf16", "reference"), ("activations", "activations"), ("rollout KV cache bf16", "kv_cache"),
          ("total", "total")]
  lines = ["| GiB per chip | " + " | ".join(policies) + " |", "|---" * (len(policies) + 1) + "|"]
  for label, field in rows:
    lines.append(f"| {label} | " + " | ".join(f"{getattr(plans[p], field):.2f}" for p in policies) + " |")
  return "\n".join(lines)


def lora_table(config: QwenVLConfig, rank: int = 16, **kwargs) -> str:
  """Full fine-tuning against LoRA (`rank`) and QLoRA (int8, nf4) for one setting of `memory_plan`."""
  n = count_params(config)
  variants = {"full": {}, f"LoRA r{rank}": {"lora_rank": rank}, f"QLoRA r{rank} int8": {"lora_rank": rank,
              "quantize": "int8"}, f"QLoRA r{rank} nf4": {"lora_rank": rank, "quantize": "nf4"}}
  plans = {k: memory_plan(config, n_params=n, **kwargs, **v) for k, v in variants.items()}
  fields = ("params", "grads", "optimizer", "reference", "activations", "kv_cache", "total")
  lines = ["| GiB per chip | " + " | ".join(fields) + " |", "|---" * (len(fields) + 1) + "|"]
  for label, plan in plans.items():
    lines.append(f"| {label} | " + " | ".join(f"{getattr(plan, f):.2f}" for f in fields) + " |")
  return "\n".join(lines)


def format_lora_plans(preset: str = "qwen2.5-vl-7b", rank: int = 16) -> str:
  """The 7B recipe's memory with LoRA and QLoRA: 32 chips as in the table above, a v5e-8 and one GPU."""
  from geojax.models.presets import PRESETS
  config = PRESETS[preset]
  adapters, _ = lora_counts(config, rank)
  out = [f"{preset}: {count_params(config) / 1e9:.2f}B params; LoRA r{rank} on the decoder projections: "
         f"{adapters / 1e6:.1f}M adapter params"]
  for title, kwargs in (("32 chips, 8 x 1024 tokens per chip, remat full", dict(chips=32)),
                        ("8 chips (v5e-8), 2 x 1024 tokens per chip, remat full", dict(chips=8, micro_batch=2,
                                                                                        rollout_batch=8)),
                        ("1 chip (one GPU), 1 x 1024 tokens, remat full", dict(chips=1, micro_batch=1,
                                                                              rollout_batch=8))):
    out += ["", title + ":", lora_table(config, rank, remat_policy="full", **kwargs)]
  return "\n".join(out)


if __name__ == "__main__":
  from geojax.models.presets import PRESETS
  print(f"Qwen2.5-VL-7B ({count_params(PRESETS['qwen2.5-vl-7b']) / 1e9:.2f}B params), 32 chips:")
  print(table(PRESETS["qwen2.5-vl-7b"]))
  print()
  print(format_lora_plans())
