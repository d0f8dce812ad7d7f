"""QwenVL: the whole Qwen2-VL / Qwen2.5-VL model (vision tower + Qwen2 decoder) as one nnx.Module.

Full forward (training, scoring)::

    logits = model(input_ids, attention_mask=None, pixel_values=None, image_grid_thw=None, position_ids=None)
    # input_ids int [B, L]; attention_mask [B, L] (1 = real token; left padding for prompts);
    # pixel_values float [N_patches, 1176] of all images in order (row after row);
    # image_grid_thw [n_images, 3] HOST value (numpy / tuple: it fixes shapes; static under jit);
    # position_ids int [3, B, L] from geojax.data.rope_index. Returns float32 logits [B, L, V].

  position_ids may be omitted when input_ids is concrete (they are then computed with rope_index) or when
  there are no images (text positions = cumsum(attention_mask) - 1). Under jit with images pass them.
  The image-token count is checked against the grids whenever input_ids is concrete (ValueError); under
  jit `rope_index` on the host batch performs the same check.

KV cache for sampling (all shapes static; jit prefill and decode_step with image_grid_thw static)::

    cache = model.init_cache(batch, max_len, dtype=jnp.bfloat16)
    logits_last, cache = model.prefill(input_ids, attention_mask, position_ids, pixel_values, image_grid_thw, cache)
    logits, cache = model.decode_step(tokens, positions, cache)

  `cache` is a dict pytree: "k", "v" (stacked over layers: [num_layers, B, max_len, kv_heads, head_dim]), "valid"
  bool [B, max_len] (keys that may be attended), "index" int32 [] (next slot to write), "next_pos" int32 [B].
  prefill(input_ids [B, P], attention_mask [B, P], position_ids [3, B, P] | None, pixel_values | None,
  image_grid_thw | None, cache) starts from an EMPTY cache, writes slots [0, P) and returns float32 logits
  [B, V] of the last prompt position (prompts are left-padded, so that is every row's last real token).
  decode_step(tokens int [B], positions int [B] | None, cache) writes slot cache["index"] and returns
  float32 logits [B, V] of the next token. Decode positions: the new token's rotary position is the same on
  all three M-RoPE axes, `positions[b] = n_valid_prompt_tokens[b] + rope_deltas[b] + step` (step 0 for the
  first generated token; rope_deltas from rope_index), i.e. one past the largest prompt position. With
  positions=None it uses cache["next_pos"], which prefill sets to exactly that and each step increments.
  max_len must be >= P + number of decode steps (slots past the end are not checked under jit).

One-token decoding (the sampler's loop): the same layers over a cache laid out for one query per row::

    cache = model.decode_cache(prefilled, length, repeats=G)  # K [layers, B*G, KV, hd, length], V [.., length, hd]
    logits, cache = model.decode_one(tokens, cache)          # = decode_step(tokens, None, cache), cheaper per step

  decode_cache takes a prefilled cache (which may be prompt-length: prefill attends over P keys, not P + N),
  repeats each row G times (prompt-major) and gives it room for `length` slots in all.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from geojax.data.mrope import rope_index
from geojax.models.attention import Mask
from geojax.models.config import QwenVLConfig
from geojax.models.sharding import rules_context, shard
from geojax.models.text import CACHE_AXES, K_AXES, V_AXES, TextDecoder, stacked
from geojax.models.vision import VisionTower, grid_tuple


def _is_concrete(x) -> bool:
  return x is not None and not isinstance(x, jax.core.Tracer)


class QwenVL(nnx.Module):
  def __init__(self, config: QwenVLConfig, *, dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
    self.config, self.dtype = config, dtype
    kw = dict(remat_policy=config.remat_policy, attention=config.attention, dtype=dtype, param_dtype=param_dtype,
              rngs=rngs)
    self.visual = VisionTower(config.vision, config.version, **kw)
    self.language_model = TextDecoder(config.text, **kw)

  # ---------------------------------------------------------------- inputs
  def check_image_tokens(self, input_ids, image_grid_thw, image_mask=None) -> None:
    """Raise ValueError when the number of image slots (image-pad tokens, or `image_mask`) differs from the image
    features of the grids."""
    is_image = np.asarray(input_ids) == self.config.image_token_id if image_mask is None else np.asarray(image_mask)
    n_tokens = int(np.sum(is_image))
    grid = grid_tuple(image_grid_thw) if image_grid_thw is not None else ()
    n_features = sum(t * h * w for t, h, w in grid) // self.config.vision.spatial_merge_size ** 2
    if n_tokens != n_features:
      raise ValueError(f"Image features and image tokens do not match: {n_tokens} image tokens in input_ids, "
                       f"{n_features} image features from image_grid_thw {grid}")

  def image_features(self, pixel_values, image_grid_thw) -> jax.Array:
    """The vision tower's features [n_features, D] of the images, in order (what `embed` writes into the slots)."""
    with rules_context(self.config.sharding_rules):
      return self.visual(pixel_values, grid_tuple(image_grid_thw))

  def embed(self, input_ids, pixel_values=None, image_grid_thw=None, image_mask=None,
            image_features=None) -> jax.Array:
    """Token embeddings [B, L, D] with the image features written into the image-pad positions.

    image_mask: [B, L] bool, which positions take image features (default: every image-pad token). A training
    pass over sampled completions passes the prompt's: a completion that happens to contain the image-pad id was
    sampled with that token's text embedding, and must not shift the image features of the rows after it.
    image_features: precomputed `image_features` of the images of image_grid_thw, in place of pixel_values (a
    GRPO pass computes each prompt's once and repeats them over its group).
    """
    x = self.language_model.embed_tokens(input_ids)
    if pixel_values is None and image_features is None:
      return x
    if image_grid_thw is None:
      raise ValueError("pixel_values given without image_grid_thw")
    if _is_concrete(input_ids) and (image_mask is None or _is_concrete(image_mask)):
      self.check_image_tokens(input_ids, image_grid_thw, image_mask)
    if image_features is None:
      image_features = self.visual(pixel_values, grid_tuple(image_grid_thw))
    feats = image_features.astype(x.dtype)
    is_image = (input_ids == self.config.image_token_id if image_mask is None else image_mask).reshape(-1)
    slot = jnp.clip(jnp.cumsum(is_image) - 1, 0, feats.shape[0] - 1)
    flat = jnp.where(is_image[:, None], feats[slot], x.reshape(-1, x.shape[-1]))
    return flat.reshape(x.shape)

  def positions(self, input_ids, attention_mask=None, image_grid_thw=None) -> jax.Array:
    """Default position_ids [3, B, L] (see module docstring)."""
    if _is_concrete(input_ids) and (attention_mask is None or _is_concrete(attention_mask)):
      grid = None if image_grid_thw is None else np.asarray(grid_tuple(image_grid_thw)).reshape(-1, 3)
      pos, _ = rope_index(np.asarray(input_ids), None if attention_mask is None else np.asarray(attention_mask),
                          grid, spatial_merge_size=self.config.vision.spatial_merge_size,
                          image_token_id=self.config.image_token_id)
      return jnp.asarray(pos)
    if image_grid_thw is not None:
      raise ValueError("under jit with images, pass position_ids (from geojax.data.rope_index on the host)")
    mask = jnp.ones(input_ids.shape, jnp.int32) if attention_mask is None else attention_mask.astype(jnp.int32)
    text = jnp.where(mask > 0, jnp.cumsum(mask, axis=1) - 1, 0)
    return jnp.broadcast_to(text[None], (3,) + text.shape)

  # ---------------------------------------------------------------- full forward
  def hidden_states(self, input_ids, attention_mask=None, pixel_values=None, image_grid_thw=None,
                    position_ids=None, image_mask=None, image_features=None) -> jax.Array:
    """Final normed hidden states [B, L, D] (the input of the LM head); image_mask, image_features as in `embed`."""
    if position_ids is None:
      position_ids = self.positions(input_ids, attention_mask, image_grid_thw)
    if attention_mask is None:
      attention_mask = jnp.ones(input_ids.shape, bool)
    with rules_context(self.config.sharding_rules):
      x = self.embed(input_ids, pixel_values, image_grid_thw, image_mask, image_features)
      return self.language_model(x, position_ids, attention_mask)

  def prefix_hidden_states(self, prefix_ids, prefix_mask, prefix_positions, pixel_values, image_grid_thw, input_ids,
                           attention_mask, position_ids, group: int, image_features=None) -> tuple:
    """Hidden states of prompts (prefix_* [B, P], their images) and of their continuations (input_ids [B*group, N],
    each prompt continued by `group` consecutive rows, read as text), as if each row ran after its prompt in one
    sequence (`hidden_states`); the prompts and their images run once, not `group` times. Returns ([B, P, D],
    [B*group, N, D]); position_ids [3, rows, len] for both parts, attention masks 1 = real token."""
    with rules_context(self.config.sharding_rules):
      xp = self.embed(prefix_ids, pixel_values, image_grid_thw, image_features=image_features)
      xn = self.language_model.embed_tokens(input_ids)
      return self.language_model.with_prefix(xp, prefix_positions, prefix_mask, xn, position_ids, attention_mask,
                                             group)

  def __call__(self, input_ids, attention_mask=None, pixel_values=None, image_grid_thw=None,
               position_ids=None) -> jax.Array:
    hidden = self.hidden_states(input_ids, attention_mask, pixel_values, image_grid_thw, position_ids)
    with rules_context(self.config.sharding_rules):
      return shard(self.language_model.logits(hidden), ("batch", "length", "act_vocab"))

  # ---------------------------------------------------------------- KV cache
  def init_cache(self, batch: int, max_len: int, dtype=None) -> dict:
    cfg = self.config.text
    dtype = dtype or self.dtype
    with rules_context(self.config.sharding_rules):
      zeros = lambda: shard(jnp.zeros((cfg.num_layers, batch, max_len, cfg.num_kv_heads, cfg.head_dim), dtype),
                            stacked(CACHE_AXES))
      return {
          "k": zeros(),
          "v": zeros(),
          "valid": jnp.zeros((batch, max_len), bool),
          "index": jnp.zeros((), jnp.int32),
          "next_pos": jnp.zeros((batch,), jnp.int32),
      }

  def _cached_pass(self, x, positions, new_valid, cache):
    """Run new tokens x [B, S, D] at slots index..index+S-1; returns (hidden [B, S, D], updated cache)."""
    index = cache["index"]
    steps = x.shape[1]
    valid = jax.lax.dynamic_update_slice(cache["valid"], new_valid.astype(bool), (0, index))
    # new token s sits at slot index + s
    mask = Mask.from_valid(new_valid, valid, causal=True, offset=index, backend=self.config.attention)
    with rules_context(self.config.sharding_rules):
      hidden, ks, vs = self.language_model.cached(x, positions, mask, cache["k"], cache["v"], index)
    cache = dict(cache, k=ks, v=vs, valid=valid, index=index + steps)
    return hidden, cache

  def prefill(self, input_ids, attention_mask=None, position_ids=None, pixel_values=None, image_grid_thw=None,
              cache=None) -> tuple[jax.Array, dict]:
    if cache is None:
      raise ValueError("prefill needs a cache from init_cache(batch, max_len)")
    if attention_mask is None:
      attention_mask = jnp.ones(input_ids.shape, jnp.int32)
    if position_ids is None:
      position_ids = self.positions(input_ids, attention_mask, image_grid_thw)
    with rules_context(self.config.sharding_rules):
      x = self.embed(input_ids, pixel_values, image_grid_thw)
    hidden, cache = self._cached_pass(x, position_ids, attention_mask, cache)
    real = attention_mask.astype(bool)[None]
    cache["next_pos"] = (jnp.max(jnp.where(real, position_ids, -1), axis=(0, 2)) + 1).astype(jnp.int32)
    return self.language_model.logits(hidden[:, -1]), cache

  def decode_step(self, tokens, positions=None, cache=None) -> tuple[jax.Array, dict]:
    if cache is None:
      raise ValueError("decode_step needs the cache returned by prefill")
    if positions is None:
      positions = cache["next_pos"]
    positions = jnp.asarray(positions, jnp.int32)
    x = self.language_model.embed_tokens(tokens[:, None])
    pos3 = jnp.broadcast_to(positions[None, :, None], (3, positions.shape[0], 1))
    hidden, cache = self._cached_pass(x, pos3, jnp.ones((tokens.shape[0], 1), bool), cache)
    cache["next_pos"] = positions + 1
    return self.language_model.logits(hidden[:, 0]), cache

  # ---------------------------------------------------------------- one-token decoding
  def decode_cache(self, cache: dict, length: int, repeats: int = 1, per_layer: bool = False) -> dict:
    """A prefilled cache (k, v [num_layers, B, P, KV, hd]) in the decode layout with room for `length` slots in all:
    K [num_layers, B*repeats, KV, hd, length], V [num_layers, B*repeats, KV, length, hd], each row repeated `repeats`
    times (prompt-major), the slots past P empty (not valid). `per_layer`: K and V as tuples of each layer's
    [B*repeats, ...] array instead, for `decode_one` over `layer_list` copies (XLA:CPU copies a layer's slice of a
    stacked cache at every step)."""
    extra = length - cache["valid"].shape[1]
    rep = lambda x, axis=0: x if repeats == 1 else jnp.repeat(x, repeats, axis=axis)
    with rules_context(self.config.sharding_rules):
      rows = lambda x: x if repeats == 1 else shard(rep(x, 1), stacked(CACHE_AXES))
      pad = lambda x, axis: jnp.pad(x, [(0, extra if a == axis else 0) for a in range(x.ndim)])
      k = shard(pad(jnp.transpose(rows(cache["k"]), (0, 1, 3, 4, 2)), 4), stacked(K_AXES))
      v = shard(pad(jnp.transpose(rows(cache["v"]), (0, 1, 3, 2, 4)), 3), stacked(V_AXES))
    if per_layer:
      k, v = (tuple(x[i] for i in range(x.shape[0])) for x in (k, v))
    return dict(cache, k=k, v=v, valid=jnp.pad(rep(cache["valid"]), ((0, 0), (0, extra))),
                next_pos=rep(cache["next_pos"]))

  def decode_one(self, tokens, cache: dict, head=None, layers=None) -> tuple[jax.Array, dict]:
    """`decode_step(tokens, None, cache)` over a `decode_cache` cache: float32 logits [B, V] of the token after
    `tokens` [B], written at slot cache["index"] and position cache["next_pos"] (both advanced). `head` [D, V], if
    given, replaces the output matrix (e.g. a transposed copy of a tied embedding, which XLA:CPU multiplies
    1.3-1.6x faster than the [V, D] embedding). `layers`, if given, is `language_model.layer_list()`, the layers as
    separate modules (see `TextDecoder.decode`)."""
    index, positions = cache["index"], cache["next_pos"]
    valid = jax.lax.dynamic_update_slice(cache["valid"], jnp.ones((tokens.shape[0], 1), bool), (0, index))
    with rules_context(self.config.sharding_rules):
      logits, k, v = self.language_model.decode(tokens, positions, cache["k"], cache["v"], valid, index, head, layers)
    return logits, dict(cache, k=k, v=v, valid=valid, index=index + 1, next_pos=positions + 1)
