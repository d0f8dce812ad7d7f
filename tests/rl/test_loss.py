"""grpo_loss vs an independent float64 NumPy loop implementation of the formula (every policy loss, KL estimator,
aggregation and rollout correction), its gradient vs the analytic gradient and finite differences, and
hand-computed cases."""
import functools
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from geojax.rl import AGGREGATIONS, KL_ESTIMATORS, POLICY_LOSSES, aggregate, grpo_loss, rollout_correction

KLS = ["k1", "k2", "k3", None]
AGGS = ["token-mean", "sequence-mean-token-mean", "sequence-mean-token-scale", "seq-mean-token-sum"]
LOSSES = ["grpo", "gspo", "cispo"]


def reference_kl(kind, logp, ref):
  if kind == "k1":
    return logp - ref, 1.0
  if kind == "k2":
    return 0.5 * (logp - ref) ** 2, logp - ref
  if kind == "k3":
    return math.exp(ref - logp) - (ref - logp) - 1.0, 1.0 - math.exp(ref - logp)
  return 0.0, 0.0


def reference_weights(mask, agg, max_len):
  """w[b, t] with loss = sum w * loss_t: each aggregation's definition, token by token."""
  batch, length = mask.shape
  lengths = [int(sum(mask[b])) for b in range(batch)]
  nonempty = len([b for b in range(batch) if lengths[b] > 0])
  weights = np.zeros((batch, length))
  for b, t in itertools.product(range(batch), range(length)):
    if mask[b, t]:
      weights[b, t] = {"token-mean": 1.0 / sum(lengths),
                       "sequence-mean-token-mean": 1.0 / (lengths[b] * nonempty),
                       "sequence-mean-token-scale": 1.0 / (max_len * nonempty),
                       "seq-mean-token-sum": 1.0 / nonempty}[agg]
  return weights


def reference_correction(old, sampler, mask, tis_cap, mis_threshold, mis_level):
  """c[b, t]: the importance weight of each token's policy term."""
  batch, length = mask.shape
  c = np.ones((batch, length))
  for b in range(batch):
    seq_log_w = sum(old[b, t] - sampler[b, t] for t in range(length) if mask[b, t])
    for t in range(length):
      if not mask[b, t]:
        continue
      log_w = old[b, t] - sampler[b, t]
      if mis_threshold:
        outside = abs(seq_log_w if mis_level == "sequence" else log_w) > math.log(mis_threshold)
        c[b, t] = 0.0 if outside else 1.0
      if tis_cap:
        c[b, t] *= min(math.exp(log_w), tis_cap)
  return c


def reference(logp, old, ref, adv, mask, *, eps_low, eps_high, beta, kl, agg, loss="grpo", max_len=None,
              sampler=None, tis_cap=0.0, mis_threshold=0.0, mis_level="token"):
  """Loss and d loss / d logp, token by token in float64 Python."""
  batch, length = logp.shape
  max_len = length if max_len is None else max_len
  weights = reference_weights(mask, agg, max_len)
  c = np.ones((batch, length)) if sampler is None else reference_correction(old, sampler, mask, tis_cap,
                                                                             mis_threshold, mis_level)
  value = np.zeros((batch, length))
  grad = np.zeros((batch, length))
  for b in range(batch):
    tokens = [t for t in range(length) if mask[b, t]]
    seq_ratio = math.exp(sum(logp[b, t] - old[b, t] for t in tokens) / max(len(tokens), 1))
    for t in tokens:
      a = float(adv[b]) if adv.ndim == 1 else float(adv[b, t])
      rho = seq_ratio if loss == "gspo" else math.exp(logp[b, t] - old[b, t])
      clipped_rho = min(max(rho, 1.0 - eps_low), 1.0 + eps_high)
      if loss == "cispo":  # the clipped ratio is a constant weight of a REINFORCE term
        pg, d_pg = -clipped_rho * a * logp[b, t], -clipped_rho * a
      else:
        unclipped_term, clipped_term = rho * a, clipped_rho * a
        pg = -min(unclipped_term, clipped_term)
        # the gradient flows through the min's unclipped branch only (clip is flat outside its range)
        d_pg = -rho * a if unclipped_term <= clipped_term else 0.0
      kl_value, d_kl = reference_kl(kl, logp[b, t], ref[b, t])
      value[b, t] = c[b, t] * pg + beta * kl_value
      if loss == "gspo":  # d s / d logp_t' = s / |y| for every token t' of the sequence
        for u in tokens:
          grad[b, u] += weights[b, t] * c[b, t] * d_pg / len(tokens)
      else:
        grad[b, t] += weights[b, t] * c[b, t] * d_pg
      grad[b, t] += weights[b, t] * beta * d_kl
  loss_value = sum(weights[b, t] * value[b, t] for b, t in itertools.product(range(batch), range(length)))
  return loss_value, grad


def random_case(seed, batch=6, length=9, per_token_adv=False, sequence_clips=False):
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
  if sequence_clips:  # GSPO clips whole sequences: row 0 at s = e^0.8 with A > 0, row 2 at s = e^-0.8 with A < 0
    old[0], old[2] = logp[0] - 0.8, logp[2] + 0.8
  mask = (np.arange(length)[None, :] < lengths[:, None]).astype(np.float64)
  # garbage where masked: must not leak into the loss or the gradient
  logp = np.where(mask > 0, logp, -np.inf)
  old = np.where(mask > 0, old, np.nan)
  return logp, old, ref, adv, mask


def clean_for_reference(logp, old):
  return np.nan_to_num(logp, neginf=0.0), np.nan_to_num(old)


KW = dict(eps_low=0.2, eps_high=0.28, beta=0.04)


CASES = ([("grpo", kl, agg) for kl, agg in itertools.product(KLS, AGGS)]
         + [(loss, kl, agg) for loss in ("gspo", "cispo") for kl, agg in itertools.product(["k3"], AGGS)]
         + [(loss, None, "sequence-mean-token-mean") for loss in ("gspo", "cispo")])


@pytest.mark.parametrize("loss,kl,agg", CASES)
def test_loss_and_gradient_match_float64_reference(loss, kl, agg):
  logp, old, ref, adv, mask = random_case(seed=KLS.index(kl) * 10 + AGGS.index(agg), sequence_clips=loss == "gspo")
  max_len = 12 if agg == "sequence-mean-token-scale" else None
  loss_fn = functools.partial(grpo_loss, loss=loss, kl=kl, agg=agg, max_len=max_len, **KW)
  expected, expected_grad = reference(*clean_for_reference(logp, old), ref, adv, mask, kl=kl, agg=agg, loss=loss,
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
  assert float(aggregate("token-mean", values, mask)) == pytest.approx(2.5)
  assert float(aggregate("sequence-mean-token-mean", values, mask)) == pytest.approx(3.0)
  assert float(aggregate("sequence-mean-token-scale", values, mask, max_len=4)) == pytest.approx(1.25)
  assert float(aggregate("sequence-mean-token-scale", values, mask)) == pytest.approx(5 / 3)
  assert float(aggregate("seq-mean-token-sum", values, mask)) == pytest.approx(5.0)
  # a micro-batch's share: its own sum over the whole batch's count
  assert float(aggregate("token-mean", values[1:], mask[1:], count=jnp.float32(4.0))) == pytest.approx(1.0)


def test_names_mean_what_tunix_means():
  """At length 48, Tunix's sequence-mean-token-sum-norm (token sum / batch size) is 48x its
  sequence-mean-token-scale (token sum / 48 per sequence, mean over sequences): geojax's old name for the latter
  is refused, with the new name."""
  values, mask = jnp.ones((4, 48)), jnp.ones((4, 48))
  tunix_sum_norm = float(jnp.sum(values * mask) / 4)
  assert float(aggregate("sequence-mean-token-scale", values, mask)) * 48 == pytest.approx(tunix_sum_norm)
  assert float(aggregate("seq-mean-token-sum", values, mask)) == pytest.approx(tunix_sum_norm)
  with pytest.raises(ValueError, match="renamed.*'sequence-mean-token-scale'"):
    aggregate("sequence-mean-token-sum-norm", values, mask)
  with pytest.raises(ValueError, match="renamed.*'sequence-mean-token-scale'"):
    grpo_loss(values, None, None, jnp.zeros(4), mask, kl=None, agg="sequence-mean-token-sum-norm")
  assert "sequence-mean-token-sum-norm" not in AGGREGATIONS


def test_old_logprobs_none_is_on_policy():
  """One update per rollout: rho = 1, gradient of the pg term = -A * weight (Geo-R's setting)."""
  logp, _, ref, adv, mask = random_case(seed=3)
  logp = np.nan_to_num(logp, neginf=0.0)
  (loss, m), grad = jax.value_and_grad(grpo_loss, has_aux=True)(
      jnp.asarray(logp, jnp.float32), None, None, jnp.asarray(adv, jnp.float32), jnp.asarray(mask), kl=None,
      agg="token-mean")
  np.testing.assert_allclose(np.asarray(grad), -adv[:, None] * mask / mask.sum(), rtol=1e-5, atol=1e-7)
  assert float(m["ratio_min"]) == float(m["ratio_max"]) == 1.0 and float(m["clip_frac"]) == 0.0


@pytest.mark.parametrize("loss,kl,agg", [("grpo", kl, agg) for kl, agg in itertools.product(KLS, AGGS)]
                         + [(loss, "k3", "token-mean") for loss in ("gspo", "cispo")])
def test_empty_mask_gives_zero_loss_and_finite_gradient(loss, kl, agg):
  logp = jnp.full((2, 4), -jnp.inf)
  old = jnp.full((2, 4), jnp.nan)
  (loss, metrics), grad = jax.value_and_grad(grpo_loss, has_aux=True)(
      logp, old, old, jnp.array([1.0, -1.0]), jnp.zeros((2, 4)), loss=loss, kl=kl, agg=agg, sampler_logprobs=old,
      tis_cap=2.0, mis_threshold=3.0)
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
  assert set(POLICY_LOSSES) >= set(LOSSES)
  x = jnp.zeros((1, 2))
  with pytest.raises(ValueError, match="unknown policy loss"):
    grpo_loss(x, x, x, jnp.zeros(1), x, loss="ppo")
  with pytest.raises(ValueError, match="needs sampler_logprobs"):
    grpo_loss(x, x, None, jnp.zeros(1), x, kl=None, tis_cap=2.0)
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


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("tis_cap,mis_threshold,mis_level", [(1.5, 0.0, "token"), (0.0, 2.0, "token"),
                                                             (0.0, 2.0, "sequence"), (2.0, 1.8, "token")])
def test_rollout_correction_matches_float64_reference(loss, tis_cap, mis_threshold, mis_level):
  logp, old, ref, adv, mask = random_case(seed=21, batch=8, sequence_clips=loss == "gspo")
  logp, old = clean_for_reference(logp, old)
  rng = np.random.default_rng(22)
  sampler = old + rng.normal(scale=0.5, size=old.shape) / np.arange(1, 9)[:, None]  # rows from far to near
  sampler = np.where(mask > 0, sampler, np.nan)
  kw = dict(loss=loss, kl="k3", agg="sequence-mean-token-mean", tis_cap=tis_cap, mis_threshold=mis_threshold,
            mis_level=mis_level, **KW)
  expected, expected_grad = reference(logp, old, ref, adv, mask, sampler=np.nan_to_num(sampler), **kw)
  with jax.enable_x64(True):
    (got, metrics), grad = jax.value_and_grad(grpo_loss, has_aux=True)(
        *[jnp.asarray(x) for x in (logp, old, ref, adv, mask)], sampler_logprobs=jnp.asarray(sampler), **kw)
  np.testing.assert_allclose(float(got), expected, rtol=1e-12, atol=1e-14)
  np.testing.assert_allclose(np.asarray(grad), expected_grad, rtol=1e-10, atol=1e-14)
  c = reference_correction(old, np.nan_to_num(sampler), mask, tis_cap, mis_threshold, mis_level)
  valid = mask > 0
  if mis_threshold:  # some tokens dropped, some kept
    assert 0 < float(metrics["mismatch/mis_dropped_frac"]) < 1
    assert float(metrics["mismatch/mis_dropped_frac"]) == pytest.approx(np.mean(c[valid] == 0))
  if tis_cap:
    assert 0 < float(metrics["mismatch/tis_capped_frac"]) < 1


def test_mismatch_metrics_match_float64():
  logp, old, _, _, mask = random_case(seed=23)
  logp, old = clean_for_reference(logp, old)
  valid = mask > 0
  sampler = old + np.random.default_rng(24).normal(scale=0.1, size=old.shape)
  log_w = (old - sampler)[valid]
  with jax.enable_x64(True):
    weights, metrics = rollout_correction(jnp.asarray(old), jnp.asarray(sampler), jnp.asarray(valid))
  assert weights is None  # both corrections off: metrics only
  np.testing.assert_allclose(float(metrics["mismatch/kl"]), np.mean(np.exp(log_w) - 1 - log_w), rtol=1e-12)
  np.testing.assert_allclose(float(metrics["mismatch/ratio_max"]), np.exp(log_w.max()), rtol=1e-12)
  np.testing.assert_allclose(float(metrics["mismatch/ratio_min"]), np.exp(log_w.min()), rtol=1e-12)
  # the loss reports them too, and they do not change it
  args = [jnp.asarray(x, jnp.float32) for x in (logp, old, old, np.ones(6), mask)]
  plain, _ = grpo_loss(*args)
  with_metrics, m = grpo_loss(*args, sampler_logprobs=jnp.asarray(sampler, jnp.float32))
  assert float(plain) == float(with_metrics) and "mismatch/kl" in m


def test_hand_computed_gspo_and_cispo():
  logp = jnp.array([[-1.0, -2.0, -0.5]])
  mask = jnp.ones((1, 3))
  # GSPO: s = exp(mean(0.3, -0.3, 0.6)) = e^0.2 = 1.2214 < 1.28: unclipped, loss -s A
  old = logp - jnp.array([[0.3, -0.3, 0.6]])
  loss, m = grpo_loss(logp, old, None, jnp.array([2.0]), mask, loss="gspo", kl=None, eps_high=0.28)
  assert float(loss) == pytest.approx(-2.0 * math.exp(0.2), rel=1e-6)
  assert float(m["ratio_min"]) == float(m["ratio_max"]) == pytest.approx(math.exp(0.2), rel=1e-6)
  # ... with eps_high 0.1 it clips at 1.1 and no token gets a gradient
  (loss, m), grad = jax.value_and_grad(grpo_loss, has_aux=True)(logp, old, None, jnp.array([2.0]), mask,
                                                                 loss="gspo", kl=None, eps_high=0.1)
  assert float(loss) == pytest.approx(-2.2, rel=1e-6) and float(m["clip_frac_high"]) == 1.0
  assert np.all(np.asarray(grad) == 0.0)
  # CISPO: weights clip(e^0.3, e^-0.3, e^0.6 into [0.8, 1.2]) = 1.2, 0.8, 1.2; loss = -mean(w A logp)
  (loss, m), grad = jax.value_and_grad(grpo_loss, has_aux=True)(logp, old, None, jnp.array([2.0]), mask,
                                                                 loss="cispo", kl=None)
  w = np.array([1.2, 0.8, 1.2])
  assert float(loss) == pytest.approx(float(-np.mean(w * 2.0 * np.array([-1.0, -2.0, -0.5]))), rel=1e-6)
  np.testing.assert_allclose(np.asarray(grad)[0], -w * 2.0 / 3, rtol=1e-6)  # clipped tokens keep a gradient
  assert float(m["clip_frac_high"]) == pytest.approx(2 / 3) and float(m["clip_frac_low"]) == pytest.approx(1 / 3)


@pytest.mark.parametrize("loss", LOSSES)
def test_first_update_has_the_policy_gradient_of_grpo(loss):
  """old = None (one update per rollout): every policy loss has the REINFORCE gradient -A grad logp."""
  logp, _, ref, adv, mask = random_case(seed=25)
  logp = np.nan_to_num(logp, neginf=0.0)
  grad = jax.grad(lambda x: grpo_loss(x, None, None, jnp.asarray(adv, jnp.float32), jnp.asarray(mask), loss=loss,
                                      kl=None, agg="token-mean")[0])(jnp.asarray(logp, jnp.float32))
  np.testing.assert_allclose(np.asarray(grad), -adv[:, None] * mask / mask.sum(), rtol=1e-5, atol=1e-7)
