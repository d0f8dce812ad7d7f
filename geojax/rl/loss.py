"""The GRPO objective: PPO-clipped policy gradient plus a KL penalty to a reference policy, as a pure function."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from geojax.rl.aggregation import AGGREGATIONS
from geojax.rl.kl import KL_ESTIMATORS


def grpo_loss(logprobs: jnp.ndarray, old_logprobs: jnp.ndarray | None, ref_logprobs: jnp.ndarray | None,
              advantages: jnp.ndarray, mask: jnp.ndarray, *, eps_low: float = 0.2, eps_high: float = 0.2,
              beta: float = 0.04, kl: str | None = "k3", agg: str = "sequence-mean-token-mean",
              max_len: int | None = None) -> tuple[jnp.ndarray, dict[str, jnp.ndarray]]:
  """GRPO loss of a batch of completions and its diagnostics.

  Per token, with rho = exp(logprobs - old_logprobs) and A the advantage of the token's sequence:
    loss_t = -min(rho A, clip(rho, 1 - eps_low, 1 + eps_high) A) + beta * KL_t,
  KL_t from the estimator named by `kl` (`KL_ESTIMATORS`: "k1", "k2", "k3"; None for no penalty), then reduced
  by the aggregation named by `agg` (`AGGREGATIONS`).

  Args:
    logprobs: [B, T] log-probabilities of the sampled tokens under the policy being trained (differentiated).
    old_logprobs: [B, T] the same under the policy that sampled them. None means one update per rollout
      (old = current, so rho = 1 with the PPO gradient A * grad logp).
    ref_logprobs: [B, T] the same under the frozen reference policy; may be None when `kl` is None or beta == 0.
    advantages: [B] per-sequence (or [B, T] per-token) advantages; not differentiated.
    mask: [B, T] 1 on completion tokens, 0 on padding and after EOS. Values at masked positions are ignored,
      even inf or NaN.
    eps_low, eps_high: clip range of rho (DAPO's clip-higher uses eps_high > eps_low).
    beta: weight of the KL penalty (a Python float, or an array under jit for a schedule).
    kl: KL estimator name, or None.
    agg: "token-mean", "sequence-mean-token-mean" (Geo-R, GLOBE) or "sequence-mean-token-sum-norm" (Dr. GRPO).
    max_len: the constant divisor of "sequence-mean-token-sum-norm" (default T).

  Returns:
    (loss, metrics): a scalar, and scalars (no gradient) averaged over valid tokens: pg_loss, kl (when a KL is
    computed), clip_frac_low / clip_frac_high / clip_frac (tokens whose clipped branch is active, i.e. gets no
    gradient), ratio_mean / ratio_min / ratio_max, entropy_proxy (mean -logprob of the sampled tokens, an
    estimate of the policy entropy when the samples are on-policy), advantage_mean, valid_tokens.
  """
  if kl is not None and kl not in KL_ESTIMATORS:
    raise ValueError(f"unknown KL estimator {kl!r}; expected one of {sorted(KL_ESTIMATORS)} or None")
  if agg not in AGGREGATIONS:
    raise ValueError(f"unknown loss aggregation {agg!r}; expected one of {sorted(AGGREGATIONS)}")
  # eps and beta may be traced (e.g. a beta schedule under jit); only Python numbers are checked here.
  if any(isinstance(e, (int, float)) and e < 0 for e in (eps_low, eps_high)):
    raise ValueError(f"clip ranges must be >= 0, got eps_low={eps_low}, eps_high={eps_high}")
  no_penalty = isinstance(beta, (int, float)) and beta == 0
  use_kl = kl is not None and ref_logprobs is not None
  if kl is not None and not no_penalty and ref_logprobs is None:
    raise ValueError(f"a KL penalty ({kl!r}, beta={beta}) needs ref_logprobs")

  dtype = jnp.promote_types(jnp.result_type(logprobs), jnp.float32)
  valid = jnp.asarray(mask).astype(bool)
  weight = valid.astype(dtype)

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

  ratio = jnp.exp(logprobs - old_logprobs)
  clipped_ratio = jnp.clip(ratio, 1.0 - eps_low, 1.0 + eps_high)
  pg_per_token = -jnp.minimum(ratio * advantages, clipped_ratio * advantages)
  per_token = pg_per_token
  if use_kl:
    kl_per_token = KL_ESTIMATORS[kl](logprobs, jax.lax.stop_gradient(clean(ref_logprobs)))
    if not no_penalty:
      per_token = per_token + beta * kl_per_token

  aggregate = AGGREGATIONS[agg]
  loss = aggregate(per_token, weight, max_len=max_len)

  def token_mean(x: jnp.ndarray) -> jnp.ndarray:
    return jnp.sum(jnp.where(valid, x, 0.0)) / jnp.maximum(jnp.sum(weight), 1.0)

  def masked_extreme(x: jnp.ndarray, reduce, fill: float) -> jnp.ndarray:
    return jnp.where(jnp.any(valid), reduce(jnp.where(valid, x, fill)), 1.0)

  ratio_ng = jax.lax.stop_gradient(ratio)
  low = (ratio_ng < 1.0 - eps_low) & (advantages < 0)
  high = (ratio_ng > 1.0 + eps_high) & (advantages > 0)
  metrics = {
      "pg_loss": aggregate(pg_per_token, weight, max_len=max_len),
      "clip_frac_low": token_mean(low.astype(dtype)),
      "clip_frac_high": token_mean(high.astype(dtype)),
      "clip_frac": token_mean((low | high).astype(dtype)),
      "ratio_mean": token_mean(ratio_ng),
      "ratio_min": masked_extreme(ratio_ng, jnp.min, jnp.inf),
      "ratio_max": masked_extreme(ratio_ng, jnp.max, -jnp.inf),
      "entropy_proxy": token_mean(-logprobs),
      "advantage_mean": token_mean(advantages),
      "valid_tokens": jnp.sum(weight),
  }
  if use_kl:
    metrics["kl"] = token_mean(kl_per_token)
  metrics = jax.tree.map(jax.lax.stop_gradient, metrics)
  return loss, metrics
