"""Gradient accumulation gives the whole batch's loss, gradient and metrics whatever grad_accum is, for every
aggregation and policy loss (token-mean divides by the whole batch's token count, as TRL's dapo), against the
float64 reference of tests/rl/test_loss.py; and SFT's token mean the same way."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from geojax.learners import accumulate_grads
from geojax.rl import AGGREGATIONS, batch_counts, grpo_loss
from geojax.sft import sft_loss
from tests.rl.test_loss import reference

# Unequal lengths, one empty row: the micro-batches of 2 and 4 differ in tokens and in non-empty sequences.
LENGTHS = [7, 1, 5, 0, 7, 2, 1, 6]
KW = dict(eps_low=0.2, eps_high=0.28, beta=0.04, kl="k3")


def case(seed):
  rng = np.random.default_rng(seed)
  b, t = len(LENGTHS), max(LENGTHS)
  mask = (np.arange(t)[None, :] < np.asarray(LENGTHS)[:, None]).astype(np.float64)
  params = {"w": rng.normal(size=t), "b": np.array(0.3)}
  batch = {"feat": rng.normal(size=(b, t)), "mask": mask, "adv": rng.normal(size=b),
           "ref_shift": rng.normal(scale=0.3, size=(b, t)), "old_shift": rng.normal(scale=0.4, size=(b, t)),
           "sampler_shift": rng.normal(scale=0.3, size=(b, t))}
  return params, batch


def logprobs_of(params, batch):
  """A differentiable toy policy: logp = -softplus(feat * w + b) < 0."""
  return -jax.nn.softplus(batch["feat"] * params["w"][None, :] + params["b"])


def loss_fn(params, batch, *, counts, **kw):
  lp = logprobs_of(params, batch)
  old = jax.lax.stop_gradient(lp) + batch["old_shift"]
  return grpo_loss(lp, old, old + batch["ref_shift"], batch["adv"], batch["mask"],
                   sampler_logprobs=old + batch["sampler_shift"], counts=counts, **kw)


def reference_loss_and_grad(params, batch, **kw):
  """The float64 loop reference on the whole batch, its d loss / d logp chained through the toy policy."""
  z = batch["feat"] * params["w"][None, :] + params["b"]
  lp = -np.logaddexp(0.0, z)  # -softplus(z) in float64
  old = lp + batch["old_shift"]
  loss, d_lp = reference(lp, old, old + batch["ref_shift"], batch["adv"], batch["mask"],
                         sampler=old + batch["sampler_shift"], **kw)
  d_z = -d_lp / (1.0 + np.exp(-z))  # d(-softplus(z)) / dz = -sigmoid(z)
  return loss, {"w": np.sum(d_z * batch["feat"], axis=0), "b": np.sum(d_z)}


@pytest.mark.parametrize("agg", sorted(AGGREGATIONS))
@pytest.mark.parametrize("loss,tis_cap", [("grpo", 0.0), ("gspo", 0.0), ("cispo", 1.5)])
def test_every_aggregation_is_independent_of_grad_accum(agg, loss, tis_cap):
  params, batch = case(seed=sorted(AGGREGATIONS).index(agg))
  kw = dict(loss=loss, agg=agg, tis_cap=tis_cap, **KW)
  expected, expected_grad = reference_loss_and_grad(params, batch, **kw)
  results = {}
  with jax.enable_x64(True):
    p, b = jax.tree.map(jnp.asarray, (params, batch))
    counts = batch_counts(b["mask"], agg=agg)
    for n_micro in (1, 2, 4):
      fn = functools.partial(loss_fn, counts=counts, **kw)
      results[n_micro] = jax.jit(lambda p, b, n=n_micro, fn=fn: accumulate_grads(fn, p, b, n, shares=True))(p, b)
  for n_micro, (got, metrics, grads) in results.items():
    np.testing.assert_allclose(float(got), expected, rtol=1e-12, atol=1e-15, err_msg=f"grad_accum {n_micro}")
    for name in ("w", "b"):
      np.testing.assert_allclose(np.asarray(grads[name]), expected_grad[name], rtol=1e-10, atol=1e-15)
    for key, value in results[1][1].items():  # metrics: shares add up, extremes are the batch's
      np.testing.assert_allclose(float(metrics[key]), float(value), rtol=1e-12, atol=1e-15, err_msg=key)
  assert float(results[4][1]["valid_tokens"]) == sum(LENGTHS)


def test_mean_of_micro_batch_means_was_wrong_for_token_mean():
  """The bug fixed: micro-batches of 110 and 22 tokens averaged as token means give another loss and gradient."""
  mask = np.zeros((2, 110))
  mask[0, :110], mask[1, :22] = 1, 1
  batch = {"x": np.ones((2, 110)), "mask": mask, "adv": np.array([-0.3, 1.0])}

  def local(params, b, counts=None):
    return grpo_loss(b["x"] * params, None, None, b["adv"], b["mask"], kl=None, agg="token-mean", counts=counts)

  with jax.enable_x64(True):
    params, b = jnp.asarray(-0.5), jax.tree.map(jnp.asarray, batch)
    whole = accumulate_grads(local, params, b, 1)
    averaged = accumulate_grads(local, params, b, 2)  # each micro-batch its own token mean, averaged
    shares = accumulate_grads(functools.partial(local, counts=batch_counts(b["mask"], agg="token-mean")), params, b,
                              2, shares=True)
  # -(110 * -0.3 + 22 * 1) / 132 = 1/12 for the batch; -(-0.3 + 1) / 2 = -0.35 averaged
  assert float(whole[0]) == pytest.approx(1 / 12, rel=1e-12) and float(whole[2]) == pytest.approx(1 / 12, rel=1e-12)
  assert float(shares[0]) == pytest.approx(1 / 12, rel=1e-12) and float(shares[2]) == pytest.approx(1 / 12, rel=1e-12)
  assert float(averaged[0]) == pytest.approx(-0.35, rel=1e-12)  # 4.2x off and the gradient's sign flipped
  assert float(averaged[2]) == pytest.approx(-0.35, rel=1e-12)


@pytest.mark.parametrize("with_logits", [False, True])
def test_sft_token_mean_is_independent_of_grad_accum(with_logits):
  rng = np.random.default_rng(3)
  b, t, v = len(LENGTHS), max(LENGTHS), 11
  mask = (np.arange(t)[None, :] < np.asarray(LENGTHS)[:, None]).astype(np.float64)
  batch = {"x": rng.normal(size=(b, t, v)), "targets": rng.integers(0, v, size=(b, t)), "mask": mask}

  def fn(params, mb, token_count=None):
    logits = mb["x"] * params
    scores = logits if with_logits else jnp.take_along_axis(jax.nn.log_softmax(logits), mb["targets"][..., None],
                                                            axis=-1)[..., 0]
    return sft_loss(scores, mb["targets"], mb["mask"], token_count=token_count)

  with jax.enable_x64(True):
    params, jb = jnp.asarray(0.7), jax.tree.map(jnp.asarray, batch)
    whole = accumulate_grads(fn, params, jb, 1)
    count = jnp.sum(jb["mask"])
    for n_micro in (2, 4):
      loss, metrics, grad = accumulate_grads(functools.partial(fn, token_count=count), params, jb, n_micro,
                                             shares=True)
      assert float(loss) == pytest.approx(float(whole[0]), rel=1e-12)
      assert float(grad) == pytest.approx(float(whole[2]), rel=1e-10)
      for key, value in whole[1].items():
        assert float(metrics[key]) == pytest.approx(float(value), rel=1e-12), key
