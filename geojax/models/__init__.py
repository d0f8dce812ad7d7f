"""geojax.models: Qwen2-VL / Qwen2.5-VL in Flax NNX, with HF checkpoint I/O, sharding and a KV cache.

    model = load_hf("/ckpt/Qwen2.5-VL-7B-Instruct", dtype=jnp.bfloat16, param_dtype=jnp.float32,
                    mesh=make_mesh((1, -1, 1)),
                    remat_policy="full")            # or QwenVL(PRESETS[...] / tiny_config(...), rngs=nnx.Rngs(0))
    logits = model(input_ids, attention_mask, pixel_values, image_grid_thw, position_ids)   # float32 [B, L, V]
    lp = token_logprobs(model, input_ids, targets, attention_mask, pixel_values, image_grid_thw, position_ids,
                        chunk_size=256, temperature=1.0)                                    # float32 [B, L]
    cache = model.init_cache(batch, max_len, dtype)
    logits_last, cache = model.prefill(input_ids, attention_mask, position_ids, pixel_values, image_grid_thw, cache)
    logits, cache = model.decode_step(tokens, positions_or_None, cache)
    logits, cache = model.decode_one(tokens, model.decode_cache(cache, max_len, repeats=G))  # the sampler's step
    save_hf(model, "/out/dir")
    save_hf_processor("/out/dir", tokenizer, model.config, min_pixels=..., max_pixels=...)  # AutoProcessor's files

image_grid_thw is a host value (static under jit: pass `grid_tuple(grids)`); position_ids come from
`geojax.data.rope_index` on the host. Details: qwen_vl.py (calling convention, cache, decode positions),
logprobs.py, hf_io.py, hf_processor.py, sharding.py (rules table), memory.py (per-chip memory plan), presets.py,
scan.py (decoder layers and vision blocks stacked and run as a scan).
`geojax.models.testing` builds random-weight transformers models and prompts for comparisons (needs torch).
"""
from geojax.models.config import QwenVLConfig, TextConfig, VisionConfig
from geojax.models.hf_io import hf_state_dict, load_hf, save_hf
from geojax.models.hf_processor import save_hf_processor
from geojax.models.logprobs import chunked_logprobs, token_logprobs
from geojax.models.memory import count_params, memory_plan
from geojax.models.presets import PRESETS, PUBLISHED_PARAMS_B, tiny_config
from geojax.models.qwen_vl import QwenVL
from geojax.models.sharding import DEFAULT_RULES, logical_to_spec, make_mesh, param_shardings, shard, shard_model
from geojax.models.vision import grid_tuple

__all__ = [
    "QwenVL", "QwenVLConfig", "TextConfig", "VisionConfig", "load_hf", "save_hf", "save_hf_processor", "hf_state_dict",
    "DEFAULT_RULES", "logical_to_spec", "make_mesh", "param_shardings", "shard", "shard_model", "grid_tuple",
    "token_logprobs", "chunked_logprobs", "PRESETS", "PUBLISHED_PARAMS_B", "tiny_config", "count_params",
    "memory_plan",
]
