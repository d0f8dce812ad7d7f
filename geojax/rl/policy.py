"""Policy-gradient terms of the loss, registered by name (`grpo.loss`): what each token contributes before the KL
penalty and the aggregation.

Every term is a pure function of cleaned [B, T] inputs (0 at masked positions): log-probabilities under the policy
being trained (differentiated), under the policy that sampled the rollout (`old`, not differentiated; equal to the
policy's on the first update) and advantages broadcast to tokens. It returns a `PolicyTerm`.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from geojax.rl.registry import add_to


class PolicyTerm(NamedTuple):
  per_token: jnp.ndarray     # [B, T] policy loss of each token, before aggregation
  ratio: jnp.ndarray         # [B, T] the importance ratio the term clips (GSPO: its sequence's, on every token)
  clipped_low: jnp.ndarray   # [B, T] bool: clipped below 1 - eps_low (grpo, gspo: and so without gradient)
  clipped_high: jnp.ndarray  # [B, T] bool: clipped above 1 + eps_high


PolicyLoss = Callable[..., PolicyTerm]

POLICY_LOSSES: dict[str, PolicyLoss] = {}


def register_policy_loss(name: str) -> Callable[[PolicyLoss], PolicyLoss]:
  """Decorator adding `fn(logprobs, old_logprobs, advantages, valid, *, eps_low, eps_high) -> PolicyTerm` to
  `POLICY_LOSSES` under `name`."""

  return lambda fn: add_to(POLICY_LOSSES, name, fn, "policy loss")


def _clipped_surrogate(ratio: jnp.ndarray, advantages: jnp.ndarray, eps_low, eps_high) -> PolicyTerm:
  """-min(rho A, clip(rho, 1 - eps_low, 1 + eps_high) A): the PPO surrogate of a ratio rho per token."""
  clipped = jnp.clip(ratio, 1.0 - eps_low, 1.0 + eps_high)
  per_token = -jnp.minimum(ratio * advantages, clipped * advantages)
  ratio = jax.lax.stop_gradient(ratio)
  # the min takes the flat clipped branch (no gradient) exactly on these tokens
  return PolicyTerm(per_token, ratio, (ratio < 1.0 - eps_low) & (advantages < 0),
                    (ratio > 1.0 + eps_high) & (advantages > 0))


@register_policy_loss("grpo")
def ppo_clip(logprobs, old_logprobs, advantages, valid, *, eps_low, eps_high) -> PolicyTerm:
  """GRPO's PPO-clipped term with a per-token ratio rho_t = p(y_t) / p_old(y_t) (DeepSeekMath; DAPO's clip-higher
  when eps_high > eps_low)."""
  del valid
  return _clipped_surrogate(jnp.exp(logprobs - old_logprobs), advantages, eps_low, eps_high)


@register_policy_loss("gspo")
def gspo(logprobs, old_logprobs, advantages, valid, *, eps_low, eps_high) -> PolicyTerm:
  """GSPO (Zheng et al. 2025): the PPO-clipped term with one ratio per sequence, the geometric mean of its token
  ratios s = exp(mean_t (logp_t - logp_old_t)), put on each of its tokens (as TRL's importance_sampling_level
  "sequence"). With "sequence-mean-token-mean" this is the paper's objective mean_i -min(s_i A_i, clip(s_i) A_i);
  the paper clips tightly (eps_low 3e-4, eps_high 4e-4)."""
  tokens = jnp.sum(valid, axis=-1, keepdims=True).astype(logprobs.dtype)
  log_ratio = jnp.sum(jnp.where(valid, logprobs - old_logprobs, 0.0), axis=-1, keepdims=True) / jnp.maximum(tokens, 1)
  ratio = jnp.broadcast_to(jnp.exp(log_ratio), logprobs.shape)
  return _clipped_surrogate(ratio, advantages, eps_low, eps_high)


@register_policy_loss("cispo")
def cispo(logprobs, old_logprobs, advantages, valid, *, eps_low, eps_high) -> PolicyTerm:
  """CISPO (MiniMax-M1, 2025): a REINFORCE term weighted by the clipped, stop-gradient ratio,
  -sg(clip(rho_t, 1 - eps_low, 1 + eps_high)) A logp_t. Unlike the PPO clip, a clipped token keeps its gradient
  (with a capped weight). The paper sets no lower bound (eps_low = 1 here) and normalizes by tokens ("token-mean");
  TRL's cispo with epsilon_high = c is eps_low = 1, eps_high = c - 1."""
  del valid
  ratio = jax.lax.stop_gradient(jnp.exp(logprobs - old_logprobs))
  weight = jnp.clip(ratio, 1.0 - eps_low, 1.0 + eps_high)
  return PolicyTerm(-weight * advantages * logprobs, ratio, ratio < 1.0 - eps_low, ratio > 1.0 + eps_high)
