"""grpo_loss vs an independent float64 NumPy loop implementation of the formula, its gradient vs the analytic
PPO gradient and finite differences, and hand-computed cases."""
import functools
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from geojax.rl import AGGREGATIONS, KL_ESTIMATORS, grpo_loss

KLS = ["k1", "k2", "k3", None]
AGGS = ["token-mean", "sequence-mean-token-mean", "sequence-mean-token-sum-norm"]


def reference_kl(kind, logp, ref):
  if kind == "k1":
    return logp - ref, 1.0
  if kind == "k2":
    return 0.5 * (logp - ref) ** 2, logp - ref
  if kind == "k3":
    return math.exp(ref - logp) - (ref - logp) - 1.0, 1.0 - math.exp(ref - logp)
  return 0.0, 0.0


def reference(logp, old, ref, adv, mask, *, eps_low, eps_high, beta, kl, agg, max_len=None):
  """Loss and d loss / d logp, token by token in float64 Python."""
  batch, length = logp.shape
  max_len = length if max_len is None else max_len
  per_token = np.zeros((batch, length))
  d_per_token = np.zeros((batch, length))
  for b, t in itertools.product(range(batch), range(length)):
    if not mask[b, t]:
      continue
    a = float(adv[b]) if adv.ndim == 1 else float(adv[b, t])
    rho = math.exp(logp[b, t] - old[b, t])
    clipped_rho = min(max(rho, 1.0 - eps_low), 1.0 + eps_high)
    unclipped_term, clipped_term = rho * a, clipped_rho * a
    per_token[b, t] = -min(unclipped_term, clipped_term)
    # the gradient flows through the min's unclipped branch only (clip is flat outside its range)
    d_per_token[b, t] = -rho * a if unclipped_term <= clipped_term else 0.0
    value, grad = reference_kl(kl, logp[b, t], ref[b, t])
    per_token[b, t] += beta * value
    d_per_token[b, t] += beta * grad
  lengths = [int(sum(mask[b])) for b in range(batch)]
  nonempty = [b for b in range(batch) if lengths[b] > 0]
  weights = np.zeros((batch, length))
  for b, t in itertools.product(range(batch), range(length)):
    if not mask[b, t]:
      continue
    if agg == "token-mean":
      weights[b, t] = 1.0 / sum(lengths)
    elif agg == "sequence-mean-token-mean":
      weights[b, t] = 1.0 / (lengths[b] * len(nonempty))
    else:
      weights[b, t] = 1.0 / (max_len * len(nonempty))
  loss = sum(weights[b, t] * per_token[b, t] for b, t in itertools.product(range(batch), range(length)))
  return loss, weights * d_per_token


def random_case(seed, batch=6, length=9, per_token_adv=False):
  rng = np.random.default_rng(seed)
  logp = -np.abs(rng.normal(size=(batch, length))) * 2 - 0.01
  old = logp + rng.normal(scale=0.4, size=(batch, length))  # rho from ~0.3 to ~3: both clip regions occur
  ref = logp + rng.normal(scale=0.3, size=(batch, length))
  adv = rng.normal(size=(batch, length) if per_token_adv else batch)
  lengths = rng.integers(1, length + 1, size=batch)
  lengths[1] = 0  # a row without any valid token
  # one token in each clipped region: rho = e^0.8 with A > 0 (above 1 + eps_high), rho = e^-0.8 with A < 0
  old[0, 0], old[2, 0] = logp[0, 0] - 0.8, logp[2, 0] + 0.8
  adv[0], adv[2] = 1.0, -1.0
  mask = (np.arange(length)[None, :] < lengths[:, None]).astype(np.float64)
  # garbage where masked: must not leak into the loss or the gradient
  logp = np.where(mask > 0, logp, -np.inf)
  old = np.where(mask > 0, old, np.nan)
  return logp, old, ref, adv, mask


def clean_for_reference(logp, old):
  return np.nan_to_num(logp, neginf=0.0), np.nan_to_num(old)


KW = dict(eps_low=0.2, eps_high=0.28, beta=0.04)


@pytest.mark.parametrize("kl,agg", list(itertools.product(KLS, AGGS)))
def test_loss_and_gradient_match_float64_reference(kl, agg):
  logp, old, ref, adv, mask = random_case(seed=KLS.index(kl) * 10 + AGGS.index(agg))
  max_len = 12 if agg == "sequence-mean-token-sum-norm" else None
  loss_fn = functools.partial(grpo_loss, kl=kl, agg=agg, max_len=max_len, **KW)
  expected, expected_grad = reference(*clean_for_reference(logp, old), ref, adv, mask, kl=kl, agg=agg,
                                      max_len=max_len, **KW)
  with jax.enable_x64(True):
    args = [jnp.asarray(x) for x in (old, ref, adv, mask)]
    (loss64, metrics), grad64 = jax.value_and_grad(loss_fn, has_aux=True)(jnp.asarray(logp), *args)
  np.testing.assert_allclose(float(loss64), expected, rtol=1e-12, atol=1e-14)
  np.testing.assert_allclose(np.asarray(grad64), expected_grad, rtol=1e-10, atol=1e-14)
  assert float(metrics["clip_frac_low"]) > 0 and float(metrics["clip_frac_high"]) > 0  # both clip regions hit
  assert float(metrics["clip_frac"]) < 1

  f32 = [jnp.asarray(x, jnp.float32) for x in (logp, old, ref, adv, mask)]
  (loss32, _), grad32 = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(*f32)
  assert loss32.dtype == jnp.float32
  np.testing.assert_allclose(float(loss32), expected, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.asarray(grad32), expected_grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("kl", ["k1", "k2", "k3"])
def test_gradient_matches_finite_differences(kl):
  logp, old, ref, adv, mask = random_case(seed=7, batch=3, length=5)
  logp, old = clean_for_reference(logp, old)
  with jax.enable_x64(True):
    @jax.jit
    def loss(x):
      return grpo_loss(x, jnp.asarray(old), jnp.asarray(ref), jnp.asarray(adv), jnp.asarray(mask), kl=kl,
                       agg="sequence-mean-token-mean", beta=0.3)[0]
    grad = np.asarray(jax.grad(loss)(jnp.asarray(logp)))
    numeric = np.zeros_like(logp)
    h = 1e-6
    for index in np.ndindex(*logp.shape):
      step = np.zeros_like(logp)
      step[index] = h
      numeric[index] = (float(loss(jnp.asarray(logp + step))) - float(loss(jnp.asarray(logp - step)))) / (2 * h)
  np.testing.assert_allclose(grad, numeric, atol=1e-8)


def test_per_token_advantages():
  logp, old, ref, adv, mask = random_case(seed=11, per_token_adv=True)
  expected, expected_grad = reference(*clean_for_reference(logp, old), ref, adv, mask, kl="k3",
                                      agg="token-mean", **KW)
  with jax.enable_x64(True):
    (loss, _), grad = jax.value_and_grad(grpo_loss, has_aux=True)(
        jnp.asarray(logp), jnp.asarray(old), jnp.asarray(ref), jnp.asarray(adv), jnp.asarray(mask), kl="k3",
        agg="token-mean", **KW)
  np.testing.assert_allclose(float(loss), expected, rtol=1e-12)
  np.testing.assert_allclose(np.asarray(grad), expected_grad, rtol=1e-10, atol=1e-14)


def one_token(logp, old, ref, adv, **kw):
  arr = lambda v: jnp.array([[v]], jnp.float32)  # noqa: E731
  return grpo_loss(arr(logp), arr(old), arr(ref), jnp.array([adv], jnp.float32), arr(1.0), **kw)


def test_hand_computed_single_tokens():
  # on-policy, no KL: loss = -A
  assert float(one_token(-1.0, -1.0, -1.0, 2.0, kl=None)[0]) == pytest.approx(-2.0)
  # rho = e^0.5 = 1.6487 > 1.2 with A = 1: clipped to 1.2
  loss, m = one_token(-0.5, -1.0, -0.5, 1.0, kl=None)
  assert float(loss) == pytest.approx(-1.2, rel=1e-6)
  assert float(m["clip_frac_high"]) == 1.0 and float(m["clip_frac_low"]) == 0.0
  # rho = e^-0.5 = 0.6065 < 0.8 with A = -1: -min(-0.6065, -0.8) = 0.8
  loss, m = one_token(-1.5, -1.0, -1.5, -1.0, kl=None)
  assert float(loss) == pytest.approx(0.8, rel=1e-6)
  assert float(m["clip_frac_low"]) == 1.0
  # rho = e^0.5 with A = -1: the unclipped branch is the min, no clipping: loss = rho
  loss, m = one_token(-0.5, -1.0, -0.5, -1.0, kl=None)
  assert float(loss) == pytest.approx(math.exp(0.5), rel=1e-6) and float(m["clip_frac"]) == 0.0
  # KL alone (A = 0), ref - logp = 0.1, beta 0.5
  for kl, value in [("k1", -0.1), ("k2", 0.005), ("k3", math.exp(0.1) - 1.1)]:
    loss, m = one_token(-1.0, -1.0, -0.9, 0.0, kl=kl, beta=0.5)
    assert float(loss) == pytest.approx(0.5 * value, rel=1e-5), kl
    assert float(m["kl"]) == pytest.approx(value, rel=1e-5), kl


def test_hand_computed_aggregations():
  values = jnp.array([[1.0, 2.0, 3.0], [4.0, 9.0, 9.0], [7.0, 7.0, 7.0]])
  mask = jnp.array([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
  assert float(AGGREGATIONS["token-mean"](values, mask)) == pytest.approx(2.5)
  assert float(AGGREGATIONS["sequence-mean-token-mean"](values, mask)) == pytest.approx(3.0)
  assert float(AGGREGATIONS["sequence-mean-token-sum-norm"](values, mask, max_len=4)) == pytest.approx(1.25)
  assert float(AGGREGATIONS["sequence-mean-token-sum-norm"](values, mask)) == pytest.approx(5 / 3)


def test_old_logprobs_none_is_on_policy():
  """One update per rollout: rho = 1, gradient of the pg term = -A * weight (Geo-R's setting)."""
  logp, _, ref, adv, mask = random_case(seed=3)
  logp = np.nan_to_num(logp, neginf=0.0)
  (loss, m), grad = jax.value_and_grad(grpo_loss, has_aux=True)(
      jnp.asarray(logp, jnp.float32), None, None, jnp.asarray(adv, jnp.float32), jnp.asarray(mask), kl=None,
      agg="token-mean")
  np.testing.assert_allclose(np.asarray(grad), -adv[:, None] * mask / mask.sum(), rtol=1e-5, atol=1e-7)
  assert float(m["ratio_min"]) == float(m["ratio_max"]) == 1.0 and float(m["clip_frac"]) == 0.0


@pytest.mark.parametrize("kl,agg", list(itertools.product(KLS, AGGS)))
def test_empty_mask_gives_zero_loss_and_finite_gradient(kl, agg):
  logp = jnp.full((2, 4), -jnp.inf)
  old = jnp.full((2, 4), jnp.nan)
  (loss, metrics), grad = jax.value_and_grad(grpo_loss, has_aux=True)(
      logp, old, old, jnp.array([1.0, -1.0]), jnp.zeros((2, 4)), kl=kl, agg=agg)
  assert float(loss) == 0.0
  assert np.all(np.asarray(grad) == 0.0)
  assert all(np.isfinite(float(v)) for v in metrics.values()), metrics
  assert float(metrics["valid_tokens"]) == 0.0


def test_bfloat16_inputs_computed_in_float32():
  logp, old, ref, adv, mask = random_case(seed=5)
  logp, old = clean_for_reference(logp, old)
  bf = [jnp.asarray(x, jnp.bfloat16) for x in (logp, old, ref, adv)]
  loss, metrics = grpo_loss(*bf, jnp.asarray(mask))
  assert loss.dtype == jnp.float32 and metrics["kl"].dtype == jnp.float32


def test_registries_and_errors():
  assert set(KL_ESTIMATORS) >= {"k1", "k2", "k3"}
  assert set(AGGREGATIONS) >= set(AGGS)
  x = jnp.zeros((1, 2))
  with pytest.raises(ValueError, match="unknown KL"):
    grpo_loss(x, x, x, jnp.zeros(1), x, kl="k4")
  with pytest.raises(ValueError, match="unknown loss aggregation"):
    grpo_loss(x, x, x, jnp.zeros(1), x, agg="sum")
  with pytest.raises(ValueError, match="needs ref_logprobs"):
    grpo_loss(x, x, None, jnp.zeros(1), x, kl="k3", beta=0.1)
  grpo_loss(x, x, None, jnp.zeros(1), x, kl="k3", beta=0.0)  # no penalty: no reference needed


def test_traced_beta_and_eps():
  """A schedule may pass beta and the clip range as traced values."""
  logp, old, ref, adv, mask = random_case(seed=13)
  logp, old = clean_for_reference(logp, old)
  args = [jnp.asarray(x, jnp.float32) for x in (logp, old, ref, adv, mask)]

  @jax.jit
  def loss_at(beta, eps):
    return grpo_loss(*args, beta=beta, eps_low=eps, eps_high=eps, kl="k3")[0]

  for beta, eps in [(0.0, 0.2), (0.04, 0.1)]:
    expected = float(grpo_loss(*args, beta=beta, eps_low=eps, eps_high=eps, kl="k3")[0])
    assert float(loss_at(jnp.float32(beta), jnp.float32(eps))) == pytest.approx(expected, rel=1e-6)
