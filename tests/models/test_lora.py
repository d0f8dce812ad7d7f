"""LoRA / QLoRA on QwenVL (adapters in geojax's Dense, stacked with the scanned layers; the base quantized by qwix):
PEFT adapters out to peft and in from peft, merged export to transformers, each checked by logits against the
transformers / peft model (references geojax did not write)."""
import json

import jax

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from geojax.data.mrope import rope_index
from geojax.models import grid_tuple, load_hf, lora, make_mesh, save_hf
from geojax.models.peft_io import load_peft_adapter, save_peft_adapter
from tests.models import tiny_hf
from tests.models.test_hf_io import _hf_class
from tests.models.test_qwen_vl import CASES, forward, hf_logits, make_batch, rel_err

peft = pytest.importorskip("peft")
VERSION = "qwen2_5_vl"
# peft's names for the same modules as lora.TARGETS["all"] (the decoder's and the vision blocks' projections)
PEFT_TARGETS = r".*\.(blocks\.\d+\.(attn\.(qkv|proj)|mlp\.\w+_proj)|layers\.\d+\.\w+\.\w_?\w*_proj)"


def _randomize(model, seed=0):
  """Adapters with random A and B (fresh ones have B = 0, which would test nothing)."""
  rng = np.random.default_rng(seed)
  lora.set_adapter_tensors(model, {k: (0.3 * rng.standard_normal(a.shape), 0.3 * rng.standard_normal(b.shape))
                                   for k, (a, b) in lora.adapter_tensors(model).items()})
  return model


def _lora_model(path, **spec):
  return lora.apply_lora(load_hf(path), lora.LoraSpec(**{"rank": 4, "alpha": 8.0, "targets": "all", **spec}))


def test_peft_adapter_loads_in_peft_with_equal_logits(hf_checkpoint, rng, tmp_path):
  hf, path = hf_checkpoint(VERSION)
  model = _randomize(_lora_model(path))
  save_peft_adapter(model, str(tmp_path))
  config = json.loads((tmp_path / "adapter_config.json").read_text())
  assert config["r"] == 4 and config["lora_alpha"] == 8.0
  ref = peft.PeftModel.from_pretrained(_hf_class(VERSION).from_pretrained(path), str(tmp_path)).eval()
  ids, mask, pixels, grids = make_batch(rng, CASES["two_images_one_row"])
  want = hf_logits(ref, ids, mask, pixels, grids)
  assert np.abs(want - hf_logits(hf, ids, mask, pixels, grids)).max() > 0.1  # the adapters change the logits
  assert rel_err(forward(model, ids, mask, pixels, grids), want, mask) <= 1e-4  # as the base against transformers


def test_peft_made_adapter_loads_with_equal_logits(hf_checkpoint, rng, tmp_path):
  _, path = hf_checkpoint(VERSION)
  made = peft.get_peft_model(_hf_class(VERSION).from_pretrained(path),
                             peft.LoraConfig(r=4, lora_alpha=8, target_modules=PEFT_TARGETS))
  torch.manual_seed(0)
  with torch.no_grad():
    for name, p in made.named_parameters():
      if "lora_B" in name:
        p.normal_(0.0, 0.3)
  made.save_pretrained(str(tmp_path))
  model = _lora_model(path)
  n_ours = len(lora.adapter_tensors(model))
  assert len(made.targeted_module_names) == n_ours  # the same modules carry adapters
  load_peft_adapter(model, str(tmp_path))
  ids, mask, pixels, grids = make_batch(rng, CASES["left_padded_batch_of_3"])
  assert rel_err(forward(model, ids, mask, pixels, grids), hf_logits(made.eval(), ids, mask, pixels, grids),
                 mask) <= 1e-4  # as the base model against transformers


def test_peft_adapter_settings_lora_cannot_honour_are_refused(hf_checkpoint, tmp_path):
  _, path = hf_checkpoint(VERSION)
  model = _lora_model(path)
  save_peft_adapter(model, str(tmp_path))
  config = json.loads((tmp_path / "adapter_config.json").read_text())
  (tmp_path / "adapter_config.json").write_text(json.dumps(dict(config, use_dora=True, r=8)))
  with pytest.raises(ValueError, match=r"use_dora True.*r=8"):
    load_peft_adapter(model, str(tmp_path))


@pytest.mark.parametrize("quantize", ["none", "nf4"])
def test_merged_export_loads_in_transformers_with_equal_logits(hf_checkpoint, rng, tmp_path, quantize):
  _, path = hf_checkpoint(VERSION)
  model = _randomize(_lora_model(path, quantize=quantize))
  save_hf(lora.merged_model(model), str(tmp_path))
  ids, mask, pixels, grids = make_batch(rng, CASES["one_image"])
  want = forward(model, ids, mask, pixels, grids)
  got = hf_logits(_hf_class(VERSION).from_pretrained(str(tmp_path)).eval(), ids, mask, pixels, grids)
  # x W + (x A) B against x (W + A B) rounded once in float32; nf4: qwix's quantized matmul against the dequantized
  # weights
  assert rel_err(got, want, mask) <= (5e-4 if quantize == "none" else 1e-3)


def test_adapters_start_off_and_only_adapters_are_split_out(hf_checkpoint, rng):
  _, path = hf_checkpoint(VERSION)
  base = load_hf(path)
  model = _lora_model(path)
  ids, mask, pixels, grids = make_batch(rng, CASES["one_image"])
  np.testing.assert_allclose(forward(model, ids, mask, pixels, grids), forward(base, ids, mask, pixels, grids),
                             atol=1e-5)
  _, adapters, _ = lora.split_params(model)
  names = {str(path[-1]) for path, _ in nnx.to_flat_state(adapters)}
  assert names == {"a", "b"}
  assert lora.count_trainable(model) == sum(int(np.prod(a.shape)) + int(np.prod(b.shape))
                                            for a, b in lora.adapter_tensors(model).values())
  with pytest.raises(ValueError, match="match no module"):
    lora.apply_lora(base, lora.LoraSpec(rank=2, targets=r"nothing/\d+"))
  with pytest.raises(ValueError, match="some layers"):  # the layers are one scanned stack: all or none
    lora.apply_lora(base, lora.LoraSpec(rank=2, targets=r"language_model/layers/0/mlp/up_proj"))
  assert all(jnp.all(b == 0) for _, b in lora.adapter_tensors(model).values())


def test_memory_plan_counts_the_adapters_geojax_makes(hf_checkpoint):
  from geojax.models.memory import lora_counts, memory_plan
  _, path = hf_checkpoint(VERSION)
  model = _lora_model(path, targets="text")
  adapters, adapted = lora_counts(model.config, 4)
  assert lora.count_trainable(model) == adapters
  assert adapted == sum(int(np.prod(a.shape[:1])) * int(np.prod(b.shape[1:]))
                        for a, b in lora.adapter_tensors(model).values())
  full, qlora = memory_plan(model.config, lora_rank=0), memory_plan(model.config, lora_rank=4, quantize="nf4")
  assert qlora.reference < full.reference and qlora.optimizer < full.optimizer and qlora.params < full.params


def test_sharded_with_remat_equals_unsharded(hf_checkpoint, rng):
  """Adapters placed by their logical axes on 8 devices (fsdp x tensor); a jitted loss over the scanned,
  rematerialized layers (LoRA dropout on, int8 base) and its gradient in the adapters equal the unsharded ones."""
  if jax.device_count() < 8:
    pytest.skip("needs 8 devices (tests/conftest.py sets XLA_FLAGS)")
  _, path = hf_checkpoint(VERSION)
  ids, mask, pixels, grids = make_batch(rng, CASES["one_image"])
  ids, mask = np.repeat(ids, 4, axis=0), np.repeat(mask, 4, axis=0)
  pixels, grids = np.concatenate([pixels] * 4), np.concatenate([grids] * 4)
  positions, _ = rope_index(ids, mask, grids, image_token_id=tiny_hf.IMAGE_ID)
  spec = lora.LoraSpec(rank=4, alpha=8.0, dropout=0.25, quantize="int8")

  def loss_and_grad(model):
    graphdef, adapters, rest = lora.split_params(model)
    dropped = lambda p: lora.with_dropout(nnx.merge(graphdef, p, rest), jax.random.key(3))
    loss = lambda p: jnp.mean(dropped(p)(ids, mask, pixels, grid_tuple(grids), positions) ** 2)
    value, grads = jax.jit(jax.value_and_grad(loss))(adapters)
    return float(value), [np.asarray(g) for g in jax.tree.leaves(grads)]

  want = loss_and_grad(_randomize(lora.apply_lora(load_hf(path), spec)))
  mesh = make_mesh((1, 4, 2))
  model = _randomize(lora.apply_lora(load_hf(path, mesh=mesh, remat_policy="full"), spec))
  q = model.language_model.layers.self_attn.q_proj  # stacked: [layers, ...]
  assert q.lora.a[...].sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", None)
  assert q.lora.b[...].sharding.spec == jax.sharding.PartitionSpec(None, None, "tensor", "fsdp")  # lora.WIDE
  down = model.language_model.layers.mlp.down_proj  # A [layers, mlp, rank]: mlp over tensor and fsdp
  assert down.lora.a[...].sharding.spec == jax.sharding.PartitionSpec(None, ("tensor", "fsdp"), None)
  with jax.set_mesh(mesh):
    got = loss_and_grad(model)
  np.testing.assert_allclose(got[0], want[0], rtol=1e-5)
  for g, w in zip(got[1], want[1]):
    np.testing.assert_allclose(g, w, rtol=1e-3, atol=1e-3 * np.abs(w).max())  # sharded sums in another order


def test_sampler_decodes_with_the_adapters(hf_checkpoint, rng):
  """The sampler's prefill / one-token decode run the adapters too: its log-probs of its greedy tokens equal those of
  a full forward over prompt + tokens (as GRPO's trainer computes them)."""
  from geojax.sampling import Sampler
  _, path = hf_checkpoint(VERSION)
  model = _randomize(_lora_model(path), seed=1)
  ids, mask, pixels, grids = make_batch(rng, CASES["one_image"])
  result = Sampler(model, max_new_tokens=4, temperature=0.0)(None, ids, mask, pixels, grids)
  tokens = np.asarray(result.tokens)
  full = np.concatenate([ids, tokens], axis=1)
  logits = forward(model, full, np.ones_like(full), pixels, grids)[:, ids.shape[1] - 1:-1]
  logp = np.asarray(jax.nn.log_softmax(jnp.asarray(logits), axis=-1))
  want = np.take_along_axis(logp, tokens[..., None], axis=-1)[..., 0]
  np.testing.assert_allclose(np.asarray(result.logprobs), want, atol=1e-4)
  base = Sampler(load_hf(path), max_new_tokens=4, temperature=0.0)(None, ids, mask, pixels, grids)
  assert not np.allclose(np.asarray(base.logprobs), np.asarray(result.logprobs), atol=1e-3)
