"""Will it fit? Compiles a config's real programs for a TPU slice (or N CPU devices) and prints their per-chip memory,
FLOPs, a roofline time and compile seconds, with no weights loaded and no accelerator needed.

  python -m geojax.plan --config=configs/geo_r.py --topology=v5e:4x8
  python -m geojax.plan --config=configs/globe.py --topology=v5p:2x2x4 --programs=grpo_step,generate
  python -m geojax.plan --config=configs/default.py --platform=cpu --devices=8
  python -m geojax.plan --config=configs/geo_r.py --topology=v5e:4x8 --text_layers=2 --vision_depth=4  # quicker

The programs are the ones training runs, built by the project's own code: the SFT learner's update (`sft_step`),
the GRPO learner's update (`grpo_step`), the reference policy's log-prob pass (`reference`) and the rollout sampler
(`generate`), each jitted as in training and compiled with `.lower(...).compile()` on abstract arguments
(jax.ShapeDtypeStruct with the NamedShardings of the model's logical-axis rules on the config's mesh). Batch shapes
come from the config (batch sizes, prompt and answer lengths, G, new tokens) and one photo of the largest size the
recipe admits (`data.grid_buckets`' largest bucket, else the largest square photo whose prompt fits
`data.max_prompt_len` and `data.max_pixels`; `--image=HxW` to choose).

A TPU target needs the TPU compiler (`pip install -e .[tpu-plan]`, i.e. jax[tpu], which brings libtpu; this machine
needs no TPU): `--topology=v5e:4x8` (v4, v5e, v5p, v6e slices) is resolved by
`jax.experimental.topologies.get_topology_desc`. libtpu prints warnings about hostnames and the accelerator type;
they are harmless here.

Per chip, a program needs its arguments, outputs (less those aliased to donated arguments), temporaries and code
(XLA's memory_analysis), plus what stays resident between programs but is not its argument: the reference
parameters during the GRPO update and generation, the policy's train state during the reference pass, the
optimizer state during generation (and the training parameters, when it samples from their decode-layout copy).
`total` is that sum, and the plan fits when every program's total is below
the chip's HBM. FLOPs and bytes are XLA's cost analysis of the compiled per-chip program, which counts a loop body
once (the decode loop, micro-batch and chunk scans), so the roofline time is a lower bound for looped programs.
The last line printed is one JSON object with the figures (for scripts and CI).

Under LoRA (`--config.model.lora.rank=16`, QLoRA with `--config.model.lora.quantize=nf4`) the model is built abstract
with its adapters and (quantized) frozen base; the learners' programs take the base as an argument (training closes
over it), the train state and optimizer are the adapters', the reference is the shared base with a copy of the
adapters, and the decode-layout rollout samples the merged weights.
"""
from __future__ import annotations

import copy
import dataclasses
import io
import json
import math
import os
import re
import tempfile
import time
import types

import jax
import ml_collections
import numpy as np
from absl import flags, logging
from jax.sharding import NamedSharding, PartitionSpec as P

from geojax import config as gconfig
from geojax.config_schema import validate

PROGRAMS = ("sft_step", "grpo_step", "reference", "generate")
COMPILE_ORDER = ("grpo_step", "sft_step", "generate", "reference")  # the likeliest not to fit first
GIB = 1 << 30
COLLECTIVES = ("all-gather", "all-reduce", "reduce-scatter", "all-to-all", "collective-permute")
_COLLECTIVE_RE = re.compile(r"\b(" + "|".join(COLLECTIVES) + r")(?:-start)?\(")


@dataclasses.dataclass(frozen=True)
class Chip:
  """Per-chip HBM (GiB), peak bf16 FLOP/s and HBM bandwidth (bytes/s), from the Cloud TPU system pages."""
  hbm_gib: float
  peak_flops: float
  hbm_bytes_per_s: float


CHIPS = {  # by jax device_kind
    "TPU v4": Chip(32, 275e12, 1228e9),
    "TPU v5 lite": Chip(16, 197e12, 819e9),   # v5e
    "TPU v5": Chip(95, 459e12, 2765e9),       # v5p
    "TPU v6 lite": Chip(32, 918e12, 1640e9),  # v6e (Trillium)
}


@dataclasses.dataclass
class Target:
  name: str
  devices: list
  chip: Chip | None  # None: unknown peak figures (CPU)
  hbm_gib: float


def tpu_target(topology: str, hbm_gib: float = 0.0) -> Target:
  """The devices of a TPU slice such as "v5e:4x8", from the TPU compiler (libtpu) without a TPU."""
  os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")  # no metadata server to ask on a machine without a TPU
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")  # no TPU to lock: plans may run side by side
  from jax.experimental import topologies
  try:
    devices = topologies.get_topology_desc(platform="tpu", topology_name=topology).devices
  except Exception as e:  # libtpu missing, or a name it does not know
    raise gconfig.ConfigError(f"--topology={topology}: {type(e).__name__}: {e} (the TPU compiler comes with "
                              "`pip install -e .[tpu-plan]`)") from None
  kind = devices[0].device_kind
  chip = CHIPS.get(kind)
  if chip is None and not hbm_gib:
    raise gconfig.ConfigError(f"--topology={topology}: no HBM figure for device kind {kind!r}; pass --hbm_gib")
  return Target(topology, list(devices), chip, hbm_gib or chip.hbm_gib)


def cpu_target(n: int, hbm_gib: float = 0.0) -> Target:
  """n host CPU devices (jax_num_cpu_devices; before jax's CPU backend starts). HBM: the host memory / n."""
  try:
    jax.config.update("jax_num_cpu_devices", n)
  except RuntimeError:  # the backend already started (tests: XLA_FLAGS gives the devices)
    pass
  devices = jax.devices("cpu")
  if len(devices) < n:
    raise gconfig.ConfigError(f"--devices={n}: this process has {len(devices)} CPU devices "
                              f"(XLA_FLAGS=--xla_force_host_platform_device_count={n})")
  host = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GIB
  return Target(f"cpu:{n}", devices[:n], None, hbm_gib or host / n)


# ------------------------------------------------------------------------------------------------ abstract inputs
def _spec_over_examples(mesh, shape, axis: int = 0) -> P:
  """The PartitionSpec `geojax.data.batch.put_batch` gives a field: examples over (data, fsdp) where they divide."""
  axes = tuple(a for a in ("data", "fsdp") if a in mesh.shape)
  size = int(np.prod([mesh.shape[a] for a in axes])) if axes else 1
  if not axes or len(shape) <= axis or shape[axis] % size:
    return P()
  return P(*([None] * axis), axes if len(axes) > 1 else axes[0])


def abstract_batch(batch: dict, mesh, keys) -> dict:
  """Host batch fields as ShapeDtypeStructs placed as `put_batch` places them."""
  from geojax.data.batch import example_axis
  return {k: jax.ShapeDtypeStruct(np.shape(batch[k]), np.asarray(batch[k]).dtype,
                                  sharding=NamedSharding(mesh, _spec_over_examples(mesh, np.shape(batch[k]),
                                                                                   example_axis(k))))
          for k in keys}


def abstract_rows(mesh, shape, dtype) -> jax.ShapeDtypeStruct:
  """A per-row device array ([B*G, ...]) sharded over examples, as the sampler's outputs are used."""
  return jax.ShapeDtypeStruct(shape, dtype, sharding=NamedSharding(mesh, _spec_over_examples(mesh, shape)))


def replicated(mesh, shape, dtype) -> jax.ShapeDtypeStruct:
  return jax.ShapeDtypeStruct(shape, dtype, sharding=NamedSharding(mesh, P()))


def like_params(tree, params, mesh):
  """ShapeDtypeStructs of `tree` (a train state or optimizer state from jax.eval_shape) with the sharding of the
  parameter each leaf mirrors (same path suffix and shape: AdamW moments, as `tx.init` on sharded parameters
  makes them), replicated otherwise (counts, the step)."""
  by_path = {tuple(str(k) for k in path): leaf for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]}

  def one(path, leaf):
    keys = tuple(str(k) for k in path)
    for i in range(len(keys)):
      p = by_path.get(keys[i:])
      if p is not None and tuple(p.shape) == tuple(leaf.shape):
        return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=p.sharding)
    return replicated(mesh, leaf.shape, leaf.dtype)

  return jax.tree_util.tree_map_with_path(one, tree)


def _bits(dtype) -> int:
  """Bits per element: 4 for a QLoRA base's nf4 values (uint4, two to a byte on a TPU), not numpy's byte."""
  import ml_dtypes
  dtype = np.dtype(dtype)
  return ml_dtypes.iinfo(dtype).bits if dtype.kind in "iu" else dtype.itemsize * 8


def per_chip_bytes(tree) -> int:
  """Bytes one chip holds of the (sharded) ShapeDtypeStructs of `tree`."""
  bits = 0
  for leaf in jax.tree.leaves(tree):
    shape = leaf.sharding.shard_shape(leaf.shape) if leaf.sharding is not None else leaf.shape
    bits += int(np.prod(shape)) * _bits(leaf.dtype)
  return -(-bits // 8)


# ------------------------------------------------------------------------------------------------ example batches
def _photo(height: int, width: int) -> bytes:
  from PIL import Image
  pixels = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
  out = io.BytesIO()
  Image.fromarray(pixels).save(out, format="PNG")
  return out.getvalue()


def _record(height: int, width: int) -> dict:
  return {"image": _photo(height, width), "lat": 48.8566, "lon": 2.3522, "country": "France", "admin1": "Ile-de-France",
          "city": "Paris", "label": "Country: France", "reasoning": "", "id": "plan", "clues": []}


def largest_photo(config: ml_collections.ConfigDict, tokenizer) -> tuple[int, int]:
  """(height, width) in pixels of the largest photo the recipe admits: the largest grid bucket whose prompt fits,
  else the largest square photo whose prompt fits data.max_prompt_len within data.max_pixels."""
  from geojax.data.batching import BadRecord
  from geojax.experiment import example_transform
  dc = config.data
  transform = example_transform(config, tokenizer, "rl")
  patch, unit = 14, 28
  buckets = sorted((tuple(b) for b in dc.get("grid_buckets", ()) or ()), key=lambda b: -b[0] * b[1])
  for h, w in buckets:
    try:
      transform(_record(h * patch, w * patch))
      return h * patch, w * patch
    except BadRecord:
      continue
  if buckets:
    raise gconfig.ConfigError(f"config key 'data.grid_buckets': no bucket's prompt fits data.max_prompt_len "
                              f"({dc.max_prompt_len})")
  side = max(unit, int(math.isqrt(dc.min_pixels)) // unit * unit)
  probe = transform(_record(side, side))
  image_tokens = int(np.prod(probe["grid_thw"])) // 4
  budget = min(dc.max_prompt_len - (len(probe["prompt_ids"]) - image_tokens), dc.max_pixels // (unit * unit))
  side = max(int(math.isqrt(max(budget, 1))), 1) * unit
  return side, side


def example_batch(config, tokenizer, mode: str, batch_size: int, photo: tuple[int, int]) -> dict:
  """A collated host batch of `batch_size` copies of one example with a photo of `photo` pixels, as the loader of
  `mode` ("sft" or "rl") would collate it: the config's padded lengths and the photo's image grid."""
  from geojax.experiment import example_transform
  transform = example_transform(config, tokenizer, mode)
  features = transform(_record(*photo))
  return transform.collate([features] * batch_size, batch_size=batch_size)


# ------------------------------------------------------------------------------------------------ programs
@dataclasses.dataclass
class Program:
  name: str
  lowered: object
  resident: int  # bytes per chip that stay alive during this program but are not its arguments
  lower_s: float


def _with_rest(owner, fn, static_argnames=(), donate_argnums=()):
  """`fn`, a method of `owner` (a learner or reference policy) that merges `owner.rest` (the model's state other than
  its trained parameters: under LoRA the frozen base) into the model, jitted with that state as its first argument
  (pass static arguments by name). Training closes over the concrete base; an abstract one cannot be closed over,
  and as an argument it is counted."""
  def wrapped(rest, *args, **kwargs):
    saved, owner.rest = owner.rest, rest
    try:
      return fn(*args, **kwargs)
    finally:
      owner.rest = saved
  return jax.jit(wrapped, static_argnames=static_argnames, donate_argnums=tuple(i + 1 for i in donate_argnums))


def _abstract_learner(build, params, mesh):
  """(learner, its train state and the reference parameters as sharded ShapeDtypeStructs): `build(params)` runs
  the learner's constructor under jax.eval_shape, so the optimizer state and the reference copy are never
  allocated; the learner's jitted functions are then lowered on the abstract state."""
  box = {}

  def traced(p):
    learner = box["learner"] = build(p)
    ref = getattr(learner, "reference", None)
    return learner.state, (ref.params if ref is not None else None)

  state, ref_params = jax.eval_shape(traced, params)
  return box["learner"], like_params(state, params, mesh), like_params(ref_params, params, mesh)


def build_programs(config: ml_collections.ConfigDict, target: Target, programs, *, text_layers: int = 0,
                   vision_depth: int = 0, photo: tuple[int, int] | None = None):
  """The lowered programs of `config` on `target`'s devices (see the module docstring), and a description."""
  from flax import nnx

  from geojax import experiment, runtime
  from geojax.data.tokenizer import load_tokenizer
  from geojax.learners.grpo import GRPOLearner
  from geojax.learners.rollout import PROMPT_KEYS, rollout_shape
  from geojax.learners.sft import SFT_KEYS, SFTLearner
  from geojax.models import grid_tuple, lora
  from geojax.models.sharding import MESH_AXES, make_mesh

  config = copy.deepcopy(config)
  config.workdir = tempfile.mkdtemp(prefix="geojax_plan_")  # the learners' (empty) checkpoint directories
  rc = config.runtime
  training, _ = runtime.split_devices(config.rollout.devices, target.devices)  # rollout.devices: the last N
  mesh = make_mesh([rc.mesh.get(a, 1) for a in MESH_AXES], MESH_AXES, training)
  # a preset without hf_path: the published Qwen2 vocabulary
  tokenizer = load_tokenizer(config.model.tokenizer or config.model.hf_path or "qwen2")
  arch = reduce_depth(experiment.architecture(config, tokenizer), text_layers, vision_depth)
  photo = photo or largest_photo(config, tokenizer)
  out, gc = [], config.grpo
  with jax.set_mesh(mesh):
    model = experiment.build_model(config, tokenizer, mesh, arch=arch, shapes_only=True)
    graphdef, params, rest = lora.split_params(model)  # under LoRA: the adapters, and the frozen base in rest
    if "sft_step" in programs:
      learner, state, _ = _abstract_learner(
          lambda p: SFTLearner(config, nnx.merge(graphdef, p, rest), mesh, loader=None), params, mesh)
      batch = example_batch(config, tokenizer, "sft", config.sft.batch_size, photo)
      t0 = time.time()
      update = _with_rest(learner, learner._update_fn, ("grid",), (0,))
      lowered = update.lower(learner.rest, state, abstract_batch(batch, mesh, SFT_KEYS),
                             grid=grid_tuple(batch["image_grid_thw"]))
      out.append(Program("sft_step", lowered, 0, time.time() - t0))
      learner.close()
    rl = [p for p in programs if p != "sft_step"]
    if rl:
      learner, state, ref_params = _abstract_learner(
          lambda p: GRPOLearner(config, nnx.merge(graphdef, p, rest), mesh, types.SimpleNamespace(loader=None),
                                gaz="unused"), params, mesh)
      batch = example_batch(config, tokenizer, "rl", gc.batch_size, photo)
      prompt = abstract_batch(batch, mesh, PROMPT_KEYS)
      grid, prompt_len = rollout_shape(batch, gc.group_size)
      rows, n_new = gc.batch_size * gc.group_size, gc.max_new_tokens
      tokens = abstract_rows(mesh, (rows, n_new), np.int32)
      lengths = abstract_rows(mesh, (rows,), np.int32)
      logprobs = abstract_rows(mesh, (rows, n_new), np.float32)
      ref_bytes, opt_bytes = per_chip_bytes(ref_params), per_chip_bytes(state["opt_state"])
      if "grpo_step" in rl:
        t0 = time.time()
        update = _with_rest(learner, learner._update_fn, ("grid", "prompt_len"), (0,))
        lowered = update.lower(learner.rest, state, prompt, tokens, lengths, abstract_rows(mesh, (rows,), np.float32),
                               logprobs if learner.reference is not None else None, logprobs, grid=grid,
                               prompt_len=prompt_len, old_logprobs=logprobs if config.rollout.off_policy else None)
        out.append(Program("grpo_step", lowered, ref_bytes, time.time() - t0))
      if "reference" in rl and learner.reference is not None:
        t0 = time.time()
        ref = learner.reference
        lowered = _with_rest(ref, ref._logprobs_fn, ("grid", "prompt_len")).lower(
            ref.rest, ref_params, prompt, tokens, lengths, grid=grid, prompt_len=prompt_len)
        out.append(Program("reference", lowered, per_chip_bytes(state), time.time() - t0))
      if "generate" in rl:
        out.append(_generate_program(model, state["params"], config, tokenizer, batch, target, ref_bytes + opt_bytes))
      learner.close()
  # the model's weights (a QLoRA base's quantized values counted, not their scales) and what trains of them
  weights = nnx.state(model, nnx.All(nnx.Param, nnx.Not(nnx.LoRAParam)))
  quantized = [v for p, v in nnx.to_flat_state(nnx.state(model, lora.Frozen)) if p[-1] == "qvalue"]
  n_params = sum(int(np.prod(x.shape)) for x in [*jax.tree.leaves(weights), *quantized])
  grid = grid_tuple(example_batch(config, tokenizer, "rl", 1, photo)["image_grid_thw"])[0]
  trainable = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
  lc = config.model.lora
  info = {"mesh": dict(mesh.shape), "params": n_params, "trainable": trainable,
          "lora": {"rank": lc.rank, "targets": lc.targets, "quantize": lc.quantize} if lc.rank else None,
          "photo": list(photo), "image_grid": list(grid), "vocab_size": arch.text.vocab_size,
          "text_layers": arch.text.num_layers,
          "vision_depth": arch.vision.depth}
  return out, info


def _generate_program(model, params, config, tokenizer, batch: dict, target: Target, resident: int) -> Program:
  """The rollout sampler of `geojax.learners.grpo.policy_sampler` (in config.rollout's layout) lowered on abstract
  parameters and the example prompts: its first decode phase, the longest."""
  from flax import nnx

  from geojax import runtime
  from geojax.learners.grpo import rollout_layout, rollout_sampler
  from geojax.models import lora
  layout = rollout_layout(config, model, runtime.split_devices(config.rollout.devices, target.devices)[1])
  sampler = rollout_sampler(model if layout is None else layout.model, config.grpo, tokenizer)
  if config.rollout.devices:  # rollout chips of their own hold no training state
    resident = 0
  elif layout is not None:  # the training weights (a LoRA base and adapters) stay while their decoding copy samples
    resident += per_chip_bytes(nnx.state(model, nnx.Any(nnx.Param, lora.Frozen)))
  t0 = time.time()
  rng = jax.eval_shape(lambda: jax.random.key(0))  # abstract: no device, so no mesh of its own
  lowered = sampler.lower(params if layout is None else layout.abstract(), batch["input_ids"],
                          batch["attention_mask"], batch["pixel_values"], batch["image_grid_thw"],
                          position_ids=batch["position_ids"], rng=rng)
  return Program("generate", lowered, resident, time.time() - t0)


def reduce_depth(arch, text_layers: int = 0, vision_depth: int = 0):
  """`arch` with fewer text layers / vision blocks (0: unchanged), for quicker compiles; the vision tower keeps its
  full-attention blocks below the new depth (at least its last block)."""
  if text_layers:
    arch = arch.replace(text=dataclasses.replace(arch.text, num_layers=text_layers))
  if vision_depth:
    v = arch.vision
    full = tuple(i for i in v.fullatt_block_indexes if i < vision_depth) or (vision_depth - 1,)
    if arch.version == "qwen2_vl":
      full = tuple(range(vision_depth))
    arch = arch.replace(vision=dataclasses.replace(v, depth=vision_depth, fullatt_block_indexes=full))
  return arch


def collective_counts(hlo_text: str) -> dict[str, int]:
  """How many of each collective the compiled HLO holds (async pairs counted once, by their -start)."""
  counts = dict.fromkeys(COLLECTIVES, 0)
  for match in _COLLECTIVE_RE.finditer(hlo_text):
    counts[match.group(1)] += 1
  return counts


def _cost(compiled) -> dict:
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else {}
  return cost or {}


def compile_program(program: Program, target: Target) -> dict:
  """Compiles a lowered program; its per-chip memory, FLOPs, roofline time, compile seconds and collectives. A
  program the compiler refuses for want of memory is reported (`over_hbm`) with the temporaries it asked for."""
  t0, cpu0 = time.time(), time.process_time()
  try:
    compiled = program.lowered.compile()
  except jax.errors.JaxRuntimeError as e:
    if "should include all slice devices" in str(e):  # v5e: no program on part of a slice
      raise gconfig.ConfigError(f"config key 'rollout.devices': the TPU compiler for {target.name} refuses the "
                                f"{program.name} program on part of the slice: {str(e).splitlines()[0]}") from None
    if "RESOURCE_EXHAUSTED" not in str(e):
      raise
    return _over_hbm(program, str(e), time.time() - t0, time.process_time() - cpu0)
  compile_s, compile_cpu_s = time.time() - t0, time.process_time() - cpu0  # CPU seconds: steadier on a busy host
  m = compiled.memory_analysis()
  args, outs, alias, temp = (m.argument_size_in_bytes, m.output_size_in_bytes, m.alias_size_in_bytes,
                             m.temp_size_in_bytes)
  code = getattr(m, "generated_code_size_in_bytes", 0)
  total = args + outs - alias + temp + code + program.resident
  cost = _cost(compiled)
  flops, nbytes = float(cost.get("flops", 0.0)), float(cost.get("bytes accessed", 0.0))
  roofline = None
  if target.chip is not None:
    roofline = max(flops / target.chip.peak_flops, nbytes / target.chip.hbm_bytes_per_s)
  hlo = compiled.as_text() or ""
  out = {"argument_gib": args / GIB, "output_gib": (outs - alias) / GIB, "temp_gib": temp / GIB,
         "resident_gib": program.resident / GIB, "per_chip_gib": total / GIB, "flops": flops,
         "bytes_accessed": nbytes, "roofline_s": roofline, "lower_s": program.lower_s, "compile_s": compile_s,
         "compile_cpu_s": compile_cpu_s, "collectives": collective_counts(hlo)}
  if program.name == "generate":  # what the decode loop gathers at every token (a loop body is compiled once)
    from geojax.sampling.layout import loop_all_gathers
    gathers = loop_all_gathers(hlo)
    out["loop_all_gathers"] = {"count": len(gathers), "largest": max(gathers, default=0)}
  return out


def _over_hbm(program: Program, message: str, compile_s: float, compile_cpu_s: float) -> dict:
  """The row of a program the TPU compiler refused ("Ran out of memory on HBM ... HLO temporaries (32.62G)"): its
  temporaries as the compiler states them, the rest unknown (NaN), and at least temporaries + resident in all."""
  nan = math.nan
  found = re.search(r"temporaries \(([\d.]+)([KMGT])\)", message)
  temp = float(found.group(1)) * 1024 ** "KMGT".index(found.group(2)) / 1024 ** 2 if found else nan
  return {"argument_gib": nan, "output_gib": nan, "temp_gib": temp, "resident_gib": program.resident / GIB,
          "per_chip_gib": temp + program.resident / GIB if found else math.inf, "flops": nan,
          "bytes_accessed": nan, "roofline_s": None, "lower_s": program.lower_s, "compile_s": compile_s,
          "compile_cpu_s": compile_cpu_s, "collectives": dict.fromkeys(COLLECTIVES, 0),
          "over_hbm": message.strip().splitlines()[0]}


def format_table(results: dict[str, dict], hbm_gib: float) -> str:
  head = ("program", "args", "out", "temp", "resident", "total GiB", "of HBM", "GFLOP", "roofline ms", "lower s",
          "compile s", "CPU s", "AG", "AR", "RS", "A2A", "CP")
  rows = [head]
  for name, r in results.items():
    c = r["collectives"]
    rows.append((name, f"{r['argument_gib']:.2f}", f"{r['output_gib']:.2f}", f"{r['temp_gib']:.2f}",
                 f"{r['resident_gib']:.2f}", f"{r['per_chip_gib']:.2f}", f"{r['per_chip_gib'] / hbm_gib:.0%}",
                 f"{r['flops'] / 1e9:.1f}", "-" if r["roofline_s"] is None else f"{r['roofline_s'] * 1e3:.1f}",
                 f"{r['lower_s']:.1f}", f"{r['compile_s']:.1f}", f"{r['compile_cpu_s']:.1f}",
                 *(str(c[k]) for k in COLLECTIVES)))
  widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
  lines = ["| " + " | ".join(v.ljust(w) for v, w in zip(row, widths)) + " |" for row in rows]
  lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
  return "\n".join(lines)


def default_programs(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """The programs the config's stages run: sft_step for SFT; grpo_step, reference (beta > 0), generate for GRPO."""
  out = []
  if "sft" in config.stages:
    out.append("sft_step")
  if "grpo" in config.stages:
    out += ["grpo_step", "reference", "generate"] if config.grpo.beta > 0 else ["grpo_step", "generate"]
  return tuple(out)


def plan(config: ml_collections.ConfigDict, target: Target, programs=None, **build_kw) -> dict:
  """Compiles `programs` (default: the config's) for `target`; the JSON summary (also the table, on stdout)."""
  programs = tuple(programs or default_programs(config))
  unknown = sorted(set(programs) - set(PROGRAMS))
  if unknown:
    raise gconfig.ConfigError(f"--programs: unknown {unknown}; known: {list(PROGRAMS)}")
  if "reference" in programs and not config.grpo.beta > 0:
    raise gconfig.ConfigError("--programs: reference, but config key 'grpo.beta' is 0 (no reference policy)")
  lowered, info = build_programs(config, target, programs, **build_kw)
  results = {}
  for program in sorted(lowered, key=lambda p: COMPILE_ORDER.index(p.name)):
    r = results[program.name] = compile_program(program, target)
    if "over_hbm" in r:
      print(f"[plan] {program.name}: does not fit, the compiler refused it: {r['over_hbm']}", flush=True)
    print(f"[plan] {program.name}: {r['per_chip_gib']:.2f} GiB per chip, compiled in {r['compile_s']:.1f}s "
          f"({r['compile_cpu_s']:.0f} CPU-s) {json.dumps(r)}", flush=True)
    largest = r.get("loop_all_gathers", {}).get("largest", 0)
    if largest >= info["vocab_size"]:  # a weight, or a full row of logits
      hint = ("; config key 'rollout.layout' is 'train': 'decode' reshards the policy so that no step gathers a weight"
              if config.rollout.layout == "train" else "")
      print(f"[plan] generate: the decode loop all-gathers up to {largest:,} elements at every token, at least the "
            f"vocabulary's {info['vocab_size']:,} (a weight, or a full row of logits){hint}", flush=True)
  results = {name: results[name] for name in PROGRAMS if name in results}
  lora = "" if info["lora"] is None else (f", LoRA r{info['lora']['rank']} ({info['trainable'] / 1e6:.3g}M trainable"
                                       f", base {info['lora']['quantize']})")
  print(f"\n{target.name} ({len(target.devices)} chips, {target.hbm_gib:g} GiB each), mesh {info['mesh']}, "
        f"{info['params'] / 1e9:.3g}B params{lora} ({info['text_layers']} text layers, {info['vision_depth']} vision "
        f"blocks), photo {info['photo'][0]}x{info['photo'][1]} (grid {info['image_grid']})")
  print(format_table(results, target.hbm_gib))
  return {"topology": target.name, "chips": len(target.devices), "chip_hbm_gib": target.hbm_gib, **info,
          "programs": {name: {k: (float(f"{v:.4g}") if isinstance(v, float) else v) for k, v in r.items()}
                       for name, r in results.items()},
          "fits": all(r["per_chip_gib"] <= target.hbm_gib for r in results.values())}


def define_flags() -> None:
  gconfig.define_config_flag()
  flags.DEFINE_string("topology", "", "TPU slice to compile for, e.g. v5e:4x8, v5p:2x2x4, v6e:4x4 (needs .[tpu-plan]).")
  flags.DEFINE_enum("platform", "tpu", ["tpu", "cpu"], "tpu (with --topology) or cpu (with --devices).")
  flags.DEFINE_integer("devices", 8, "CPU devices for --platform=cpu.")
  flags.DEFINE_list("programs", [], f"Programs to compile, from {list(PROGRAMS)} (default: the config's stages').")
  flags.DEFINE_integer("text_layers", 0, "Compile with this many text decoder layers (0: the model's).")
  flags.DEFINE_integer("vision_depth", 0, "Compile with this many vision blocks (0: the model's).")
  flags.DEFINE_string("image", "", "Photo size HxW in pixels (default: the largest the config admits).")
  flags.DEFINE_float("hbm_gib", 0.0, "Per-chip memory to fit in, GiB (default: the chip's HBM; CPU: host RAM / N).")


def main(argv: list[str]) -> None:
  del argv
  f = flags.FLAGS
  logging.set_verbosity(logging.WARNING)
  config = f.config
  validate(config, reads_data=False, needs_weights=False, platform=f.platform)
  if f.platform == "cpu":
    target = cpu_target(f.devices, f.hbm_gib)
  elif not f.topology:
    raise gconfig.ConfigError("--topology is required with --platform=tpu (e.g. --topology=v5e:4x8)")
  else:
    target = tpu_target(f.topology, f.hbm_gib)
  photo = None
  if f.image:
    try:
      photo = tuple(int(x) for x in f.image.lower().split("x"))
    except ValueError:
      photo = ()
    if len(photo) != 2 or min(photo) < 1:
      raise gconfig.ConfigError(f"--image={f.image}: expected HxW in pixels, e.g. 448x448")
  summary = plan(config, target, f.programs, text_layers=f.text_layers, vision_depth=f.vision_depth, photo=photo)
  print(json.dumps(summary), flush=True)


if __name__ == "__main__":
  define_flags()
  gconfig.run(main)
