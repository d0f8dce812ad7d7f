"""Rollout/trainer mismatch: the sampler's log-probabilities of its own tokens differ from the trainer's for the
same parameters (another program: KV cache, kernels, precision), so the rollout is slightly off-policy. Measured
every step, and optionally corrected per token by truncated (TIS) or masked (MIS) importance sampling.

The ratio is w_t = p_trainer(y_t) / p_sampler(y_t), with p_trainer the trainer's probability at the parameters that
sampled (the old log-probs). TIS multiplies each token's policy term by min(w_t, cap) (Yao et al. 2025, "Your
efficient RL framework secretly brings you off-policy RL training"; TRL's token_truncate, whose default cap is 3);
MIS gives weight 0 to tokens, or whole sequences (ratio prod_t w_t), whose ratio is outside [1/t, t] (TRL's
token_mask / sequence_mask, verl's mask mode). The weights multiply the policy term only, not the KL penalty, and
do not change the aggregation's denominator (as TRL).
"""
from __future__ import annotations

import jax.numpy as jnp

MIS_LEVELS = ("token", "sequence")


def rollout_correction(old_logprobs: jnp.ndarray, sampler_logprobs: jnp.ndarray, valid: jnp.ndarray, *,
                       tis_cap: float = 0.0, mis_threshold: float = 0.0, mis_level: str = "token",
                       token_count: jnp.ndarray | None = None) -> tuple[jnp.ndarray | None, dict[str, jnp.ndarray]]:
  """Importance weights of the policy term and the mismatch metrics.

  Args:
    old_logprobs: [B, T] the trainer's log-probs of the sampled tokens at the sampling parameters (no gradient).
    sampler_logprobs: [B, T] the sampler's log-probs of the same tokens (temperature 1, unfiltered).
    valid: [B, T] bools, the completion tokens; other positions may hold anything.
    tis_cap: truncated IS: the weight is min(w_t, tis_cap); 0 is off.
    mis_threshold: masked IS: weight 0 where w (the token's, or the sequence's product) is outside
      [1 / mis_threshold, mis_threshold]; 0 is off.
    mis_level: "token" or "sequence".
    token_count: valid tokens of the whole batch when this is one micro-batch of it (metric means are then shares
      that add up); None for the count of `valid`.

  Returns:
    (weights [B, T] or None when both corrections are off, metrics): mismatch/kl, the token mean of
    k3 = w - 1 - log w, an estimate of KL(sampler || trainer); mismatch/ratio_max and ratio_min over valid tokens;
    with TIS mismatch/tis_capped_frac (tokens whose w exceeds the cap), with MIS mismatch/mis_dropped_frac.
  """
  if mis_level not in MIS_LEVELS:
    raise ValueError(f"mis_level must be one of {MIS_LEVELS}, got {mis_level!r}")
  if tis_cap < 0 or mis_threshold < 0 or 0 < mis_threshold <= 1:
    raise ValueError(f"tis_cap must be >= 0 and mis_threshold 0 or > 1, got {tis_cap}, {mis_threshold}")
  dtype = jnp.promote_types(jnp.result_type(old_logprobs), jnp.float32)
  count = jnp.sum(valid.astype(dtype)) if token_count is None else token_count
  denominator = jnp.maximum(count, 1.0)

  def token_mean(x):
    return jnp.sum(jnp.where(valid, x, 0.0)) / denominator

  log_w = jnp.where(valid, jnp.asarray(old_logprobs, dtype) - jnp.asarray(sampler_logprobs, dtype), 0.0)
  w = jnp.exp(log_w)
  metrics = {
      "mismatch/kl": token_mean(jnp.expm1(log_w) - log_w),
      "mismatch/ratio_max": jnp.where(jnp.any(valid), jnp.max(jnp.where(valid, w, -jnp.inf)), 1.0),
      "mismatch/ratio_min": jnp.where(jnp.any(valid), jnp.min(jnp.where(valid, w, jnp.inf)), 1.0),
  }
  if not tis_cap and not mis_threshold:
    return None, metrics
  weights = jnp.ones_like(w)
  if mis_threshold:
    if mis_level == "sequence":
      log_w_seq = jnp.sum(log_w, axis=-1, keepdims=True)
      keep = jnp.broadcast_to(jnp.abs(log_w_seq) <= jnp.log(mis_threshold), w.shape)
    else:
      keep = jnp.abs(log_w) <= jnp.log(mis_threshold)
    weights = jnp.where(keep, weights, 0.0)
    metrics["mismatch/mis_dropped_frac"] = token_mean(jnp.logical_not(keep).astype(dtype))
  if tis_cap:
    weights = weights * jnp.minimum(w, tis_cap)
    metrics["mismatch/tis_capped_frac"] = token_mean((w > tis_cap).astype(dtype))
  return jnp.where(valid, weights, 0.0), metrics
