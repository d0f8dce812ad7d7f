"""Dense on CPU: one `rows_matmul`, whose gradients are the float64 formulas' and whose weight gradient compiles to
a YNNPACK dot (XLA:CPU's own rewrite runs x^T g in Eigen, at about half the speed)."""
import re

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from geojax.models.layers import Dense, rows_matmul


def test_rows_matmul_gradients_are_the_float64_formulas():
  rng = np.random.default_rng(0)
  x, w, g = rng.standard_normal((37, 24)), rng.standard_normal((24, 40)), rng.standard_normal((37, 40))
  y, vjp = jax.vjp(rows_matmul, jnp.asarray(x, jnp.float32), jnp.asarray(w, jnp.float32))
  dx, dw = vjp(jnp.asarray(g, jnp.float32))
  np.testing.assert_allclose(y, x @ w, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(dx, g @ w.T, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(dw, x.T @ g, rtol=1e-5, atol=1e-5)


def test_dense_with_several_in_and_out_dims_matches_its_einsum_and_gradient():
  dense = Dense((4, 6), (3, 5), ("heads", "head_dim", None, "embed"), bias=True, dtype=jnp.float32,
                param_dtype=jnp.float32, rngs=nnx.Rngs(0))
  dense.bias[...] = jnp.arange(15.0).reshape(3, 5) / 10
  x = jax.random.normal(jax.random.key(1), (2, 7, 4, 6))
  w, b = np.asarray(dense.kernel[...], np.float64), np.asarray(dense.bias[...], np.float64)
  want = np.einsum("blhd,hdoe->bloe", np.asarray(x, np.float64), w) + b
  np.testing.assert_allclose(dense(x), want, rtol=1e-5, atol=1e-5)
  grad = nnx.grad(lambda m: jnp.sum(m(x) ** 2))(dense)
  dy = 2 * want
  np.testing.assert_allclose(grad.kernel[...], np.einsum("blhd,bloe->hdoe", np.asarray(x, np.float64), dy),
                             rtol=1e-4, atol=1e-4)


def test_the_weight_gradient_compiles_to_a_ynnpack_dot_on_cpu():
  dense = Dense((128,), (512,), ("embed", "mlp"), bias=False, dtype=jnp.float32, param_dtype=jnp.float32,
                rngs=nnx.Rngs(0))
  x = jnp.ones((504, 128))
  hlo = jax.jit(nnx.grad(lambda m, x: jnp.sum(m(x) ** 2))).lower(dense, x).compile().as_text()
  # a dot left to Eigen contracts its lhs over dim 0 (rows); the YNNPACK fusions contract the last dims
  eigen = [line for line in hlo.splitlines() if re.search(r"= f32\[\d+,\d+\]\S* dot\(", line)
           and "lhs_contracting_dims={0}" in line]
  assert not eigen, eigen
  assert "ynn_fusion" in hlo
