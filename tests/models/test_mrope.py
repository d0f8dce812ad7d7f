"""rope_index against transformers' get_rope_index (both versions)."""
import numpy as np
import pytest
import torch

from geojax.data.mrope import rope_index
from tests.models import tiny_hf

CASES = {
    "text_only": [[7]],
    "one_image": [[3, (1, 4, 6), 5]],
    "two_images_one_row": [[2, (1, 4, 4), 3, (1, 6, 2), 4]],
    "left_padded_batch": [[2, (1, 4, 4), 3], [5, (1, 2, 6), 1, (1, 4, 2), 2], [9]],
}


def _reference(version, ids, mask, grids):
  model = tiny_hf.hf_model(version).model
  kwargs = dict(mm_token_type_ids=torch.tensor((ids == tiny_hf.IMAGE_ID).astype(np.int64)),
                attention_mask=torch.tensor(mask))
  if grids:
    kwargs["image_grid_thw"] = torch.tensor(grids)
  pos, deltas = model.get_rope_index(torch.tensor(ids, dtype=torch.long), **kwargs)
  return pos.numpy(), deltas.numpy().reshape(-1)


@pytest.mark.parametrize("version", ["qwen2_vl", "qwen2_5_vl"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_rope_index_matches_transformers(version, case):
  rng = np.random.default_rng(0)
  rows = CASES[case]
  ids, mask = tiny_hf.left_pad([tiny_hf.prompt(rng, r) for r in rows])
  grids = [p for r in rows for p in r if not isinstance(p, int)]
  want_pos, want_deltas = _reference(version, ids, mask, grids)
  pos, deltas = rope_index(ids, mask, np.array(grids) if grids else None, spatial_merge_size=2,
                           image_token_id=tiny_hf.IMAGE_ID)
  assert pos.dtype == np.int32 and pos.shape == (3,) + ids.shape
  np.testing.assert_array_equal(pos * mask, want_pos * mask)
  np.testing.assert_array_equal(deltas, want_deltas)


def test_mismatch_raises_clear_error():
  rng = np.random.default_rng(0)
  ids = np.array([tiny_hf.prompt(rng, [2, (1, 4, 4), 2])])
  with pytest.raises(ValueError, match="do not match"):
    rope_index(ids[:, :-4], None, np.array([[1, 4, 4]]), image_token_id=tiny_hf.IMAGE_ID)  # truncated image
  with pytest.raises(ValueError, match="do not match"):
    rope_index(ids, None, np.array([[1, 4, 4], [1, 2, 2]]), image_token_id=tiny_hf.IMAGE_ID)  # extra grid
  with pytest.raises(ValueError, match="do not match"):
    rope_index(ids, None, None, image_token_id=tiny_hf.IMAGE_ID)
