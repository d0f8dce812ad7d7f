"""geojax.data: images, tokenizers, chat prompts, batching, Grain pipelines, dataset sources, hard-sample mining.

  preprocess_image(image, min_pixels, max_pixels) -> (pixel_values [N, 1176], grid_thw)   (image.py)
  resize_bicubic(rgb_image, (width, height)) -> uint8 [h, w, 3], equal to Pillow's         (resize.py)
  load_tokenizer("qwen2" | "tiny" | local HF dir)                                           (tokenizer.py)
  PROMPTS, encode_chat(tokenizer, system, user, image_tokens, assistant)                    (chat.py)
  ExampleTransform(tokenizer, prompt, mode="sft" | "rl", ...), collate(...)                 (batching.py)
  take_examples, concat_examples, repeat_examples, split_microbatches, put_batch            (batch.py)
  make_loader(source, transform, batch_size, seed, ...) -> Loader with get_state/set_state  (pipeline.py)
  open_source(fmt, metadata, images), ArrayRecordSource(dir, split), write_records(...)     (sources.py, records.py)
  drop_near_hotspots(lat, lon, hot_lat, hot_lon, radius_km)                                 (mining.py)
  rope_index(...)                                                                            (mrope.py)

Names are imported lazily so that `import geojax.data.mrope` (used by the models) stays light.
"""
import importlib

_EXPORTS = {
    "preprocess_image": "image", "smart_resize": "image", "grid_for_size": "image",
    "resize_bicubic": "resize",
    "load_tokenizer": "tokenizer", "Tokenizer": "tokenizer",
    "PROMPTS": "chat", "Prompt": "chat", "encode_chat": "chat", "encode_chat_parts": "chat",
    "answer_text": "chat", "image_token_count": "chat", "get_prompt": "chat",
    "ExampleTransform": "batching", "collate": "batching", "BadRecord": "batching",
    "take_examples": "batch", "concat_examples": "batch", "repeat_examples": "batch",
    "split_microbatches": "batch", "put_batch": "batch", "batch_shape": "batch",
    "make_loader": "pipeline", "Loader": "pipeline",
    "open_source": "sources", "FORMATS": "sources",
    "ArrayRecordSource": "records", "ArrayRecordWriter": "records", "write_records": "records",
    "make_record": "records", "RECORD_FIELDS": "records",
    "drop_near_hotspots": "mining", "near_hotspots": "mining",
    "rope_index": "mrope",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
  module = _EXPORTS.get(name)
  if module is None:
    raise AttributeError(f"module 'geojax.data' has no attribute {name!r}")
  return getattr(importlib.import_module(f"geojax.data.{module}"), name)
