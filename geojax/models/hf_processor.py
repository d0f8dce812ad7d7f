"""The processor half of a Hugging Face export: what `transformers.AutoProcessor` reads next to the weights.

`save_hf_processor(path, tokenizer, config, min_pixels=..., max_pixels=...)` completes a `save_hf` directory with
preprocessor_config.json (the Qwen2-VL image processor with geojax's own preprocessing settings: transformers' PIL
backend then gives geojax's pixel values bit for bit), the tokenizer files (`Tokenizer.save_pretrained`),
chat_template.jinja (`geojax.data.chat.CHAT_TEMPLATE`, whose prompts equal geojax's) and a generation config that
stops and pads as geojax's decoding does. Then the standard recipe reproduces geojax's greedy answers:

    processor = AutoProcessor.from_pretrained(path)
    model = AutoModelForImageTextToText.from_pretrained(path)
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    out = model.generate(**processor(images=[image], text=text, return_tensors="pt"), do_sample=False)

The processor also returns `mm_token_type_ids`, without which transformers' Qwen2.5-VL forward silently falls back
to 1-D positions. transformers builds a video processor into every Qwen-VL processor, and that one needs torchvision;
with torchvision installed, its torchvision image backend resizes close to, not exactly like, Pillow.
"""
from __future__ import annotations

import json
import os

from geojax.data.chat import CHAT_TEMPLATE
from geojax.models.config import QwenVLConfig

PROCESSOR_CLASSES = {"qwen2_vl": "Qwen2VLProcessor", "qwen2_5_vl": "Qwen2_5_VLProcessor"}


def image_processor_config(config: QwenVLConfig, min_pixels: int, max_pixels: int) -> dict:
  """preprocessor_config.json: Qwen2-VL's image processor set as `geojax.data.preprocess_image` runs.

  Bicubic resize (resample 3) to the smart-resize size, rescale by 1/255, CLIP mean / std; the pixel bounds are
  the data config's, the patch geometry the vision tower's. Both spellings of the bounds are written
  (`min_pixels` / `max_pixels` for transformers 4, `size` for 5).
  """
  from geojax.data.image import IMAGE_MEAN, IMAGE_STD  # here: geojax.data.image brings numba and Pillow
  v = config.vision
  return {
      "image_processor_type": "Qwen2VLImageProcessor", "processor_class": PROCESSOR_CLASSES[config.version],
      "do_convert_rgb": True, "do_resize": True, "resample": 3, "do_rescale": True, "rescale_factor": 1 / 255,
      "do_normalize": True, "image_mean": list(IMAGE_MEAN), "image_std": list(IMAGE_STD),
      "min_pixels": int(min_pixels), "max_pixels": int(max_pixels),
      "size": {"shortest_edge": int(min_pixels), "longest_edge": int(max_pixels)},
      "patch_size": v.patch_size, "temporal_patch_size": v.temporal_patch_size, "merge_size": v.spatial_merge_size,
  }


def save_hf_processor(path: str, tokenizer, config: QwenVLConfig, *, min_pixels: int, max_pixels: int) -> None:
  """Writes processor, tokenizer, chat template and generation config into the export directory `path`.

  `tokenizer` is a `geojax.data.Tokenizer`; `min_pixels` / `max_pixels` are the bounds the model trained with
  (`config.data.min_pixels` / `max_pixels`).
  """
  os.makedirs(path, exist_ok=True)
  _write_json(os.path.join(path, "preprocessor_config.json"), image_processor_config(config, min_pixels, max_pixels))
  tokenizer.save_pretrained(path)
  with open(os.path.join(path, "chat_template.jinja"), "w") as f:
    f.write(CHAT_TEMPLATE)
  legacy = os.path.join(path, "chat_template.json")  # read in preference to the .jinja: keep it the same template
  if os.path.exists(legacy):
    _write_json(legacy, {"chat_template": CHAT_TEMPLATE})
  generation_file = os.path.join(path, "generation_config.json")
  generation = {}
  if os.path.exists(generation_file):
    with open(generation_file) as f:
      generation = json.load(f)
  # geojax decodes until the tokenizer's EOS only and pads with its pad token.
  generation.update(eos_token_id=tokenizer.eos_id, pad_token_id=tokenizer.pad_id)
  _write_json(generation_file, generation)


def _write_json(path: str, obj) -> None:
  with open(path, "w") as f:
    json.dump(obj, f, indent=2, sort_keys=True)
    f.write("\n")
