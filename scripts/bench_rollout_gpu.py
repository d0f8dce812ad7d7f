"""Rollout tokens/s on one GPU in bfloat16: geojax's Sampler vs transformers' generate, 3B-shaped language model.

    python scripts/bench_rollout_gpu.py [--prompts 8] [--group 4] [--prompt_len 128] [--new_tokens 128]

Both sides get random weights of the Qwen2.5-3B language model's shape (hidden 2048, 36 layers, 16 heads, 2 KV heads,
MLP 11008, vocab 151936, tied; a small vision tower, unused: text prompts) in bfloat16 on the GPU, initialized
separately (different weights: the measure is throughput, every row decodes all new tokens, no EOS). The same
left-padded-free prompts; G samples per prompt (geojax tiles the prefilled cache; transformers repeats the prompts),
temperature 1, top-k 50. tokens/s = rows x new tokens / best wall time of a whole call (host ids in, tokens out);
geojax's compile is excluded and printed apart.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.6")  # torch holds its model on the same GPU

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

TEXT = dict(vocab_size=151936, hidden_size=2048, num_layers=36, num_heads=16, num_kv_heads=2, intermediate_size=11008)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--prompts", type=int, default=8)
  parser.add_argument("--group", type=int, default=4)
  parser.add_argument("--prompt_len", type=int, default=128)
  parser.add_argument("--new_tokens", type=int, default=128)
  parser.add_argument("--reps", type=int, default=2)
  parser.add_argument("--tiny", action="store_true", help="a tiny model on whatever device (a smoke test)")
  args = parser.parse_args()
  rows = args.prompts * args.group
  ids = np.random.default_rng(0).integers(0, 150000, (args.prompts, args.prompt_len)).astype(np.int32)
  print(f"jax {jax.__version__} on {jax.devices()[0].device_kind}; {args.prompts} prompts x G={args.group}, prompt "
        f"{args.prompt_len}, {args.new_tokens} new tokens, bfloat16", flush=True)

  import torch
  from geojax.models import testing
  text = dict(TEXT, hidden_size=64, num_layers=2, num_heads=4, intermediate_size=128) if args.tiny else TEXT
  config = testing.hf_config("qwen2_5_vl", tie_word_embeddings=True, vision_hidden=64, **text)
  device = "cuda" if torch.cuda.is_available() else "cpu"
  from transformers import Qwen2_5_VLForConditionalGeneration
  torch.set_default_dtype(torch.bfloat16)
  with torch.device(device):
    hf = Qwen2_5_VLForConditionalGeneration(config).eval()
  torch.set_default_dtype(torch.float32)
  prompt = torch.from_numpy(np.repeat(ids, args.group, axis=0).astype(np.int64)).to(device)

  def run_hf():
    with torch.no_grad():
      out = hf.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=args.new_tokens,
                        min_new_tokens=args.new_tokens, do_sample=True, temperature=1.0, top_k=50, top_p=1.0,
                        pad_token_id=0)
    if device == "cuda":
      torch.cuda.synchronize()
    return out
  run_hf()
  hf_times = []
  for _ in range(args.reps):
    start = time.perf_counter()
    run_hf()
    hf_times.append(time.perf_counter() - start)
  hf_tps = rows * args.new_tokens / min(hf_times)
  print(f"transformers generate: best {min(hf_times):.2f} s, {hf_tps:.0f} tok/s", flush=True)

  from flax import nnx
  from geojax.models import QwenVLConfig
  from geojax.models.qwen_vl import QwenVL
  from geojax.sampling import Sampler
  ours = QwenVL(QwenVLConfig.from_hf(config.to_dict()), dtype=jnp.bfloat16, param_dtype=jnp.bfloat16,
                rngs=nnx.Rngs(0))
  sampler = Sampler(ours, max_new_tokens=args.new_tokens, temperature=1.0, top_k=50, num_samples=args.group)
  start = time.perf_counter()
  np.asarray(sampler(None, ids, rng=jax.random.key(0)).tokens)
  first = time.perf_counter() - start
  times = []
  for rep in range(args.reps):
    start = time.perf_counter()
    np.asarray(sampler(None, ids, rng=jax.random.key(rep + 1)).tokens)
    times.append(time.perf_counter() - start)
  tps = rows * args.new_tokens / min(times)
  print(f"geojax Sampler: first call {first:.1f} s (compile), best {min(times):.2f} s, {tps:.0f} tok/s; "
        f"{tps / hf_tps:.2f}x transformers", flush=True)


if __name__ == "__main__":
  main()
