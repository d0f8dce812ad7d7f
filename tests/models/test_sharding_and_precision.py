"""8 CPU devices (fsdp x tensor) give the unsharded logits; bfloat16 runs and its KL to float32."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from geojax.data.mrope import rope_index
from geojax.models import grid_tuple, load_hf, make_mesh
from tests.models import tiny_hf
from tests.models.test_qwen_vl import CASES, forward, make_batch


@nnx.jit(static_argnames="grid")
def _forward(model, ids, mask, pixels, grid, positions):
  return model(ids, mask, pixels, grid, positions)


@pytest.mark.parametrize("version", ["qwen2_vl", "qwen2_5_vl"])
def test_sharded_equals_unsharded(hf_checkpoint, rng, version):
  if jax.device_count() < 8:
    pytest.skip("needs 8 devices (tests/conftest.py sets XLA_FLAGS)")
  _, path = hf_checkpoint(version)
  ids, mask, pixels, grids = make_batch(rng, CASES["left_padded_batch_of_3"])
  ids, mask = np.concatenate([ids, ids[:1]]), np.concatenate([mask, mask[:1]])  # batch 4: divisible by fsdp
  pixels = np.concatenate([pixels, pixels[:tiny_patches(grids[:1])]])
  grids = np.concatenate([grids, grids[:1]])
  positions, _ = rope_index(ids, mask, grids, image_token_id=tiny_hf.IMAGE_ID)
  want = np.asarray(_forward(load_hf(path), ids, mask, pixels, grid_tuple(grids), positions))
  mesh = make_mesh((1, 4, 2))
  model = load_hf(path, mesh=mesh)
  q = model.language_model.layers.self_attn.q_proj.kernel[...]  # stacked: [layers, embed, heads, head_dim]
  assert q.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor", None), q.sharding
  with jax.set_mesh(mesh):
    got = np.asarray(_forward(model, ids, mask, pixels, grid_tuple(grids), positions))
  real = mask.astype(bool)
  assert np.abs(got[real] - want[real]).max() <= 1e-5 * np.abs(want[real]).max()


def tiny_patches(grids):
  return int(sum(t * h * w for t, h, w in grids))


@pytest.mark.parametrize("version", ["qwen2_vl", "qwen2_5_vl"])
def test_bfloat16_runs_close_to_float32(hf_checkpoint, rng, version, record_property):
  _, path = hf_checkpoint(version)
  ids, mask, pixels, grids = make_batch(rng, CASES["left_padded_batch_of_3"][:2])
  f32 = forward(load_hf(path), ids, mask, pixels, grids)
  bf16_model = load_hf(path, dtype=jnp.bfloat16)
  assert bf16_model.language_model.layers.mlp.up_proj.kernel[...].dtype == jnp.bfloat16
  bf16 = forward(bf16_model, ids, mask, pixels, grids)
  assert bf16.dtype == np.float32 and np.isfinite(bf16).all()
  p = jax.nn.log_softmax(f32)
  q = jax.nn.log_softmax(bf16)
  kl = np.asarray(jnp.sum(jnp.exp(p) * (p - q), -1))[mask.astype(bool)]
  print(f"{version} bf16 vs f32: mean KL {kl.mean():.2e}, max KL {kl.max():.2e}")
  record_property("bf16_kl_mean", float(kl.mean()))
  assert kl.mean() < 1e-2


def test_rules_table_and_shard_model():
  from geojax.models import QwenVL, logical_to_spec, shard_model, tiny_config
  P = jax.sharding.PartitionSpec
  mesh_shape = {"data": 1, "fsdp": 4, "tensor": 2}
  assert logical_to_spec(("embed", "kv_heads", "head_dim"), shape=(64, 2, 16),
                         mesh_shape=mesh_shape) == P("fsdp", "tensor", None)
  assert logical_to_spec(("embed", "kv_heads"), shape=(64, 3), mesh_shape=mesh_shape) == P("fsdp", None)  # 3 % 2
  assert logical_to_spec(("batch", "length"), shape=(8, 5), mesh_shape=mesh_shape) == P(("data", "fsdp"), None)
  rules = (("embed", "tensor"), ("mlp", "fsdp"))
  assert logical_to_spec(("embed", "mlp"), rules, (64, 128), mesh_shape) == P("tensor", "fsdp")
  if jax.device_count() < 8:
    pytest.skip("needs 8 devices")
  config = tiny_config(vocab_size=256, image_token_id=250, vision_start_token_id=251, vision_end_token_id=252,
                       video_token_id=253, sharding_rules=rules)
  model = shard_model(QwenVL(config, rngs=nnx.Rngs(0)), make_mesh((1, 4, 2)))
  up = model.language_model.layers.mlp.up_proj.kernel[...]  # stacked: [layers, embed, mlp]
  assert up.sharding.spec == P(None, "tensor", "fsdp"), up.sharding
