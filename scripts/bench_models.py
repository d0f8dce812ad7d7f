"""Forward latency and agreement of geojax QwenVL vs transformers (torch, CPU) on the same random model.

    cd /work/main && HF_HUB_OFFLINE=1 /work/venv/bin/python scripts/bench_models.py --repeats 5

A mid-size random Qwen2.5-VL / Qwen2-VL (hidden 512, 4 text layers, vision 256 x 8 blocks) is built in
transformers, saved, loaded with geojax.models.load_hf; both run a batch of 4 prompts with one 224x224 image
each (256 patches -> 64 image tokens) in float32. Prints median seconds, ratio (> 1: geojax faster) and the
largest |diff| / max |logit|.
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import jax  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from flax import nnx  # noqa: E402

from geojax.data.mrope import rope_index  # noqa: E402
from geojax.models import grid_tuple, load_hf  # noqa: E402

IMAGE, START, END = 1000, 1001, 1002


def build_hf(version: str):
  from transformers import (Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2VLConfig,
                            Qwen2VLForConditionalGeneration)
  text = dict(vocab_size=4096, hidden_size=512, intermediate_size=1536, num_hidden_layers=4, num_attention_heads=8,
              num_key_value_heads=2, rope_parameters=dict(rope_type="default", mrope_section=[8, 12, 12],
                                                          rope_theta=1e6))
  ids = dict(image_token_id=IMAGE, video_token_id=1003, vision_start_token_id=START, vision_end_token_id=END)
  torch.manual_seed(0)
  if version == "qwen2_vl":
    config = Qwen2VLConfig(text_config=text, vision_config=dict(depth=8, embed_dim=256, hidden_size=512, num_heads=4,
                                                                mlp_ratio=4), **ids)
    return Qwen2VLForConditionalGeneration(config).eval()
  config = Qwen2_5_VLConfig(text_config=text, vision_config=dict(depth=8, hidden_size=256, intermediate_size=768,
                                                                 num_heads=4, out_hidden_size=512,
                                                                 fullatt_block_indexes=[3, 7]), **ids)
  return Qwen2_5_VLForConditionalGeneration(config).eval()


def median_time(fn, repeats: int) -> float:
  fn()  # warm up / compile
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--torch_threads", type=int, default=0, help="0: all cores")
  args = parser.parse_args()
  jax.config.update("jax_default_matmul_precision", "highest")
  torch.set_num_threads(args.torch_threads or os.cpu_count() or 1)
  rng = np.random.default_rng(0)
  batch, grid = 4, (1, 16, 16)
  prompt = [rng.integers(0, 900, 20).tolist() + [START] + [IMAGE] * 64 + [END] + rng.integers(0, 900, 40).tolist()
            for _ in range(batch)]
  ids = np.array(prompt, np.int32)
  mask = np.ones_like(ids)
  grids = np.array([grid] * batch)
  pixels = rng.standard_normal((batch * 256, 1176)).astype(np.float32)
  positions, _ = rope_index(ids, mask, grids, image_token_id=IMAGE)
  print(f"batch {batch} x {ids.shape[1]} tokens, one 224x224 image each; float32; {args.repeats} repeats")
  print("| model | transformers s | geojax jit s | ratio | max diff / max logit |")
  print("|---|---|---|---|---|")
  for version in ("qwen2_vl", "qwen2_5_vl"):
    hf = build_hf(version)
    with tempfile.TemporaryDirectory() as path:
      hf.save_pretrained(path)
      model = load_hf(path)
    torch_inputs = dict(input_ids=torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask),
                        pixel_values=torch.tensor(pixels), image_grid_thw=torch.tensor(grids),
                        mm_token_type_ids=torch.tensor((ids == IMAGE).astype(np.int64)))

    def run_hf():
      with torch.no_grad():
        return hf(**torch_inputs).logits.numpy()

    forward = nnx.jit(lambda m, i, k, p, pos: m(i, k, p, grid_tuple(grids), pos))
    run_ours = lambda: np.asarray(forward(model, ids, mask, pixels, positions))
    t_hf, t_ours = median_time(run_hf, args.repeats), median_time(run_ours, args.repeats)
    ref = run_hf()
    err = np.abs(run_ours() - ref).max() / np.abs(ref).max()
    print(f"| {version} | {t_hf:.3f} | {t_ours:.3f} | {t_hf / t_ours:.2f}x | {err:.1e} |")


if __name__ == "__main__":
  main()
