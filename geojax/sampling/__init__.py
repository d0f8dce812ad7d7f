"""geojax.sampling: batched KV-cache generation (greedy, temperature, top-k, top-p) for the QwenVL models."""
from geojax.sampling.generate import GenerateResult, compiled_signatures, generate, release_cached_head
from geojax.sampling.logits import Choice, SamplingSettings, choose, filtered_probs

__all__ = ["generate", "GenerateResult", "compiled_signatures", "release_cached_head", "SamplingSettings", "Choice",
           "choose", "filtered_probs"]
