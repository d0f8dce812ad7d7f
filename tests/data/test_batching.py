"""Features and batches: chat ids, masks, M-RoPE positions, image-token consistency, bad records."""
import numpy as np
import pytest

from geojax.data import concat_examples, take_examples
from geojax.data.batching import BadRecord, ExampleTransform, bucket_length, collate
from geojax.data.chat import PROMPTS, answer_text, encode_chat
from geojax.data.image import preprocess_image
from geojax.data.mrope import rope_index
from geojax.data.tokenizer import load_tokenizer
from tests.data.fakes import fake_records, png_bytes


@pytest.fixture(scope="module")
def tok():
  return load_tokenizer("tiny")


def _transform(tok, mode, prompt="geo_r", **kw):
  return ExampleTransform(tok, prompt=prompt, mode=mode, min_pixels=56 * 56, max_pixels=112 * 112, **kw)


def test_sft_batch(tok):
  records = fake_records(3, shapes=[(56, 112)])
  t = _transform(tok, "sft")
  features = [t(r) for r in records]
  batch = t.collate(features, batch_size=4)
  B, L = batch["input_ids"].shape
  assert B == 4 and L % 64 == 0
  assert batch["pixel_values"].shape == (4 * 32, 1176) and batch["pixel_values"].dtype == np.float32
  np.testing.assert_array_equal(batch["image_grid_thw"], [[1, 4, 8]] * 4)
  np.testing.assert_array_equal(batch["example_mask"], [1, 1, 1, 0])
  pixels, _ = preprocess_image(records[1]["image"], 56 * 56, 112 * 112)
  np.testing.assert_array_equal(batch["pixel_values"][32:64], pixels)
  for i, r in enumerate(records):
    # the chain answer is the record's label with its coordinates written to t.decimals digits
    target = answer_text(r, "chain", t.decimals)
    assert target != r["label"] and target.startswith(r["label"].split(" / Coordinates")[0])
    full = encode_chat(tok, None, PROMPTS["geo_r"].user, 8, target)[:-1]  # without the final "\n"
    n = len(full)
    np.testing.assert_array_equal(batch["input_ids"][i, :n], full)  # right-padded
    assert (batch["input_ids"][i, n:] == tok.pad_id).all() and batch["attention_mask"][i].sum() == n
    answer = batch["input_ids"][i][batch["loss_mask"][i] == 1]
    assert tok.decode(answer) == target + "<|im_end|>"
  assert batch["loss_mask"][3].sum() == 0  # filler row contributes nothing
  positions, deltas = rope_index(batch["input_ids"], batch["attention_mask"], batch["image_grid_thw"],
                                 spatial_merge_size=2, image_token_id=tok.image_pad_id)
  np.testing.assert_array_equal(batch["position_ids"], positions)
  np.testing.assert_array_equal(batch["rope_deltas"], deltas)
  assert batch["position_ids"].shape == (3, B, L) and batch["position_ids"].dtype == np.int32


def test_rl_batch_left_padded_with_targets(tok):
  records = fake_records(2, shapes=[(56, 56)])
  t = _transform(tok, "rl", prompt="globe", seq_buckets=(128, 256))
  batch = t.collate([t(r) for r in records])
  prompt = encode_chat(tok, None, PROMPTS["globe"].user, 4)
  assert 128 < len(prompt) <= 256 and batch["input_ids"].shape == (2, 256) and "loss_mask" not in batch
  np.testing.assert_array_equal(batch["input_ids"][0, -len(prompt):], prompt)
  assert (batch["input_ids"][0, :-len(prompt)] == tok.pad_id).all()
  assert batch["attention_mask"][0, :-len(prompt)].sum() == 0
  np.testing.assert_allclose(batch["lat"], [r["lat"] for r in records], rtol=1e-6)
  assert batch["lat"].dtype == np.float32 and list(batch["city"]) == ["Paris", "Paris"]
  assert batch["clues"][1] == ["Eiffel Tower"] and batch["id"][0] == "r0"


def test_grid_buckets_and_mixed_grids(tok):
  records = fake_records(3)
  t = _transform(tok, "sft", grid_buckets=[(4, 4), (4, 8)])
  grids = [tuple(t(r)["grid_thw"]) for r in records]
  assert grids == [(1, 4, 4), (1, 4, 8), (1, 4, 4)]  # the portrait image snaps to the square bucket
  with pytest.raises(ValueError, match="share an image grid"):
    collate([_transform(tok, "sft")(r) for r in records[:2]], "sft", tok)


@pytest.mark.parametrize("change,reason", [
    ({"image": b"not an image"}, "unreadable image"),
    ({"image": png_bytes(56, 56)[:60]}, "unreadable image"),
    ({"image": b""}, "missing image"),
    ({"lat": float("nan")}, "NaN"),
    ({"lon": 181.0}, "out of range"),
    ({"lat": "north"}, "not numbers"),
])
def test_bad_records(tok, change, reason):
  record = {**fake_records(1)[0], **change}
  with pytest.raises(BadRecord, match=reason):
    _transform(tok, "sft")(record)


def test_empty_caption_and_long_prompt(tok):
  record = {**fake_records(1)[0], "city": ""}
  with pytest.raises(BadRecord, match="empty caption"):
    _transform(tok, "sft", prompt="globe")(record)
  _transform(tok, "rl", prompt="globe")(record)  # RL keeps it: the reward handles a missing city
  with pytest.raises(BadRecord, match="prompt too long"):  # never cut inside the image
    _transform(tok, "rl", max_prompt_len=20)(fake_records(1)[0])


def test_bucket_length():
  assert bucket_length(100, (128, 256)) == 128 and bucket_length(200, (128, 256)) == 256
  assert bucket_length(300, (128, 256)) == 320 and bucket_length(65, ()) == 128


def test_take_and_concat_examples_equal_collating_those_examples(tok):
  """Selecting examples of collated batches (dynamic sampling) gives what collating those examples gives."""
  records = fake_records(5, shapes=[(56, 112)])
  t = _transform(tok, "rl", seq_buckets=(256,))
  features = [t(r) for r in records]
  first, second = t.collate(features[:3]), t.collate(features[3:])
  joined = concat_examples([first, second])
  picked = take_examples(joined, [4, 0, 2])
  expected = t.collate([features[4], features[0], features[2]])
  assert sorted(picked) == sorted(expected)
  for name in expected:
    np.testing.assert_array_equal(picked[name], expected[name], err_msg=name)
  other = _transform(tok, "rl", seq_buckets=(256,))
  with pytest.raises(ValueError, match="different shapes"):
    concat_examples([first, other.collate([other(r) for r in fake_records(1, shapes=[(56, 56)])])])
