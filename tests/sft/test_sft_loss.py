"""sft_loss vs torch.nn.functional.cross_entropy in float64 (values and gradients)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from geojax.sft import next_token_targets, sft_loss


def random_batch(seed, batch=3, length=7, vocab=11):
  rng = np.random.default_rng(seed)
  logits = rng.normal(scale=3.0, size=(batch, length, vocab))
  targets = rng.integers(0, vocab, size=(batch, length))
  mask = (rng.uniform(size=(batch, length)) < 0.6).astype(np.float64)
  mask[0, 0] = 1.0
  targets = np.where(mask > 0, targets, -100)  # masked ids out of range, as data pipelines often leave them
  return logits, targets, mask


def torch_reference(logits, targets, smoothing):
  x = torch.tensor(logits, dtype=torch.float64, requires_grad=True)
  loss = F.cross_entropy(x.reshape(-1, x.shape[-1]), torch.tensor(targets).reshape(-1), ignore_index=-100,
                         label_smoothing=smoothing, reduction="mean")
  loss.backward()
  return loss.item(), x.grad.numpy()


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_matches_torch_cross_entropy(smoothing):
  logits, targets, mask = random_batch(seed=int(smoothing * 10))
  expected, expected_grad = torch_reference(logits, targets, smoothing)
  with jax.enable_x64(True):
    (loss, metrics), grad = jax.value_and_grad(sft_loss, has_aux=True)(
        jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(mask), label_smoothing=smoothing)
  np.testing.assert_allclose(float(loss), expected, rtol=1e-12)
  np.testing.assert_allclose(np.asarray(grad), expected_grad, rtol=1e-10, atol=1e-14)
  assert float(metrics["tokens"]) == mask.sum()

  (loss32, _), grad32 = jax.jit(jax.value_and_grad(sft_loss, has_aux=True), static_argnames="label_smoothing")(
      jnp.asarray(logits, jnp.float32), jnp.asarray(targets), jnp.asarray(mask, jnp.float32),
      label_smoothing=smoothing)
  assert loss32.dtype == jnp.float32
  np.testing.assert_allclose(float(loss32), expected, rtol=1e-6)
  np.testing.assert_allclose(np.asarray(grad32), expected_grad, rtol=1e-4, atol=1e-7)


def test_gathered_logprobs_give_the_same_loss():
  logits, targets, mask = random_batch(seed=2)
  logprobs = np.asarray(jax.nn.log_softmax(jnp.asarray(logits, jnp.float32)))
  target_logprobs = np.take_along_axis(logprobs, np.maximum(targets, 0)[..., None], axis=-1)[..., 0]
  full, full_metrics = sft_loss(jnp.asarray(logits, jnp.float32), targets, mask)
  gathered, gathered_metrics = sft_loss(jnp.asarray(target_logprobs), targets, mask)
  normalized, _ = sft_loss(jnp.asarray(logprobs), targets, mask)  # log-probs over the vocabulary as input
  np.testing.assert_allclose(float(gathered), float(full), rtol=1e-6)
  np.testing.assert_allclose(float(normalized), float(full), rtol=1e-6)
  assert float(gathered_metrics["nll"]) == pytest.approx(float(full_metrics["nll"]), rel=1e-6)
  with pytest.raises(ValueError, match="label smoothing"):
    sft_loss(jnp.asarray(target_logprobs), targets, mask, label_smoothing=0.1)
  with pytest.raises(ValueError, match="do not fit"):
    sft_loss(jnp.zeros((2,)), targets, mask)


def test_hand_computed():
  # two-token vocabulary, uniform logits: -log(1/2) per token; accuracy: argmax picks id 0
  logits = jnp.zeros((1, 3, 2))
  loss, metrics = sft_loss(logits, jnp.array([[0, 1, 1]]), jnp.array([[1.0, 1.0, 0.0]]))
  assert float(loss) == pytest.approx(np.log(2.0))
  assert float(metrics["accuracy"]) == pytest.approx(0.5)
  logits = jnp.array([[[np.log(3.0), 0.0]]])  # p = (3/4, 1/4)
  assert float(sft_loss(logits, jnp.array([[1]]), jnp.ones((1, 1)))[0]) == pytest.approx(np.log(4.0))
  smoothed = float(sft_loss(logits, jnp.array([[1]]), jnp.ones((1, 1)), label_smoothing=0.2)[0])
  assert smoothed == pytest.approx(0.8 * np.log(4.0) + 0.2 * 0.5 * (np.log(4 / 3) + np.log(4.0)), rel=1e-6)


def test_no_answer_tokens_gives_zero_not_nan():
  logits = jnp.full((2, 3, 5), jnp.nan)
  (loss, metrics), grad = jax.value_and_grad(sft_loss, has_aux=True)(logits, jnp.zeros((2, 3), jnp.int32),
                                                                     jnp.zeros((2, 3)))
  assert float(loss) == 0.0 and float(metrics["tokens"]) == 0.0
  assert np.all(np.asarray(grad) == 0.0)


def test_next_token_targets():
  input_ids = jnp.array([[5, 6, 7, 8], [1, 2, 3, 4]])
  loss_mask = jnp.array([[0, 0, 1, 1], [0, 1, 1, 0]], jnp.float32)
  targets, mask = next_token_targets(input_ids, loss_mask)
  np.testing.assert_array_equal(targets, [[6, 7, 8, 0], [2, 3, 4, 0]])
  np.testing.assert_array_equal(mask, [[0, 1, 1, 0], [1, 1, 0, 0]])
  # the logits at t predict input t+1: a model that puts all mass on the next token has zero loss
  logits = jax.nn.one_hot(targets, 10) * 100.0
  assert float(sft_loss(logits, targets, mask)[0]) == pytest.approx(0.0, abs=1e-6)


def test_gathered_logprobs_with_masked_inf_give_finite_gradient():
  logprobs = jnp.array([[-1.0, -jnp.inf], [jnp.nan, -2.0]])
  mask = jnp.array([[1.0, 0.0], [0.0, 1.0]])
  (loss, _), grad = jax.value_and_grad(sft_loss, has_aux=True)(logprobs, jnp.zeros((2, 2), jnp.int32), mask)
  assert float(loss) == pytest.approx(1.5)
  np.testing.assert_array_equal(grad, [[-0.5, 0.0], [0.0, -0.5]])
