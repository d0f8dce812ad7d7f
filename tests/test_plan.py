"""geojax.plan: the abstract train state is placed as training places the real one, the CLI compiles a tiny config's
programs for 8 CPU devices and, where the TPU compiler (libtpu, in the test extra) is installed, for a v5e:2x2 slice,
ending with the JSON line."""
import importlib.util
import json
import os
import subprocess
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from geojax import config as gconfig
from geojax import experiment
from geojax import plan as plan_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The tiny model at its smallest, so the four programs compile in seconds; with a KL term (the main job has none),
# so that the reference program is planned too.
TINY = ["model.tiny.num_layers=1", "model.tiny.vision_depth=1", "sft.batch_size=8", "grpo.batch_size=8",
        "grpo.group_size=2", "grpo.max_new_tokens=4", "data.max_prompt_len=96", "sft.max_target_len=8",
        "grpo.beta=0.04"]


def _config(overrides=()):
  return gconfig.load(os.path.join(ROOT, "configs", "default.py"), [*TINY, *overrides])


def test_abstract_state_is_sharded_like_the_real_one(tmp_path):
  """The optimizer state and reference copy plan.py derives (jax.eval_shape + parameter paths) get the shardings that
  the real GRPOLearner's state has on the same FSDP mesh."""
  from geojax.learners.grpo import GRPOLearner
  config = _config(["runtime.mesh.data=1", "runtime.mesh.fsdp=-1", f"workdir={tmp_path}"])
  mesh = experiment.setup_runtime(config)
  tokenizer = experiment.load_tokenizer_for(config)
  make = lambda model: GRPOLearner(config, model, mesh, types.SimpleNamespace(loader=None), gaz="unused")  # noqa: E731
  with jax.set_mesh(mesh):
    real = make(experiment.build_model(config, tokenizer, mesh))
    model = experiment.build_model(config, tokenizer, mesh, abstract=True)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    learner, state, ref = plan_lib._abstract_learner(lambda p: make(nnx.merge(graphdef, p, rest)), params, mesh)
  real.close()
  learner.close()
  spec = lambda s: (s.shape, s.dtype, s.sharding.spec)  # noqa: E731
  assert jax.tree.map(spec, state) == jax.tree.map(spec, real.state)
  assert jax.tree.map(spec, ref) == jax.tree.map(spec, real.reference.params)
  sharded = [s for s in jax.tree.leaves(state["opt_state"]) if s.sharding.spec != jax.sharding.PartitionSpec()]
  assert sharded  # the AdamW moments are FSDP-sharded, not replicated
  assert plan_lib.per_chip_bytes(real.state["params"]) == sum(
      x.addressable_shards[0].data.nbytes for x in jax.tree.leaves(real.state["params"]))
  # what geojax.models.memory assumes: the reference is a float32 copy, AdamW keeps two float32 moments
  params = plan_lib.per_chip_bytes(state["params"])
  assert plan_lib.per_chip_bytes(ref) == params and {x.dtype for x in jax.tree.leaves(ref)} == {np.dtype("float32")}
  assert plan_lib.per_chip_bytes(state["opt_state"]) == pytest.approx(2 * params, abs=64)  # + AdamW's step counts


def test_plan_cpu_devices(capsys):
  summary = plan_lib.plan(_config(), plan_lib.cpu_target(8), ["sft_step", "reference"])
  assert set(summary["programs"]) == {"sft_step", "reference"}
  assert summary["topology"] == "cpu:8" and summary["mesh"] == {"data": 8, "fsdp": 1, "tensor": 1}
  for r in summary["programs"].values():
    assert 0 < r["per_chip_gib"] < summary["chip_hbm_gib"] and r["flops"] > 0 and r["compile_s"] > 0
  assert summary["programs"]["sft_step"]["collectives"]["all-reduce"] > 0  # data parallel: gradients summed
  assert summary["programs"]["reference"]["resident_gib"] > 0  # the policy's train state stays meanwhile
  assert summary["fits"]
  assert "| sft_step" in capsys.readouterr().out


@pytest.mark.parametrize("layout", ["train", "decode"])
def test_plan_cpu_generate(layout):
  """The rollout sampler's program in either rollout layout; in the decode layout (tensor-parallel over 4 of the 8
  devices) each chip holds a quarter of the decoding weights, so less than in the replicated training layout."""
  config = _config([f"rollout.layout={layout}", "rollout.mesh.tensor=4"])
  summary = plan_lib.plan(config, plan_lib.cpu_target(8), ["generate"])
  r = summary["programs"]["generate"]
  assert r["per_chip_gib"] > 0 and r["compile_s"] > 0 and summary["fits"]
  if layout == "decode":
    assert r["collectives"]["all-reduce"] > 0  # tensor parallel: partial sums of the row-split matmuls


def test_plan_rollout_devices_of_their_own():
  """rollout.devices=4 of 8: the training programs are planned on the first 4 devices (the mesh has 4), the rollout
  on the other 4, where no training state stays resident; the off-policy update takes the sampler's log-probs."""
  config = _config(["rollout.off_policy=True", "rollout.layout=decode", "rollout.devices=4", "rollout.mesh.tensor=4"])
  summary = plan_lib.plan(config, plan_lib.cpu_target(8), ["grpo_step", "generate"])
  assert summary["mesh"] == {"data": 4, "fsdp": 1, "tensor": 1}
  r = summary["programs"]
  assert r["generate"]["resident_gib"] == 0 and r["generate"]["collectives"]["all-reduce"] > 0
  assert r["grpo_step"]["per_chip_gib"] > 0 and summary["fits"]


def test_plan_lora():
  """A QLoRA (nf4) config plans: the model is built abstract with its adapters and quantized base; the reference is
  the shared base with a copy of the adapters (all the GRPO update keeps resident; replicated on the data mesh: 4
  bytes per adapter parameter), so the reference pass reads less than one float32 copy of the weights; the rollout
  samples the merged weights in the decode layout."""
  config = _config(["model.lora.rank=4", "model.lora.quantize=nf4", "rollout.layout=decode", "rollout.mesh.tensor=4"])
  summary = plan_lib.plan(config, plan_lib.cpu_target(8), ["grpo_step", "reference", "generate"])
  assert summary["lora"] == {"rank": 4, "targets": "text", "quantize": "nf4"} and summary["mesh"]["data"] == 8
  assert 0 < summary["trainable"] < summary["params"] / 10
  r = summary["programs"]
  assert r["grpo_step"]["resident_gib"] * plan_lib.GIB == pytest.approx(4 * summary["trainable"], rel=1e-3)
  assert r["reference"]["argument_gib"] * plan_lib.GIB < 4 * summary["params"]
  assert r["generate"]["collectives"]["all-reduce"] > 0 and summary["fits"]  # tensor parallel over 4


def test_a_program_the_compiler_refuses_is_reported_not_raised():
  """The TPU compiler refuses a program whose temporaries exceed HBM (a Geo-R update on 24 of 32 v5e chips, whose 64
  rows 24 does not divide, asked for 32.62G): the plan reports it as not fitting instead of stopping."""
  message = ("RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO temporaries (32.62G) "
             "exceeds available HBM (15.75G).")

  class Refused:
    def compile(self):
      raise jax.errors.JaxRuntimeError(message)

  program = plan_lib.Program("grpo_step", Refused(), resident=2 * plan_lib.GIB, lower_s=1.0)
  r = plan_lib.compile_program(program, plan_lib.cpu_target(8))
  assert r["temp_gib"] == 32.62 and r["per_chip_gib"] == 34.62 and r["over_hbm"].startswith("RESOURCE_EXHAUSTED")
  assert "| grpo_step" in plan_lib.format_table({"grpo_step": r}, 16.0)


def test_a_program_on_part_of_a_v5e_slice_is_refused_by_name():
  """v5e's compiler refuses a program on some of a slice's chips (rollout.devices on v5e:4x8): a config error naming
  the key, not a traceback."""
  message = ("INTERNAL: RET_CHECK failure (platforms/xla/service/jellyfish/deepsea_compiler_base.cc:1879) "
             "device_count == target.Topology()->LogicalDeviceCount() On platforms with limited ICI routing device "
             "assignment should include all slice devices")

  class Refused:
    def compile(self):
      raise jax.errors.JaxRuntimeError(message)

  program = plan_lib.Program("grpo_step", Refused(), resident=0, lower_s=1.0)
  with pytest.raises(gconfig.ConfigError, match=r"'rollout.devices': the TPU compiler for cpu:8 refuses the "
                                                r"grpo_step program on part of the slice"):
    plan_lib.compile_program(program, plan_lib.cpu_target(8))


def test_collective_counts():
  hlo = """
  %all-gather-start.1 = (f32[4], f32[16]) all-gather-start(f32[4] %p), replica_groups={{0,1,2,3}}
  %all-gather-done.1 = f32[16] all-gather-done((f32[4], f32[16]) %all-gather-start.1)
  %all-reduce.2 = f32[8] all-reduce(f32[8] %x), to_apply=%add
  %reduce-scatter = f32[2] reduce-scatter(f32[8] %y), dimensions={0}
  %collective-permute-start = (f32[8], f32[8]) collective-permute-start(f32[8] %z), source_target_pairs={{0,1}}
  """
  assert plan_lib.collective_counts(hlo) == {"all-gather": 1, "all-reduce": 1, "reduce-scatter": 1, "all-to-all": 0,
                                             "collective-permute": 1}


def test_reduce_depth_keeps_a_full_attention_block():
  from geojax.models.presets import PRESETS
  arch = plan_lib.reduce_depth(PRESETS["qwen2.5-vl-7b"], text_layers=2, vision_depth=4)
  assert (arch.text.num_layers, arch.vision.depth, arch.vision.fullatt_block_indexes) == (2, 4, (3,))
  assert plan_lib.reduce_depth(PRESETS["qwen2.5-vl-7b"], vision_depth=16).vision.fullatt_block_indexes == (7, 15)


def test_prefix_pass_under_remat():
  """The GRPO pass over shared prompts runs under the presets' remat policy ("full"), values unchanged."""
  from geojax.models.presets import tiny_config
  from geojax.models.text import TextDecoder
  decoder = TextDecoder(tiny_config(vocab_size=256, num_layers=1).text, dtype=jnp.float32, param_dtype=jnp.float32,
                        rngs=nnx.Rngs(0))
  xp, xn = jnp.ones((1, 5, 64)), jnp.ones((2, 3, 64))
  pos_p, pos_n = jnp.broadcast_to(jnp.arange(5), (3, 1, 5)), jnp.broadcast_to(5 + jnp.arange(3), (3, 2, 3))

  def loss(m):
    hp, hn = m.with_prefix(xp, pos_p, jnp.ones((1, 5)), xn, pos_n, jnp.ones((2, 3)), 2)
    return hp.sum() + (hn ** 2).sum()

  out = {}
  for policy in ("none", "full"):
    decoder.remat_policy = policy
    out[policy] = nnx.jit(nnx.value_and_grad(loss))(decoder)
  np.testing.assert_allclose(out["none"][0], out["full"][0], rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), out["none"][1], out["full"][1])


@pytest.mark.skipif(importlib.util.find_spec("libtpu") is None, reason="the TPU compiler (libtpu) is not installed")
def test_plan_tpu_topology_cli():
  """`python -m geojax.plan --topology=v5e:2x2` compiles with the TPU compiler, no TPU needed; last line JSON."""
  argv = [sys.executable, "-m", "geojax.plan", "--config=configs/default.py", "--topology=v5e:2x2",
          "--programs=grpo_step,generate", *(f"--config.{o}" for o in TINY)]  # test_plan_cpu_devices: the others
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  result = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
  assert result.returncode == 0, result.stderr[-3000:]
  summary = json.loads(result.stdout.strip().splitlines()[-1])
  assert summary["topology"] == "v5e:2x2" and summary["chips"] == 4 and summary["chip_hbm_gib"] == 16
  assert set(summary["programs"]) == {"grpo_step", "generate"}
  for r in summary["programs"].values():
    assert r["per_chip_gib"] > 0 and r["flops"] > 0 and r["roofline_s"] > 0
  assert summary["programs"]["grpo_step"]["collectives"]["all-reduce"] > 0
  assert summary["fits"] is True


@pytest.mark.skipif(importlib.util.find_spec("libtpu") is None, reason="the TPU compiler (libtpu) is not installed")
@pytest.mark.parametrize("layout", ["train", "decode"])
def test_plan_says_when_the_rollout_gathers_weights_at_every_token(layout, capsys):
  """Compiled for TPU chips, the training layout's decode loop gathers the FSDP-split weights at every token (XLA:CPU
  hoists them, the TPU compiler does not): the plan reports the loop's all-gathers and says so, naming
  rollout.layout; the decode layout gathers only the small top-k merge."""
  config = _config(["runtime.mesh.data=1", "runtime.mesh.fsdp=-1", f"rollout.layout={layout}",
                    "rollout.mesh.tensor=4"])
  summary = plan_lib.plan(config, plan_lib.tpu_target("v5e:2x2"), ["generate"])
  gathers = summary["programs"]["generate"]["loop_all_gathers"]
  said = "the decode loop all-gathers" in capsys.readouterr().out
  if layout == "train":
    assert gathers["largest"] >= summary["vocab_size"] and said
  else:
    assert 0 < gathers["largest"] < summary["vocab_size"] and not said
