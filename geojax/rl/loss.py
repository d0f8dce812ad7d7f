"""The GRPO objective as a pure function: a policy term (`POLICY_LOSSES`: PPO-clipped per token, GSPO or CISPO),
optionally weighted by rollout/trainer importance sampling, plus a KL penalty to a reference policy, aggregated."""
from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp

from geojax.rl.aggregation import aggregate, aggregation, batch_count
from geojax.rl.correction import rollout_correction
from geojax.rl.kl import KL_ESTIMATORS
from geojax.rl.policy import POLICY_LOSSES


def batch_counts(mask: jnp.ndarray, *, agg: str, max_len: int | None = None) -> dict[str, jnp.ndarray]:
  """The whole batch's denominators: {"agg": the aggregation's, "tokens": valid tokens}.

  Passed as `counts` to `grpo_loss` on each micro-batch, they make its loss and metrics that micro-batch's share of
  the batch's, so that the shares sum to the loss of the whole batch (gradient accumulation is exact).
  """
  mask = jnp.asarray(mask).astype(jnp.promote_types(jnp.result_type(mask), jnp.float32))
  return {"agg": batch_count(agg, mask, max_len=max_len), "tokens": jnp.sum(mask)}


def grpo_loss(logprobs: jnp.ndarray, old_logprobs: jnp.ndarray | None, ref_logprobs: jnp.ndarray | None,
              advantages: jnp.ndarray, mask: jnp.ndarray, *, loss: str = "grpo", eps_low: float = 0.2,
              eps_high: float = 0.2, beta: float = 0.04, kl: str | None = "k3", agg: str = "sequence-mean-token-mean",
              max_len: int | None = None, sampler_logprobs: jnp.ndarray | None = None, tis_cap: float = 0.0,
              mis_threshold: float = 0.0, mis_level: str = "token",
              counts: Mapping[str, jnp.ndarray] | None = None) -> tuple[jnp.ndarray, dict[str, jnp.ndarray]]:
  """GRPO loss of a batch of completions and its diagnostics.

  Per token, with A the advantage of the token's sequence and the policy term P_t named by `loss`:
    grpo   P_t = -min(rho_t A, clip(rho_t, 1 - eps_low, 1 + eps_high) A), rho_t = exp(logprobs - old_logprobs)
    gspo   the same with the sequence's ratio s = exp(mean_t(logprobs - old_logprobs)) on each of its tokens
    cispo  P_t = -sg(clip(rho_t, 1 - eps_low, 1 + eps_high)) A logprobs_t
    loss_t = c_t P_t + beta * KL_t,
  c_t the rollout correction (`geojax.rl.correction`: TIS / MIS weights, 1 when off), KL_t from the estimator named
  by `kl` (`KL_ESTIMATORS`: "k1", "k2", "k3"; None for no penalty), then reduced by the aggregation named by `agg`.

  Args:
    logprobs: [B, T] log-probabilities of the sampled tokens under the policy being trained (differentiated).
    old_logprobs: [B, T] the same under the policy that sampled them. None means the first update on a rollout
      (old = current, so rho = 1 with the PPO gradient A * grad logp).
    ref_logprobs: [B, T] the same under the frozen reference policy; may be None when `kl` is None or beta == 0.
    advantages: [B] per-sequence (or [B, T] per-token) advantages; not differentiated.
    mask: [B, T] 1 on completion tokens, 0 on padding and after EOS. Values at masked positions are ignored,
      even inf or NaN.
    loss: policy term name (`POLICY_LOSSES`): "grpo", "gspo" or "cispo".
    eps_low, eps_high: clip range of the ratio (DAPO's clip-higher uses eps_high > eps_low).
    beta: weight of the KL penalty (a Python float, or an array under jit for a schedule).
    kl: KL estimator name, or None.
    agg: an `AGGREGATIONS` name: "token-mean", "sequence-mean-token-mean" (Geo-R, GLOBE),
      "sequence-mean-token-scale" (Dr. GRPO) or "seq-mean-token-sum".
    max_len: the constant divisor of "sequence-mean-token-scale" (default T).
    sampler_logprobs: [B, T] the sampler's log-probabilities of the tokens: adds the mismatch/* metrics, and is
      needed by tis_cap / mis_threshold.
    tis_cap, mis_threshold, mis_level: truncated / masked importance sampling (`rollout_correction`); 0 is off.
    counts: the whole batch's `batch_counts` when this is one micro-batch of it; None for a whole batch.

  Returns:
    (loss, metrics): a scalar, and scalars (no gradient) averaged over valid tokens: pg_loss, kl (when a KL is
    computed), clip_frac_low / clip_frac_high / clip_frac (tokens whose ratio is clipped; for grpo and gspo they
    get no gradient, for cispo a capped weight), ratio_mean / ratio_min / ratio_max, entropy_proxy (mean -logprob
    of the sampled tokens, an estimate of the policy entropy when the samples are on-policy), advantage_mean,
    valid_tokens, and with sampler_logprobs the mismatch/* metrics. With `counts`, every metric but the *_max /
    *_min ones is the micro-batch's share (they add up over micro-batches).
  """
  if loss not in POLICY_LOSSES:
    raise ValueError(f"unknown policy loss {loss!r}; expected one of {sorted(POLICY_LOSSES)}")
  if kl is not None and kl not in KL_ESTIMATORS:
    raise ValueError(f"unknown KL estimator {kl!r}; expected one of {sorted(KL_ESTIMATORS)} or None")
  aggregation(agg)  # a renamed or unknown name fails here, with what to use instead
  # eps and beta may be traced (e.g. a beta schedule under jit); only Python numbers are checked here.
  if any(isinstance(e, (int, float)) and e < 0 for e in (eps_low, eps_high)):
    raise ValueError(f"clip ranges must be >= 0, got eps_low={eps_low}, eps_high={eps_high}")
  no_penalty = isinstance(beta, (int, float)) and beta == 0
  use_kl = kl is not None and ref_logprobs is not None
  if kl is not None and not no_penalty and ref_logprobs is None:
    raise ValueError(f"a KL penalty ({kl!r}, beta={beta}) needs ref_logprobs")
  if (tis_cap or mis_threshold) and sampler_logprobs is None:
    raise ValueError("importance sampling against the sampler (tis_cap, mis_threshold) needs sampler_logprobs")

  dtype = jnp.promote_types(jnp.result_type(logprobs), jnp.float32)
  valid = jnp.asarray(mask).astype(bool)
  weight = valid.astype(dtype)
  agg_count = None if counts is None else counts["agg"]
  token_count = jnp.sum(weight) if counts is None else counts["tokens"]

  # Replace masked entries before any arithmetic: padding may hold -inf or NaN, and a NaN that is multiplied
  # by a zero mask still poisons the sum and the gradient.
  def clean(x: jnp.ndarray) -> jnp.ndarray:
    return jnp.where(valid, jnp.asarray(x).astype(dtype), 0.0)

  logprobs = clean(logprobs)
  old_logprobs = jax.lax.stop_gradient(logprobs if old_logprobs is None else clean(old_logprobs))
  advantages = jax.lax.stop_gradient(jnp.asarray(advantages).astype(dtype))
  if advantages.ndim == 1:
    advantages = advantages[:, None]
  advantages = jnp.where(valid, jnp.broadcast_to(advantages, valid.shape), 0.0)

  term = POLICY_LOSSES[loss](logprobs, old_logprobs, advantages, valid, eps_low=eps_low, eps_high=eps_high)
  pg_per_token = term.per_token
  correction_metrics = {}
  if sampler_logprobs is not None:
    is_weights, correction_metrics = rollout_correction(
        old_logprobs, sampler_logprobs, valid, tis_cap=tis_cap, mis_threshold=mis_threshold, mis_level=mis_level,
        token_count=token_count)
    if is_weights is not None:
      pg_per_token = pg_per_token * jax.lax.stop_gradient(is_weights)
  per_token = pg_per_token
  if use_kl:
    kl_per_token = KL_ESTIMATORS[kl](logprobs, jax.lax.stop_gradient(clean(ref_logprobs)))
    if not no_penalty:
      per_token = per_token + beta * kl_per_token

  total = aggregate(agg, per_token, weight, max_len=max_len, count=agg_count)

  def token_mean(x: jnp.ndarray) -> jnp.ndarray:
    return jnp.sum(jnp.where(valid, x, 0.0)) / jnp.maximum(token_count, 1.0)

  def masked_extreme(x: jnp.ndarray, reduce, fill: float) -> jnp.ndarray:
    return jnp.where(jnp.any(valid), reduce(jnp.where(valid, x, fill)), 1.0)

  low, high = term.clipped_low, term.clipped_high
  metrics = {
      "pg_loss": aggregate(agg, pg_per_token, weight, max_len=max_len, count=agg_count),
      "clip_frac_low": token_mean(low.astype(dtype)),
      "clip_frac_high": token_mean(high.astype(dtype)),
      "clip_frac": token_mean((low | high).astype(dtype)),
      "ratio_mean": token_mean(term.ratio),
      "ratio_min": masked_extreme(term.ratio, jnp.min, jnp.inf),
      "ratio_max": masked_extreme(term.ratio, jnp.max, -jnp.inf),
      "entropy_proxy": token_mean(-logprobs),
      "advantage_mean": token_mean(advantages),
      "valid_tokens": jnp.sum(weight),
      **correction_metrics,
  }
  if use_kl:
    metrics["kl"] = token_mean(kl_per_token)
  metrics = jax.tree.map(jax.lax.stop_gradient, metrics)
  return total, metrics
