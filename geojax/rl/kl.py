"""Per-token estimators of KL(policy || reference) from sampled-token log-probabilities, registered by name.

With x = ref_logp - logp on tokens sampled from the policy (Schulman, "Approximating KL divergence"):
  k1 = -x               unbiased, high variance, can be negative
  k2 = x^2 / 2          biased, low variance, its gradient is that of the true KL to first order
  k3 = e^x - x - 1      unbiased, always >= 0; the estimator of Geo-R's and GLOBE's code (TRL)
"""
from __future__ import annotations

from typing import Callable

import jax.numpy as jnp

from geojax.rl.registry import add_to

KLEstimator = Callable[[jnp.ndarray, jnp.ndarray], jnp.ndarray]

KL_ESTIMATORS: dict[str, KLEstimator] = {}


def register_kl(name: str) -> Callable[[KLEstimator], KLEstimator]:
  """Decorator adding `fn(logprobs, ref_logprobs) -> per-token KL` to `KL_ESTIMATORS` under `name`."""

  return lambda fn: add_to(KL_ESTIMATORS, name, fn, "KL estimator")


@register_kl("k1")
def kl_k1(logprobs: jnp.ndarray, ref_logprobs: jnp.ndarray) -> jnp.ndarray:
  return logprobs - ref_logprobs


@register_kl("k2")
def kl_k2(logprobs: jnp.ndarray, ref_logprobs: jnp.ndarray) -> jnp.ndarray:
  return 0.5 * jnp.square(logprobs - ref_logprobs)


@register_kl("k3")
def kl_k3(logprobs: jnp.ndarray, ref_logprobs: jnp.ndarray) -> jnp.ndarray:
  x = ref_logprobs - logprobs
  # expm1 keeps precision where the policy is close to the reference (x ~ 0), the usual case.
  return jnp.expm1(x) - x
