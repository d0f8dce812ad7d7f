"""Supervised fine-tuning loss: token-mean cross-entropy over the answer tokens."""
from __future__ import annotations

import jax
import jax.numpy as jnp


def next_token_targets(input_ids: jnp.ndarray, loss_mask: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
  """Aligns a batch for next-token prediction without changing shapes.

  `loss_mask[b, t]` marks input token t as an answer token to predict (the data pipeline's convention); the
  logits at position t predict token t + 1. Returns targets[b, t] = input_ids[b, t + 1] and
  mask[b, t] = loss_mask[b, t + 1], both [B, L] with the last column 0 (nothing follows it).
  """
  input_ids, loss_mask = jnp.asarray(input_ids), jnp.asarray(loss_mask)
  targets = jnp.concatenate([input_ids[:, 1:], jnp.zeros_like(input_ids[:, :1])], axis=1)
  mask = jnp.concatenate([loss_mask[:, 1:], jnp.zeros_like(loss_mask[:, :1])], axis=1)
  return targets, mask


def sft_loss(logits_or_logprobs: jnp.ndarray, targets: jnp.ndarray, loss_mask: jnp.ndarray, *,
             label_smoothing: float = 0.0,
             token_count: jnp.ndarray | None = None) -> tuple[jnp.ndarray, dict[str, jnp.ndarray]]:
  """Token-mean cross-entropy of `targets` over the tokens where `loss_mask` is 1.

  Args:
    logits_or_logprobs: either [B, L, V] logits (log-probabilities over the vocabulary work too: log_softmax
      leaves them unchanged), or [B, L] log-probabilities of the target tokens already gathered (as
      `geojax.models.token_logprobs` returns them, without a B x L x V array).
    targets: [B, L] int token ids aligned with the predictions (see `next_token_targets`).
    loss_mask: [B, L] 1 where the target counts. Masked targets may be any id (e.g. -100).
    label_smoothing: as torch's cross_entropy: the target distribution is (1 - s) one-hot + s uniform.
      Needs [B, L, V] logits.
    token_count: the tokens that count in the whole batch when this is one micro-batch of it: the loss and the
      means are then this micro-batch's shares, which sum to the batch's (`accumulate_grads(..., shares=True)`);
      None for the count of `loss_mask`.

  Returns:
    (loss, metrics): the scalar loss (0 when no token counts, never NaN) and, without gradient, "nll" (the
    unsmoothed token-mean negative log-likelihood), "tokens", and with logits "accuracy" (argmax == target).
  """
  scores = jnp.asarray(logits_or_logprobs)
  targets = jnp.asarray(targets)
  valid = jnp.asarray(loss_mask).astype(bool)
  dtype = jnp.promote_types(scores.dtype, jnp.float32)
  weight = valid.astype(dtype)
  n_tokens = jnp.sum(weight)
  denominator = jnp.maximum(n_tokens if token_count is None else token_count, 1.0)

  def token_mean(x: jnp.ndarray) -> jnp.ndarray:
    return jnp.sum(jnp.where(valid, x, 0.0)) / denominator

  metrics = {"tokens": n_tokens}
  if scores.ndim == targets.ndim + 1:
    # masked rows are zeroed first: padding positions may hold inf/NaN, which would poison the gradient
    scores = jnp.where(valid[..., None], scores.astype(dtype), 0.0)
    vocab = scores.shape[-1]
    safe_targets = jnp.clip(targets, 0, vocab - 1)
    # -log p(y) = logsumexp(z) - z_y, and the uniform part of smoothing -mean_v log p(v) = logsumexp(z) - mean(z):
    # no normalized B x L x V array is formed.
    lse = jax.nn.logsumexp(scores, axis=-1)
    target_score = jnp.take_along_axis(scores, safe_targets[..., None], axis=-1)[..., 0]
    nll = lse - target_score
    per_token = nll
    if label_smoothing:
      per_token = (1.0 - label_smoothing) * nll + label_smoothing * (lse - jnp.mean(scores, axis=-1))
    metrics["accuracy"] = token_mean((jnp.argmax(scores, axis=-1) == targets).astype(dtype))
  elif scores.ndim == targets.ndim:
    if label_smoothing:
      raise ValueError("label smoothing needs [B, L, V] logits, not gathered target log-probabilities")
    nll = -jnp.where(valid, scores.astype(dtype), 0.0)
    per_token = nll
  else:
    raise ValueError(f"predictions of shape {scores.shape} do not fit targets of shape {targets.shape}")

  loss = token_mean(per_token)
  metrics["nll"] = token_mean(nll)
  return loss, jax.tree.map(jax.lax.stop_gradient, metrics)
