"""geojax.sampling: batched KV-cache generation (greedy, temperature, top-k, top-p) for the QwenVL models.

`Sampler(model, **settings)` is built once and called with parameters (a trainer's, updated every step);
`generate(model, ...)` is one call with the model's own parameters.
"""
from geojax.sampling.generate import generate
from geojax.sampling.layout import DECODE_RULES, RolloutLayout
from geojax.sampling.logits import Choice, SamplingSettings, choose, filtered_probs
from geojax.sampling.loop import GenerateResult
from geojax.sampling.sampler import Sampler, compiled_signatures

__all__ = ["Sampler", "generate", "GenerateResult", "compiled_signatures", "SamplingSettings", "Choice", "choose",
           "filtered_probs", "RolloutLayout", "DECODE_RULES"]
