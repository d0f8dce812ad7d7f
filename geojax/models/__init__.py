"""geojax.models: Qwen2-VL / Qwen2.5-VL in Flax NNX, with HF checkpoint I/O, sharding and a KV cache."""
from geojax.models.config import QwenVLConfig, TextConfig, VisionConfig
from geojax.models.hf_io import hf_state_dict, load_hf, save_hf
from geojax.models.logprobs import chunked_logprobs, token_logprobs
from geojax.models.memory import count_params, memory_plan
from geojax.models.presets import PRESETS, PUBLISHED_PARAMS_B, tiny_config
from geojax.models.qwen_vl import QwenVL
from geojax.models.sharding import DEFAULT_RULES, logical_to_spec, make_mesh, param_shardings, shard, shard_model
from geojax.models.vision import grid_tuple

__all__ = [
    "QwenVL", "QwenVLConfig", "TextConfig", "VisionConfig", "load_hf", "save_hf", "hf_state_dict",
    "DEFAULT_RULES", "logical_to_spec", "make_mesh", "param_shardings", "shard", "shard_model", "grid_tuple",
    "token_logprobs", "chunked_logprobs", "PRESETS", "PUBLISHED_PARAMS_B", "tiny_config", "count_params",
    "memory_plan",
]
