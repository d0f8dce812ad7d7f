"""Stacked layers (geojax.models.scan): slices are the stacked modules, remat wraps each scanned layer."""
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from geojax.models import QwenVL, scan, tiny_config
from geojax.models.hf_io import layer_paths
from geojax.models.layers import Dense

IDS = dict(vocab_size=300, image_token_id=290, vision_start_token_id=291, vision_end_token_id=292,
           video_token_id=293)


def test_stack_slices_are_the_modules_and_axes_gain_layers():
  rngs = nnx.Rngs(0)
  modules = [Dense((4,), (3,), ("embed", "mlp"), bias=True, dtype=jnp.float32, param_dtype=jnp.float32, rngs=rngs)
             for _ in range(3)]
  stacked = scan.stack(modules)
  assert scan.depth(stacked) == 3
  assert stacked.kernel.get_metadata()["logical_axes"] == ("layers", "embed", "mlp")
  for i, module in enumerate(modules):
    np.testing.assert_array_equal(scan.layer(stacked, i).kernel[...], module.kernel[...])
  assert layer_paths("language_model.layers.mlp.up_proj.kernel", 2) == [
      "language_model.layers.0.mlp.up_proj.kernel", "language_model.layers.1.mlp.up_proj.kernel"]
  assert layer_paths("language_model.norm.weight", 2) is None


def test_remat_per_scanned_layer_keeps_gradients():
  ids = np.array([[1, 2, 3, 4, 5, 6]], np.int32)

  def grads(policy):
    model = QwenVL(tiny_config(num_layers=3, remat_policy=policy, **IDS), rngs=nnx.Rngs(0))
    loss = lambda m: jnp.sum(m(ids) ** 2) * 1e-3
    if policy != "none":  # the checkpoint sits inside the scan over layers
      assert "remat" in str(jax.make_jaxpr(lambda m: loss(nnx.merge(*m)))(nnx.split(model)))
    return nnx.jit(nnx.grad(loss))(model)

  plain, full = grads("none"), grads("full")
  for a, b in zip(jax.tree.leaves(plain), jax.tree.leaves(full)):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-7)
