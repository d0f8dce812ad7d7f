"""Per-device memory and decode-loop all-gathers of a compiled rollout, before and after the decode layout.

    python scripts/plan_rollout.py [--preset qwen2.5-vl-7b] [--devices 8] [--prompts 8] [--group 16]
        [--prompt_len 512] [--new_tokens 1024] [--rollout_mesh 2,1,4] [--dtype bfloat16]

Compiles (never runs) the Sampler's first decode phase for the preset's architecture on `devices` fake CPU devices
with abstract parameters: "train layout" is what GRPO sampled with before (the trainer's float32 parameters,
FSDP-sharded by the training rules over all devices, phases off); "decode layout" casts them to --dtype and reshards
them by geojax.sampling.DECODE_RULES on the rollout mesh (data, fsdp, tensor). Prints XLA's per-device memory
analysis, the weight and KV-cache bytes per chip, and the all-gathers inside the decode while-loop (count and largest,
in elements). Prompts hold one image of 32 x 32 patches (256 tokens) and text up to --prompt_len.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--preset", default="qwen2.5-vl-7b")
parser.add_argument("--devices", type=int, default=8)
parser.add_argument("--prompts", type=int, default=8)
parser.add_argument("--group", type=int, default=16)
parser.add_argument("--prompt_len", type=int, default=512)
parser.add_argument("--new_tokens", type=int, default=1024)
parser.add_argument("--rollout_mesh", default="2,1,4", help="data,fsdp,tensor of the decode layout's mesh")
parser.add_argument("--dtype", default="bfloat16")
parser.add_argument("--layouts", default="train,decode")
args = parser.parse_args()
os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={args.devices}"
os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from geojax.models import make_mesh  # noqa: E402
from geojax.models.presets import PRESETS  # noqa: E402
from geojax.models.qwen_vl import QwenVL  # noqa: E402
from geojax.models.sharding import param_shardings  # noqa: E402
from geojax.sampling import RolloutLayout, Sampler  # noqa: E402
from geojax.sampling.layout import loop_all_gathers  # noqa: E402

GIB = 1024 ** 3


def prompts(config, batch: int, length: int):
  """Left-aligned full prompts: text, one 32 x 32-patch image (256 tokens), text."""
  grid = np.tile(np.array([[1, 32, 32]], np.int32), (batch, 1))
  image = [config.vision_start_token_id] + [config.image_token_id] * 256 + [config.vision_end_token_id]
  row = [11] * 8 + image + [12] * (length - 8 - len(image))
  ids = np.tile(np.asarray(row, np.int32), (batch, 1))
  pixels = np.zeros((batch * 32 * 32, 3 * 2 * 14 * 14), np.float32)
  return ids, np.ones_like(ids), pixels, grid


def report(name: str, sampler: Sampler, params, inputs, weight_bytes: float, kv_bytes: float) -> None:
  start = time.perf_counter()
  compiled = sampler.lower(params, *inputs, rng=jax.random.key(0)).compile()
  seconds = time.perf_counter() - start
  mem = compiled.memory_analysis()
  gathers = loop_all_gathers(compiled.as_text())
  print(f"{name}: per device arguments {mem.argument_size_in_bytes / GIB:.2f} GiB, temp "
        f"{mem.temp_size_in_bytes / GIB:.2f} GiB, output {mem.output_size_in_bytes / GIB:.2f} GiB; weights "
        f"{weight_bytes / GIB:.2f} GiB and KV cache {kv_bytes / GIB:.2f} GiB per chip; decode-loop all-gathers: "
        f"{len(gathers)}, largest {max(gathers, default=0)} elements (compiled in {seconds:.0f} s)", flush=True)


def main() -> None:
  config = PRESETS[args.preset]
  print(f"{args.preset} on {args.devices} devices: {args.prompts} prompts x G={args.group}, prompt {args.prompt_len}, "
        f"{args.new_tokens} new tokens", flush=True)
  inputs = prompts(config, args.prompts, args.prompt_len)
  rows, length = args.prompts * args.group, args.prompt_len + args.new_tokens - 1
  kw = dict(max_new_tokens=args.new_tokens, temperature=1.0, top_k=50, eos_token_id=151645, num_samples=args.group)
  policy = nnx.eval_shape(lambda: QwenVL(config, dtype=jnp.float32, param_dtype=jnp.float32, rngs=nnx.Rngs(0)))
  if "train" in args.layouts:
    mesh = make_mesh((1, args.devices, 1))
    state = nnx.state(policy, nnx.Param)
    shardings = param_shardings(state, mesh)
    params = jax.tree.map(lambda v, s: v.replace(jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=s.get_value())),
                          state, shardings, is_leaf=lambda x: isinstance(x, nnx.Variable))
    weights = sum(int(np.prod(s.shard_shape(v.shape))) * 4 for v, s in zip(jax.tree.leaves(state),
                                                                             jax.tree.leaves(shardings)))
    cfg = config.text
    kv = 2 * cfg.num_layers * rows * length * cfg.num_kv_heads * cfg.head_dim * 4  # unsharded (2 KV heads / 8)
    kv /= args.devices if rows % args.devices == 0 else 1  # rows over data x fsdp
    report("train layout (float32, FSDP, phases off)", Sampler(policy, phases=False, **kw), params, inputs, weights,
           kv)
  if "decode" in args.layouts:
    mesh = make_mesh(tuple(int(v) for v in args.rollout_mesh.split(",")))
    layout = RolloutLayout(policy, mesh, jnp.dtype(args.dtype))
    report(f"decode layout ({args.dtype}, mesh {dict(mesh.shape)})", Sampler(layout.model, **kw), layout.abstract(),
           inputs, layout.weight_bytes_per_chip(), layout.kv_cache_bytes_per_chip(rows, length))


if __name__ == "__main__":
  main()
