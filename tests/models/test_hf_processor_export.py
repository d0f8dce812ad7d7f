"""An exported directory works with transformers' standard recipe: AutoProcessor + AutoModelForImageTextToText.

The recipe's inputs must equal geojax's own preprocessing, and its greedy answer geojax's greedy answer.
"""
import importlib.util
import io
import json

import jax
import numpy as np
import pytest
import torch
from flax import nnx
from PIL import Image
from transformers import AutoImageProcessor, AutoModelForImageTextToText, AutoProcessor, AutoTokenizer

from geojax.data import ExampleTransform, get_prompt, load_tokenizer
from geojax.data.chat import CHAT_TEMPLATE
from geojax.models import QwenVL, save_hf, save_hf_processor, tiny_config
from geojax.sampling import generate

NEW_TOKENS = 12
PIXELS = 56 * 56  # configs/default.py's data.min_pixels = data.max_pixels
TEXTS = ["Where was this photo taken? (48.8566, 2.3522)", "Country: France / City: Saint-Étienne\n\n  東京 ok's",
         "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>hi<|im_end|>"]


def _photo() -> bytes:
  """A 90 x 70 PNG with structure (gradients and a block), as the data records hold images."""
  y, x = np.mgrid[0:70, 0:90]
  rgb = np.stack([x * 255 // 89, y * 255 // 69, (x * y) % 256], -1).astype(np.uint8)
  rgb[20:45, 30:60] = (200, 30, 90)
  buffer = io.BytesIO()
  Image.fromarray(rgb).save(buffer, format="PNG")
  return buffer.getvalue()


def _load_processor(path, monkeypatch):
  """AutoProcessor.from_pretrained(path), with Pillow's resize (geojax's) for images.

  transformers 5 gives every Qwen-VL processor a video processor, which needs torchvision. Without torchvision a
  bare VideoProcessorMixin fills that slot (the image-and-text recipe never calls it); with torchvision the image
  processor is swapped for the PIL backend, whose resize is the one geojax reproduces.
  """
  if importlib.util.find_spec("torchvision") is not None:
    processor = AutoProcessor.from_pretrained(path)
    processor.image_processor = AutoImageProcessor.from_pretrained(path, backend="pil")
    return processor
  from transformers.models.auto import video_processing_auto
  from transformers.processing_utils import ProcessorMixin
  from transformers.video_processing_utils import VideoProcessorMixin
  check = ProcessorMixin.check_argument_for_proper_class  # its class lookup also fails without torchvision

  def check_or_stand_in(self, name, arg):
    return VideoProcessorMixin if type(arg) is VideoProcessorMixin else check(self, name, arg)

  monkeypatch.setattr(video_processing_auto.AutoVideoProcessor, "from_pretrained",
                      classmethod(lambda cls, *args, **kwargs: VideoProcessorMixin()))
  monkeypatch.setattr(ProcessorMixin, "check_argument_for_proper_class", check_or_stand_in)
  processor = AutoProcessor.from_pretrained(path)
  assert type(processor.image_processor).__name__ == "Qwen2VLImageProcessorPil"
  return processor


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
  """(tokenizer, transform, geojax model, directory): a random tiny model written as geojax.export writes it."""
  tokenizer = load_tokenizer("tiny")
  config = tiny_config("qwen2_5_vl", vocab_size=tokenizer.vocab_size, image_token_id=tokenizer.image_pad_id,
                       video_token_id=tokenizer.token_to_id("<|video_pad|>"),
                       vision_start_token_id=tokenizer.vision_start_id, vision_end_token_id=tokenizer.vision_end_id,
                       eos_token_id=tokenizer.eos_id, bos_token_id=None, hidden_size=32, num_layers=1)
  model = QwenVL(config, rngs=nnx.Rngs(0))
  # A fresh init answers one repeated token; perturbed weights give a varied answer with clear greedy margins.
  params = jax.tree.map(lambda x: x + 0.5 * jax.random.normal(jax.random.key(1), x.shape, x.dtype),
                        nnx.state(model, nnx.Param))
  model = nnx.merge(nnx.graphdef(model), params)
  path = str(tmp_path_factory.mktemp("hf"))
  save_hf(model, path)
  save_hf_processor(path, tokenizer, config, min_pixels=PIXELS, max_pixels=PIXELS)
  transform = ExampleTransform(tokenizer, prompt="coords", mode="rl", min_pixels=PIXELS, max_pixels=PIXELS)
  return tokenizer, transform, model, path


def test_auto_processor_recipe_gives_geojax_inputs_and_greedy_answer(exported, monkeypatch):
  tokenizer, transform, model, path = exported
  processor = _load_processor(path, monkeypatch)
  hf = AutoModelForImageTextToText.from_pretrained(path, dtype=torch.float32).eval()
  photo = _photo()
  messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": get_prompt("coords").user}]}]
  text = processor.apply_chat_template(messages, add_generation_prompt=True)
  inputs = processor(images=[Image.open(io.BytesIO(photo))], text=text, return_tensors="pt")

  features = transform({"image": photo, "lat": 10.0, "lon": 20.0})
  assert inputs["input_ids"][0].tolist() == features["prompt_ids"].tolist()
  np.testing.assert_array_equal(inputs["pixel_values"].numpy(), features["pixel_values"])
  np.testing.assert_array_equal(inputs["image_grid_thw"][0].numpy(), features["grid_thw"])
  image_tokens = features["prompt_ids"] == tokenizer.image_pad_id
  np.testing.assert_array_equal(inputs["mm_token_type_ids"][0].numpy(), image_tokens)

  batch = transform.collate([features])
  ours = generate(model, batch["input_ids"], batch["attention_mask"], batch["pixel_values"], batch["image_grid_thw"],
                  position_ids=batch["position_ids"], max_new_tokens=NEW_TOKENS, temperature=0.0,
                  eos_token_id=tokenizer.eos_id, pad_token_id=tokenizer.pad_id)
  tokens = np.asarray(ours.tokens)[0, :int(ours.lengths[0])].tolist()
  answer = tokenizer.decode(tokens, skip_special_tokens=True)
  with torch.no_grad():
    out = hf.generate(**inputs, do_sample=False, max_new_tokens=NEW_TOKENS)
  new = out[0, inputs["input_ids"].shape[1]:]
  assert new.tolist() == tokens
  assert processor.decode(new, skip_special_tokens=True) == answer
  assert answer.strip()


@pytest.mark.parametrize("name", ["tiny", "qwen2"])
def test_exported_tokenizer_loads_in_auto_tokenizer(tmp_path, name):
  ours = load_tokenizer(name)
  ours.save_pretrained(tmp_path)
  hf = AutoTokenizer.from_pretrained(tmp_path)
  for text in TEXTS:
    ids = ours.encode(text)
    assert hf.encode(text, add_special_tokens=False) == ids
    assert hf.decode(ids, skip_special_tokens=True) == ours.decode(ids, skip_special_tokens=True)
  assert (hf.eos_token_id, hf.pad_token_id) == (ours.eos_id, ours.pad_id)


def test_tokenizer_of_a_hf_directory_is_copied_and_the_template_is_geojax(tmp_path):
  """A local HF tokenizer's files travel unchanged; its own chat templates give way to geojax's."""
  source = tmp_path / "source"
  load_tokenizer("tiny").save_pretrained(source)
  config_file = source / "tokenizer_config.json"
  config_file.write_text(json.dumps(dict(json.loads(config_file.read_text()), chat_template="{{ 'other' }}")))
  out = tmp_path / "out"
  out.mkdir()
  (out / "chat_template.json").write_text(json.dumps({"chat_template": "{{ 'other' }}"}))  # as copied by an export
  tokenizer = load_tokenizer(str(source))
  save_hf_processor(str(out), tokenizer, tiny_config(), min_pixels=56 * 56, max_pixels=28 * 28 * 64)
  for name in ("tokenizer.json", "tokenizer_config.json"):
    assert (out / name).read_bytes() == (source / name).read_bytes()
  messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Where?"}]}]
  expected = ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
              "<|vision_start|><|image_pad|><|vision_end|>Where?<|im_end|>\n<|im_start|>assistant\n")
  hf = AutoTokenizer.from_pretrained(out)
  assert hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == expected
  assert json.loads((out / "chat_template.json").read_text())["chat_template"] == CHAT_TEMPLATE
  image = AutoImageProcessor.from_pretrained(out, backend="pil")
  assert (image.size["shortest_edge"], image.size["longest_edge"]) == (56 * 56, 28 * 28 * 64)
  generation = json.loads((out / "generation_config.json").read_text())
  assert (generation["eos_token_id"], generation["pad_token_id"]) == (tokenizer.eos_id, tokenizer.pad_id)
