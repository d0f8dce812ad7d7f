"""Which parameters train: filters that freeze the vision tower (GLOBE's SFT trains the language model only)."""
from __future__ import annotations

from typing import Any, Sequence

import jax
from flax import nnx

# Path components naming a vision tower: geojax's QwenVL ("visual", as in transformers), and other VLMs.
VISION_KEYS = ("visual", "vision_tower", "vision_model")
# The projector from vision features to the language model's width inside the tower.
MERGER_KEYS = ("merger",)


def _names(path: Sequence[Any]) -> list[str]:
  names = []
  for entry in path:
    for attribute in ("key", "name", "idx"):  # jax.tree_util DictKey / GetAttrKey / SequenceKey
      if hasattr(entry, attribute):
        entry = getattr(entry, attribute)
        break
    names.append(str(entry))
  return names


def is_frozen(path: Sequence[Any], *, freeze_vision: bool = True, train_merger: bool = False,
              frozen_keys: Sequence[str] = ()) -> bool:
  """True for a parameter path that stays fixed: in the vision tower (unless its merger and `train_merger`),
  or under any component named in `frozen_keys`."""
  names = _names(path)
  if any(name in frozen_keys for name in names):
    return True
  if freeze_vision and any(name in VISION_KEYS for name in names):
    return not (train_merger and any(name in MERGER_KEYS for name in names))
  return False


def trainable_filter(freeze_vision: bool = True, *, train_merger: bool = False,
                     frozen_keys: Sequence[str] = ()) -> nnx.filterlib.Filter:
  """An nnx filter selecting the trainable parameters, for `nnx.Optimizer(model, tx, wrt=...)` and
  `nnx.DiffState(0, ...)` in `nnx.grad`."""

  def frozen(path, value) -> bool:
    del value
    return is_frozen(path, freeze_vision=freeze_vision, train_merger=train_merger, frozen_keys=frozen_keys)

  return nnx.All(nnx.Param, nnx.Not(frozen))


def trainable_mask(params: Any, freeze_vision: bool = True, *, train_merger: bool = False,
                   frozen_keys: Sequence[str] = ()) -> Any:
  """A pytree of bools shaped like `params` (an nnx.State or any pytree of arrays), True where a parameter
  trains: the mask for `optax.masked` or for zeroing frozen gradients."""
  return jax.tree_util.tree_map_with_path(
      lambda path, _: not is_frozen(path, freeze_vision=freeze_vision, train_merger=train_merger,
                                    frozen_keys=frozen_keys), params)
