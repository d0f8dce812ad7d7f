"""The LM head in blocks of vocabulary columns (blocked_logprobs) against float64 numpy formulas."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from geojax.models import make_mesh
from geojax.models.logprobs import VOCAB_BLOCK, _vocab_in_blocks, blocked_logprobs, chunked_logprobs

VOCAB = 2 * VOCAB_BLOCK + 123  # three blocks, the last one shifted left over columns the second already took
TEMPERATURE = 0.7


def float64_logprobs_and_grads(h, w, targets, g):
  """lp[n] = log softmax(h @ w / T)[n, targets[n]] and the gradients of sum(g * lp), in float64."""
  h, w, g = h.astype(np.float64), w.astype(np.float64), g.astype(np.float64)
  logits = h @ w / TEMPERATURE
  logits -= logits.max(axis=1, keepdims=True)
  p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
  rows = np.arange(len(targets))
  lp = np.log(p[rows, targets])
  onehot = np.zeros_like(p)
  np.add.at(onehot, (rows, targets), 1.0)
  dlogits = g[:, None] * (onehot - p) / TEMPERATURE
  return lp, dlogits @ w.T, h.T @ dlogits


@pytest.fixture
def head():
  rng = np.random.default_rng(0)
  h = rng.standard_normal((24, 16)).astype(np.float32)
  w = (rng.standard_normal((16, VOCAB)) * 0.5).astype(np.float32)
  # a duplicate target, the first and last columns, and one in the overlap of the last two blocks
  targets = rng.integers(0, VOCAB, 24).astype(np.int32)
  targets[:4] = [0, VOCAB - 1, targets[5], VOCAB - VOCAB_BLOCK + 5]
  return h, w, targets, rng.standard_normal(24).astype(np.float32)


def test_blocked_logprobs_values_and_grads_match_float64(head):
  h, w, targets, g = head
  want_lp, want_dh, want_dw = float64_logprobs_and_grads(h, w, targets, g)
  loss = lambda h, w: jnp.sum(blocked_logprobs(h, w, targets, TEMPERATURE) * g)
  lp = jax.jit(blocked_logprobs, static_argnums=3)(h, w, targets, TEMPERATURE)
  dh, dw = jax.jit(jax.grad(loss, argnums=(0, 1)))(h, w)
  np.testing.assert_allclose(lp, want_lp, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(dh, want_dh, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(dw, want_dw, rtol=1e-4, atol=1e-7)


def test_blocked_logprobs_keeps_the_compute_dtype(head):
  h, w, targets, g = head
  h16, w16 = jnp.asarray(h, jnp.bfloat16), jnp.asarray(w, jnp.bfloat16)
  lp = blocked_logprobs(h16, w16, targets, TEMPERATURE)
  dh, dw = jax.grad(lambda h, w: jnp.sum(blocked_logprobs(h, w, targets, TEMPERATURE) * g), argnums=(0, 1))(h16, w16)
  assert lp.dtype == jnp.float32 and dh.dtype == dw.dtype == jnp.bfloat16
  want_lp, want_dh, _ = float64_logprobs_and_grads(np.asarray(h16, np.float32), np.asarray(w16, np.float32),
                                                   targets, g)
  np.testing.assert_allclose(lp, want_lp, rtol=0.05, atol=0.05)
  np.testing.assert_allclose(np.asarray(dh, np.float32), want_dh, rtol=0.05, atol=0.05)


def test_chunked_logprobs_takes_a_large_vocabulary_in_blocks(head):
  h, w, targets, g = head
  hidden, tokens = h.reshape(2, 12, 16), targets.reshape(2, 12)
  want_lp, want_dh, want_dw = float64_logprobs_and_grads(h, w, targets, g)
  for kwargs in (dict(chunk_size=5), dict(chunk_size=12, checkpoint=False)):
    loss = lambda x, w: jnp.sum(chunked_logprobs(x, w, tokens, temperature=TEMPERATURE, **kwargs) * g.reshape(2, 12))
    lp = chunked_logprobs(hidden, w, tokens, temperature=TEMPERATURE, **kwargs)
    dx, dw = jax.jit(jax.grad(loss, argnums=(0, 1)))(hidden, w)
    np.testing.assert_allclose(lp.reshape(-1), want_lp, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dx.reshape(24, 16), want_dh, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(dw, want_dw, rtol=1e-4, atol=1e-7)


def test_vocabulary_split_over_the_mesh_keeps_one_block():
  assert not _vocab_in_blocks(VOCAB_BLOCK) and _vocab_in_blocks(VOCAB)
  if jax.device_count() < 8:
    pytest.skip("needs 8 devices (XLA_FLAGS=--xla_force_host_platform_device_count=8)")
  with jax.set_mesh(make_mesh((1, 4, 2))):
    assert not _vocab_in_blocks(2 * VOCAB_BLOCK)  # the tensor axis splits it
    assert _vocab_in_blocks(2 * VOCAB_BLOCK + 1)  # not divisible by 2: left whole
  with jax.set_mesh(make_mesh((1, 8, 1))):
    assert _vocab_in_blocks(2 * VOCAB_BLOCK)
