"""`generate(model, ...)`: one sampling call with the model's current parameters, as a one-off `Sampler`.

    result = generate(model, input_ids, attention_mask, pixel_values, image_grid_thw, max_new_tokens=64,
                      temperature=1.0, top_p=0.95, rng=jax.random.key(0), eos_token_id=tok.eos_id, num_samples=8)

Calls with the same shapes and settings reuse one compiled executable, but each call splits the model and hashes its
graph again (a few ms for a small model): loops that sample repeatedly (rollouts, evaluation) should build a
`Sampler` once and call it.
"""
from __future__ import annotations

from typing import Sequence

import jax

from geojax.sampling.loop import GenerateResult
from geojax.sampling.sampler import Sampler, compiled_signatures

__all__ = ["generate", "GenerateResult", "compiled_signatures"]


def generate(
    model,
    input_ids,
    attention_mask=None,
    pixel_values=None,
    image_grid_thw=None,
    *,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    rng: jax.Array | None = None,
    eos_token_id: int | Sequence[int] | None = None,
    pad_token_id: int | None = None,
    num_samples: int = 1,
    position_ids=None,
    tile: str = "cache",
) -> GenerateResult:
  """`Sampler(model, max_new_tokens=..., ...)(None, input_ids, ...)`: see `Sampler` for the arguments and result."""
  sampler = Sampler(model, max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                    eos_token_id=eos_token_id, pad_token_id=pad_token_id, num_samples=num_samples, tile=tile)
  return sampler(None, input_ids, attention_mask, pixel_values, image_grid_thw, position_ids=position_ids, rng=rng)
