"""Qwen2-VL / Qwen2.5-VL chat formatting, task prompts, and the answer texts SFT trains on.

`encode_chat` produces the ids transformers' `apply_chat_template` (Qwen2-VL template) plus the processor's
image-pad expansion produce:

  <|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n<|vision_start|><|image_pad|>*n<|vision_end|>{user}
  <|im_end|>\n<|im_start|>assistant\n[{assistant}<|im_end|>\n]

Text pieces are tokenized separately around the special tokens, which gives the same ids as tokenizing the
whole string (special tokens always split the text), without tokenizing thousands of pad strings.

`CHAT_TEMPLATE` is that format as Jinja: the template Qwen2-VL-Instruct and Qwen2.5-VL-Instruct ship, which
exported models carry so that transformers' processors build the prompts geojax trained on.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

DEFAULT_SYSTEM = "You are a helpful assistant."

# Qwen2-VL-Instruct's chat template (its chat_template.json), verbatim: it renders one image and a text as
# `chat_text` does, and keeps the published template's videos and vision ids for other uses of an exported model.
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\n" + DEFAULT_SYSTEM + "<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture {{ image_count.value }}: "
    "{% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


@dataclasses.dataclass(frozen=True)
class Prompt:
  """A task prompt: the user text shown after the image and the answer format SFT targets use."""
  user: str
  answer: str  # "chain" | "globe" | "latlon" | "locatable"
  system: str = DEFAULT_SYSTEM


GEO_R_USER = (
    "You are a geographic reasoning agent. Your task is to analyze a real-world image and predict its location "
    "at exactly four levels of geographic granularity, using only the visual content of the image.\n"
    "Levels of Required Output:\n1. Country\n2. State / Administrative Region\n3. City or Place\n"
    "4. Coordinates (latitude, longitude)\n"
    "Answer in the form: Country: ... / State: ... / City: ... / Coordinates: (latitude, longitude)")
GLOBE_USER = (
    "Where was this photo taken? Reason about the visual clues (landmarks, signs, vegetation, architecture, "
    "roads) inside <think></think>, then give the location inside <answer></answer> as\n"
    "country: <country>\ncity: <city>")
COORDS_USER = "Where was this photo taken? Answer with its coordinates as (latitude, longitude)."
# Short forms of the two recipes' prompts for the tiny model of the `:builtin` recipes: the same answer format in
# a third of the tokens (the tiny tokenizer spends ~3 characters a token, and SFT pays for every prompt token).
GEO_R_SHORT_USER = ("Where was this photo taken? Answer as Country: ... / State: ... / City: ... / "
                    "Coordinates: (lat, lon)")
GLOBE_SHORT_USER = "Where was this photo taken? Clues in <think></think>, then <answer>country: X\ncity: Y</answer>"
# GLOBE's locatability reward model is asked this (geojax.learners.LocatabilityReward) and answers yes or no.
LOCATABILITY_USER = ("Is the location of this image identifiable from its visual content (landmarks, signs, "
                     "landscape)? Answer yes or no.")

PROMPTS: dict[str, Prompt] = {
    "geo_r": Prompt(GEO_R_USER, "chain"),
    "globe": Prompt(GLOBE_USER, "globe"),
    "coords": Prompt(COORDS_USER, "latlon"),
    "geo_r_short": Prompt(GEO_R_SHORT_USER, "chain"),
    "globe_short": Prompt(GLOBE_SHORT_USER, "globe"),
    "locatability": Prompt(LOCATABILITY_USER, "locatable"),
}
# locatable: "yes" / "no" from the record's `locatable` flag, the SFT target of a locatability reward model
ANSWER_FORMATS = ("chain", "globe", "latlon", "locatable")
THINK_SOURCES = ("reasoning", "clues")


def get_prompt(name: str) -> Prompt:
  if name not in PROMPTS:
    raise ValueError(f"unknown prompt {name!r}; known: {sorted(PROMPTS)}")
  return PROMPTS[name]


def format_latlon(lat: float, lon: float, decimals: int = 4) -> str:
  return f"({lat:.{decimals}f}, {lon:.{decimals}f})"


def answer_text(record: Mapping[str, Any], fmt: str, decimals: int = 4, think: str = "reasoning") -> str:
  """The target answer of an example record in one of ANSWER_FORMATS.

  chain: the record's Chain-of-Region `label` (built from its coordinates when absent), its coordinates written
    with `decimals` digits.
  globe: `<think>{reasoning}</think><answer>country: X\\ncity: Y</answer>`; think="clues": the record's clue
    entities, comma-separated, inside <think> instead of its reasoning text.
  latlon: `(lat, lon)` with `decimals` digits.
  locatable: "yes" or "no", the record's `locatable` flag.
  """
  if fmt == "chain":
    label = record.get("label") or ""
    if not label:
      from geojax.geo import chain_of_region  # the geocoder loads lazily; most records carry their label
      label = chain_of_region(float(record["lat"]), float(record["lon"]))
    return _with_coordinates(label, format_latlon(float(record["lat"]), float(record["lon"]), decimals))
  if fmt == "globe":
    if think not in THINK_SOURCES:
      raise ValueError(f"unknown think source {think!r}; known: {THINK_SOURCES}")
    text = ", ".join(record.get("clues") or []) if think == "clues" else (record.get("reasoning") or "").strip()
    return (f"<think>{text}</think><answer>country: {record.get('country', '')}\n"
            f"city: {record.get('city', '')}</answer>")
  if fmt == "latlon":
    return format_latlon(float(record["lat"]), float(record["lon"]), decimals)
  if fmt == "locatable":
    return "yes" if record.get("locatable", True) else "no"
  raise ValueError(f"unknown answer format {fmt!r}; known: {ANSWER_FORMATS}")


def _with_coordinates(label: str, pair: str) -> str:
  """A Chain-of-Region label with its last coordinate pair replaced by `pair` (appended when it has none)."""
  from geojax.geo.chain import PAIR_RE
  matches = list(PAIR_RE.finditer(label))
  if not matches:
    return f"{label} / Coordinates: {pair}"
  last = matches[-1]
  return label[:last.start()] + pair + label[last.end():]


def image_token_count(grid_thw, merge_size: int = 2) -> int:
  """Number of <|image_pad|> tokens for an image grid: t * h * w / merge_size**2."""
  t, h, w = (int(x) for x in grid_thw)
  return t * h * w // (merge_size * merge_size)


def encode_chat_parts(tokenizer, system: str | None, user: str, image_tokens: int,
                      assistant: str | None = None) -> tuple[list[int], list[int]]:
  """(prompt ids ending in `<|im_start|>assistant\\n`, answer ids = assistant text + `<|im_end|>`).

  The answer part is what SFT predicts; it is empty when `assistant` is None.
  """
  enc = tokenizer.encode
  nl = enc("\n")
  system = DEFAULT_SYSTEM if system is None else system
  ids = [tokenizer.im_start_id] + enc("system\n" + system) + [tokenizer.im_end_id] + nl
  ids += [tokenizer.im_start_id] + enc("user\n")
  if image_tokens > 0:
    ids += [tokenizer.vision_start_id] + [tokenizer.image_pad_id] * image_tokens + [tokenizer.vision_end_id]
  ids += enc(user) + [tokenizer.im_end_id] + nl + [tokenizer.im_start_id] + enc("assistant\n")
  answer = [] if assistant is None else enc(assistant) + [tokenizer.im_end_id]
  return ids, answer


def encode_chat(tokenizer, system: str | None, user: str, image_tokens: int, assistant: str | None = None) -> list[int]:
  """Ids of a one-image chat, as `apply_chat_template` + image-pad expansion give them.

  Without `assistant` the ids end with the generation prompt `<|im_start|>assistant\\n`; with it they end with
  `{assistant}<|im_end|>\\n` (the template's rendering of a finished turn).
  """
  prompt, answer = encode_chat_parts(tokenizer, system, user, image_tokens, assistant)
  return prompt + (answer + tokenizer.encode("\n") if assistant is not None else [])


def chat_text(system: str | None, user: str, image_tokens: int, assistant: str | None = None) -> str:
  """The same chat as a string (for logs and for tokenizers outside geojax)."""
  system = DEFAULT_SYSTEM if system is None else system
  image = f"<|vision_start|>{'<|image_pad|>' * image_tokens}<|vision_end|>" if image_tokens > 0 else ""
  text = (f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{image}{user}<|im_end|>\n"
          "<|im_start|>assistant\n")
  return text if assistant is None else text + f"{assistant}<|im_end|>\n"
