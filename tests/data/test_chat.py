"""encode_chat against transformers' apply_chat_template with the Qwen2-VL chat template."""
import pytest
from transformers import PreTrainedTokenizerFast

from geojax.data.chat import PROMPTS, answer_text, chat_text, encode_chat, encode_chat_parts, image_token_count
from geojax.data.tokenizer import load_tokenizer

# The chat template shipped with Qwen2-VL-*-Instruct (tokenizer_config.json / chat_template.json).
QWEN2_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture {{ image_count.value }}: "
    "{% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


@pytest.fixture(scope="module", params=["qwen2", "tiny"])
def tokenizers(request):
  ours = load_tokenizer(request.param)
  hf = PreTrainedTokenizerFast(tokenizer_object=ours.backend)
  hf.chat_template = QWEN2_VL_CHAT_TEMPLATE
  return ours, hf


def _hf_ids(hf, system, user, image_tokens, assistant):
  messages = [] if system is None else [{"role": "system", "content": system}]
  messages.append({"role": "user", "content": [{"type": "image"}, {"type": "text", "text": user}]})
  if assistant is not None:
    messages.append({"role": "assistant", "content": assistant})
  text = hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=assistant is None)
  # What Qwen2VLProcessor does: one <|image_pad|> per merged patch.
  text = text.replace("<|image_pad|>", "<|image_pad|>" * image_tokens)
  return hf(text, add_special_tokens=False)["input_ids"], text


@pytest.mark.parametrize("prompt", sorted(PROMPTS))
@pytest.mark.parametrize("system", [None, "You are a geolocation expert.\nBe brief."])
@pytest.mark.parametrize("with_answer", [False, True])
def test_matches_apply_chat_template(tokenizers, prompt, system, with_answer):
  ours, hf = tokenizers
  record = {"lat": 43.452002, "lon": 142.615358, "country": "Japan", "admin1": "Hokkaido", "city": "Biei",
            "label": "Country: Japan / State: Hokkaido / City: Biei / Coordinates: (43.452002, 142.615358)",
            "reasoning": "Snowy hills, Japanese road signs."}
  spec = PROMPTS[prompt]
  assistant = answer_text(record, spec.answer) if with_answer else None
  n = image_token_count((1, 34, 46))
  ids = encode_chat(ours, system, spec.user, n, assistant)
  expected, text = _hf_ids(hf, system, spec.user, n, assistant)
  assert ids == expected
  assert text == chat_text(system, spec.user, n, assistant)
  prompt_ids, answer_ids = encode_chat_parts(ours, system, spec.user, n, assistant)
  assert ids[:len(prompt_ids) + len(answer_ids)] == prompt_ids + answer_ids
  assert prompt_ids.count(ours.image_pad_id) == 391
  if with_answer:
    assert answer_ids[-1] == ours.im_end_id and ours.decode(answer_ids[:-1]) == assistant


def test_answer_formats():
  record = {"lat": -33.8688, "lon": 151.2093, "country": "Australia", "city": "Sydney", "reasoning": " Opera house. ",
            "label": "Country: Australia / State: New South Wales / City: Sydney / "
                     "Coordinates: (-33.868800, 151.209300)"}
  assert answer_text(record, "latlon") == "(-33.8688, 151.2093)"
  assert answer_text(record, "globe") == "<think>Opera house.</think><answer>country: Australia\ncity: Sydney</answer>"
  assert answer_text(record, "chain", decimals=6) == record["label"]
  # the coordinates follow data.decimals (the main job's whole degrees); the names stay the label's
  assert answer_text(record, "chain", decimals=0) == ("Country: Australia / State: New South Wales / City: Sydney / "
                                                      "Coordinates: (-34, 151)")
  assert answer_text(dict(record, label="Country: Australia"), "chain", 1) == \
      "Country: Australia / Coordinates: (-33.9, 151.2)"
  clues = dict(record, clues=["harbour", "opera house"])
  assert answer_text(clues, "globe", think="clues") == \
      "<think>harbour, opera house</think><answer>country: Australia\ncity: Sydney</answer>"
  assert answer_text(dict(record, locatable=True), "locatable") == "yes"
  assert answer_text(dict(record, locatable=False), "locatable") == "no"
  with pytest.raises(ValueError):
    answer_text(record, "nope")
  with pytest.raises(ValueError):
    answer_text(record, "globe", think="nope")


def test_short_prompts_keep_their_recipes_answer_formats():
  from geojax.data.chat import PROMPTS
  from geojax.learners import LocatabilityReward
  assert PROMPTS["geo_r_short"].answer == PROMPTS["geo_r"].answer == "chain"
  assert PROMPTS["globe_short"].answer == PROMPTS["globe"].answer == "globe"
  assert PROMPTS["locatability"].user == LocatabilityReward.QUESTION  # the reward model is asked what it learnt
