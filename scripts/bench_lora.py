"""The main job (configs/default.py) with full fine-tuning against LoRA and QLoRA (nf4 base by qwix), and the 7B
memory plans.

    python scripts/bench_lora.py                                  # full, lora (rank 16), qlora (rank 16, nf4)
    python scripts/bench_lora.py --sft_steps 100 --grpo_steps 10 --eval_examples 100 --parallel  # shorter
    python scripts/bench_lora.py --plan_only                      # only the 7B memory plans
    python scripts/bench_lora.py --base sft --lora_lr_scale 10    # after the first: GRPO from the full SFT model

Each variant is a fresh process running `geojax.train.train` on the same config apart from model.lora.*: trainable
parameters, optimizer-state and last-checkpoint bytes, median step time of each stage (steps after the first, which
compiles), peak RSS of the process (ru_maxrss: CPU, so parameters, activations, data and compiler together), wall
time and the final metric table. The variants run one after another on the same machine; ratios are to "full".
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # this tree's geojax, not an installed one (the variants run as child processes)
VARIANTS = {"full": {}, "lora": {"model.lora.rank": 16}, "qlora": {"model.lora.rank": 16, "model.lora.quantize": "nf4"}}


def child(variant: str, args) -> dict:
  """One variant's run in this process; returns its figures."""
  import jax

  from geojax import config as gconfig
  from geojax import train
  from geojax.learners import GRPOLearner, SFTLearner

  workdir = os.path.join(args.workdir, run_name(variant, args))
  overrides = {"workdir": workdir, "sft.steps": args.sft_steps,
               "grpo.steps": args.grpo_steps, "eval.num_examples": args.eval_examples, "log.progress": False,
               "log.tensorboard": False,
               "eval_before": False, **VARIANTS[variant]}
  if VARIANTS[variant] and args.lora_lr_scale != 1:
    base = gconfig.load(os.path.join(ROOT, "configs", "default.py"))
    overrides.update({f"{stage}.lr": base[stage].lr * args.lora_lr_scale for stage in ("sft", "grpo")})
  if args.base == "sft":  # GRPO only, from full fine-tuning's SFT model (exported by the parent)
    overrides.update({"stages": ("grpo",), "model.hf_path": os.path.join(args.workdir, "sft_hf"),
                      "eval_before": True})
  config = gconfig.load(os.path.join(ROOT, "configs", "default.py"), [f"{k}={v}" for k, v in overrides.items()])
  times: dict[str, list[float]] = {"sft": [], "grpo": []}
  sizes: dict[str, int] = {}

  def timed(cls):
    step = cls.train_step

    def wrapper(self):
      if self.name not in sizes:
        sizes["trainable"] = sum(x.size for x in jax.tree.leaves(self.state["params"]))
        sizes["opt_state_bytes"] = sum(x.nbytes for x in jax.tree.leaves(self.state["opt_state"]))
        sizes[self.name] = 1
      t0 = time.perf_counter()
      out = step(self)  # returns host metrics: the step is done
      times[self.name].append(time.perf_counter() - t0)
      return out
    cls.train_step = wrapper

  timed(SFTLearner)
  timed(GRPOLearner)
  start = time.time()
  results = train.train(config)
  wall = time.time() - start
  ckpt = os.path.join(config.workdir, "grpo", "checkpoints")
  last = max((d for d in os.listdir(ckpt) if d.isdigit()), key=int)
  ckpt_bytes = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(os.path.join(ckpt, last)) for f in fs)
  return {"variant": variant, "trainable": sizes["trainable"], "opt_state_bytes": sizes["opt_state_bytes"],
          "checkpoint_bytes": ckpt_bytes,
          "sft_step_s": statistics.median(times["sft"][1:]) if len(times["sft"]) > 1 else None,
          "grpo_step_s": statistics.median(times["grpo"][1:]) if len(times["grpo"]) > 1 else None,
          "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "wall_s": wall,
          "results": results}


def run_name(variant: str, args) -> str:
  """A variant's directory (and results file) name in --workdir: one per base and LoRA learning-rate scale."""
  name = variant if args.base == "scratch" else f"{variant}_from_sft"
  return name if args.lora_lr_scale == 1 else f"{name}_lr{args.lora_lr_scale:g}x"


def export_sft(workdir: str) -> str:
  """Full fine-tuning's SFT model (<workdir>/full/sft) as a Hugging Face directory, <workdir>/sft_hf."""
  from geojax import config as gconfig
  from geojax.export import export
  from geojax.runtime.numerics import pin_cpu_numerics
  pin_cpu_numerics()
  out = os.path.join(workdir, "sft_hf")
  if not os.path.exists(os.path.join(out, "config.json")):
    config = gconfig.load(os.path.join(ROOT, "configs", "default.py"), [f"workdir={os.path.join(workdir, 'full')}"])
    export(config, os.path.join(workdir, "full", "sft"), out)
  return out


def plans() -> str:
  """The 7B recipes' per-chip memory: full fine-tuning, LoRA rank 16, QLoRA rank 16 (nf4)."""
  from geojax.models.memory import format_lora_plans
  return format_lora_plans()


def table(rows: list[dict]) -> str:
  full = rows[0]
  ratio = lambda r, k: f" ({r[k] / full[k]:.2f}x)" if full.get(k) and r.get(k) else ""
  ms = lambda s: "-" if s is None else f"{s * 1e3:.0f} ms"  # noqa: E731 (no SFT stage from an SFT base)
  lines = ["| variant | trainable params | optimizer state | checkpoint | SFT step | GRPO step | peak RSS | wall |",
           "|---|---|---|---|---|---|---|---|"]
  for r in rows:
    lines.append(f"| {r['variant']} | {r['trainable']:,}{ratio(r, 'trainable')} | "
                 f"{r['opt_state_bytes'] / 2**20:.2f} MiB | {r['checkpoint_bytes'] / 2**20:.2f} MiB | "
                 f"{ms(r['sft_step_s'])}{ratio(r, 'sft_step_s')} | {ms(r['grpo_step_s'])}{ratio(r, 'grpo_step_s')} | "
                 f"{r['peak_rss_mib']:.0f} MiB{ratio(r, 'peak_rss_mib')} | {r['wall_s']:.0f} s |")
  from geojax.geo import format_table
  lines += ["", format_table({f"{r['variant']}: {label}": m for r in rows for label, m in r["results"].items()})]
  return "\n".join(lines)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--variants", default="full,lora,qlora")
  parser.add_argument("--sft_steps", type=int, default=1000, help="the main job's (configs/default.py)")
  parser.add_argument("--grpo_steps", type=int, default=300, help="the main job's (configs/default.py)")
  parser.add_argument("--eval_examples", type=int, default=0, help="test examples evaluated (0: all 400)")
  parser.add_argument("--parallel", action="store_true", help="run the variants at the same time (a shared, busy "
                      "machine then slows them alike)")
  parser.add_argument("--base", choices=("scratch", "sft"), default="scratch",
                      help="scratch: each variant runs SFT -> GRPO from the tiny model's random init (the main job); "
                           "sft: GRPO only, each variant starting from full fine-tuning's SFT model (exported from "
                           "<workdir>/full/sft, which a scratch run of the same workdir leaves), as LoRA is used on "
                           "a trained model")
  parser.add_argument("--lora_lr_scale", type=float, default=1.0,
                      help="the LoRA variants' learning rates as a multiple of full fine-tuning's")
  parser.add_argument("--workdir", default=os.path.join(ROOT, "runs", "bench_lora"))
  parser.add_argument("--plan_only", action="store_true")
  parser.add_argument("--child", default="")
  parser.add_argument("--out", default="")
  args = parser.parse_args()
  if args.child:
    from geojax.runtime.numerics import pin_cpu_numerics
    pin_cpu_numerics()  # as `python -m geojax.train` does: the full variant's table is the main job's
    with open(args.out, "w") as f:
      json.dump(child(args.child, args), f)
    return
  if not args.plan_only:
    os.makedirs(args.workdir, exist_ok=True)
    variants = args.variants.split(",")
    common = ["--sft_steps", str(args.sft_steps), "--grpo_steps", str(args.grpo_steps), "--eval_examples",
              str(args.eval_examples), "--workdir", args.workdir, "--base", args.base, "--lora_lr_scale",
              str(args.lora_lr_scale)]
    if args.base == "sft":
      export_sft(args.workdir)
    outs = [os.path.join(args.workdir, f"{run_name(v, args)}.json") for v in variants]
    procs = []
    for variant, out in zip(variants, outs):
      procs.append(subprocess.Popen([sys.executable, __file__, "--child", variant, "--out", out, *common]))
      if not args.parallel:
        procs[-1].wait()
    if any(p.wait() for p in procs):
      raise SystemExit("a variant failed")
    rows = []
    for out in outs:
      with open(out) as f:
        rows.append(json.load(f))
    print(f"\nmain job, base {args.base}, sft.steps={args.sft_steps}, grpo.steps={args.grpo_steps}, "
          f"eval.num_examples={args.eval_examples}, LoRA learning rates x{args.lora_lr_scale:g}"
          f"{', variants in parallel' if args.parallel else ''}\n{table(rows)}")
  print(f"\n{plans()}")


if __name__ == "__main__":
  main()
