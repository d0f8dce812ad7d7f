"""Vision towers of Qwen2-VL (LayerNorm, quick-GELU MLP, full attention) and Qwen2.5-VL (RMSNorm, SwiGLU,
window attention with full attention in `fullatt_block_indexes`), with the 2x2 patch merger.

Patches of all images of a batch are packed into one sequence [N, patch_dim]. Which patches attend to which
is fixed by the grids (t, h, w) of the images, host-side values, so `vision_plan` computes in numpy:
2-D rotary positions, the Qwen2.5-VL window order and its inverse, and attention segments (a frame of an
image, or a window) laid out as a padded gather [G, S] so attention is block-diagonal without an N x N mask.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from geojax.models import scan
from geojax.models.attention import Mask, attention
from geojax.models.config import VisionConfig
from geojax.models.layers import ACTIVATIONS, Dense, LayerNorm, RMSNorm, apply_rotary, inverse_frequencies
from geojax.models.sharding import shard

Grid = tuple[tuple[int, int, int], ...]


def grid_tuple(image_grid_thw) -> Grid:
  """Hashable host copy of image_grid_thw (use it as a static jit argument)."""
  if isinstance(image_grid_thw, jax.core.Tracer):
    raise TypeError("image_grid_thw must be a host-side value (numpy or tuple); under jit pass it as a static "
                    "argument, e.g. grid_tuple(batch['image_grid_thw'])")
  return tuple(tuple(int(v) for v in row) for row in np.asarray(image_grid_thw).reshape(-1, 3))


@dataclasses.dataclass(frozen=True)
class Segments:
  """Padded gather layout of contiguous segments: idx/valid [G, S], and inverse [N] into the flat G*S."""
  idx: np.ndarray
  valid: np.ndarray
  inverse: np.ndarray


def segments_from_lengths(lengths: Sequence[int]) -> Segments:
  lengths = np.asarray([n for n in lengths if n > 0], np.int64)
  starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
  width = int(lengths.max())
  slot = np.arange(width)
  idx = np.minimum(starts[:, None] + slot, lengths.sum() - 1)
  valid = slot[None, :] < lengths[:, None]
  inverse = np.concatenate([g * width + np.arange(n) for g, n in enumerate(lengths)])
  return Segments(idx.astype(np.int32), valid, inverse.astype(np.int32))


def rotary_positions(grid: Grid, merge: int) -> np.ndarray:
  """(h, w) patch coordinates [N, 2], patches ordered merge-block by merge-block as the processor emits them."""
  out = []
  for t, h, w in grid:
    hh, ww = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    shape = (h // merge, merge, w // merge, merge)
    hh = hh.reshape(shape).transpose(0, 2, 1, 3).ravel()
    ww = ww.reshape(shape).transpose(0, 2, 1, 3).ravel()
    out.append(np.tile(np.stack([hh, ww], -1), (t, 1)))
  return np.concatenate(out)


def window_index(grid: Grid, cfg: VisionConfig) -> tuple[np.ndarray, list[int]]:
  """Qwen2.5-VL: order of merged tokens that makes each window contiguous, and the window lengths in patches."""
  merge = cfg.spatial_merge_size
  win = cfg.window_size // merge // cfg.patch_size
  order, lengths, offset = [], [], 0
  for t, h, w in grid:
    gh, gw = h // merge, w // merge
    ids = np.arange(t * gh * gw).reshape(t, gh, gw)
    nh, nw = -(-gh // win), -(-gw // win)
    padded = np.full((t, nh * win, nw * win), -1)
    padded[:, :gh, :gw] = ids
    blocks = padded.reshape(t, nh, win, nw, win).transpose(0, 1, 3, 2, 4).reshape(t, nh * nw, win * win)
    for frame in blocks:
      for block in frame:
        kept = block[block >= 0]
        if kept.size:
          order.append(kept + offset)
          lengths.append(kept.size * merge * merge)
    offset += t * gh * gw
  return np.concatenate(order), lengths


@dataclasses.dataclass(frozen=True)
class VisionPlan:
  positions: np.ndarray  # [N, 2] rotary (h, w), already in processing order
  full: Segments  # one segment per frame
  windows: Segments | None  # Qwen2.5-VL windows
  order: np.ndarray | None  # merged-token permutation into window order
  restore: np.ndarray | None  # its inverse (argsort), applied after the merger


def vision_plan(grid: Grid, cfg: VisionConfig, version: str) -> VisionPlan:
  merge_area = cfg.spatial_merge_size ** 2
  positions = rotary_positions(grid, cfg.spatial_merge_size)
  frames = [h * w for t, h, w in grid for _ in range(t)]
  if version == "qwen2_vl":
    return VisionPlan(positions, segments_from_lengths(frames), None, None, None)
  order, window_lengths = window_index(grid, cfg)
  patch_order = (order[:, None] * merge_area + np.arange(merge_area)).ravel()
  return VisionPlan(positions[patch_order], segments_from_lengths(frames), segments_from_lengths(window_lengths),
                    order, np.argsort(order))


def vision_cos_sin(positions: np.ndarray, cfg: VisionConfig) -> tuple[jax.Array, jax.Array]:
  """cos/sin [N, head_dim]: a quarter of the dims per axis (h then w), duplicated as in rotate-half RoPE."""
  inv_freq = jnp.asarray(inverse_frequencies(cfg.head_dim // 2, cfg.rope_theta))
  pos = jnp.asarray(positions, jnp.float32)
  angles = jnp.concatenate([pos[:, :1] * inv_freq, pos[:, 1:] * inv_freq], axis=-1)
  angles = jnp.concatenate([angles, angles], axis=-1)
  return jnp.cos(angles), jnp.sin(angles)


class VisionAttention(nnx.Module):
  def __init__(self, cfg: VisionConfig, *, dtype, param_dtype, rngs: nnx.Rngs):
    d, h, hd = cfg.hidden_size, cfg.num_heads, cfg.head_dim
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.qkv = Dense((d,), (3, h, hd), ("vision_embed", None, "vision_heads", "head_dim"), bias=True, **kw)
    self.proj = Dense((h, hd), (d,), ("vision_heads", "head_dim", "vision_embed"), bias=True, **kw)

  def __call__(self, x, cos, sin, seg: Segments, backend: str = "auto"):
    qkv = self.qkv(x)
    q, k, v = apply_rotary(qkv[:, 0], cos, sin), apply_rotary(qkv[:, 1], cos, sin), qkv[:, 2]
    idx = jnp.asarray(seg.idx)
    # segments (images or windows) are independent: spread them like a batch, their padding as segment 0
    q, k, v = (shard(t[idx], ("batch", None, "act_heads", None)) for t in (q, k, v))
    out = attention(q, k, v, Mask.from_valid(seg.valid, causal=False, backend=backend))  # [G, S, H, hd]
    out = out.reshape(-1, *out.shape[2:])[jnp.asarray(seg.inverse)]
    return self.proj(out)


class VisionMLP(nnx.Module):
  """Qwen2-VL: fc1 -> act -> fc2. Qwen2.5-VL: SwiGLU with biases (gate/up/down)."""

  def __init__(self, cfg: VisionConfig, gated: bool, *, dtype, param_dtype, rngs: nnx.Rngs):
    d, m = cfg.hidden_size, cfg.intermediate_size
    kw = dict(bias=True, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.act = ACTIVATIONS[cfg.hidden_act]
    self.gated = gated
    if gated:
      self.gate_proj = Dense((d,), (m,), ("vision_embed", "vision_mlp"), **kw)
      self.up_proj = Dense((d,), (m,), ("vision_embed", "vision_mlp"), **kw)
      self.down_proj = Dense((m,), (d,), ("vision_mlp", "vision_embed"), **kw)
    else:
      self.fc1 = Dense((d,), (m,), ("vision_embed", "vision_mlp"), **kw)
      self.fc2 = Dense((m,), (d,), ("vision_mlp", "vision_embed"), **kw)

  def __call__(self, x):
    if self.gated:
      return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))
    return self.fc2(self.act(self.fc1(x)))


class VisionBlock(nnx.Module):
  def __init__(self, cfg: VisionConfig, version: str, *, dtype, param_dtype, rngs: nnx.Rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype)
    norm = LayerNorm if version == "qwen2_vl" else RMSNorm
    self.norm1 = norm(cfg.hidden_size, 1e-6, **kw)
    self.norm2 = norm(cfg.hidden_size, 1e-6, **kw)
    self.attn = VisionAttention(cfg, rngs=rngs, **kw)
    self.mlp = VisionMLP(cfg, version == "qwen2_5_vl", rngs=rngs, **kw)

  def __call__(self, x, cos, sin, seg: Segments, backend: str = "auto"):
    x = x + self.attn(self.norm1(x), cos, sin, seg, backend)
    return shard(x + self.mlp(self.norm2(x)), ("batch", "act_embed"))


class PatchMerger(nnx.Module):
  """Norm, then 2x2 neighbouring patches concatenated and projected by a GELU MLP to the text width."""

  def __init__(self, cfg: VisionConfig, version: str, *, dtype, param_dtype, rngs: nnx.Rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype)
    self.width = cfg.hidden_size * cfg.spatial_merge_size ** 2
    norm = LayerNorm if version == "qwen2_vl" else RMSNorm
    self.ln_q = norm(cfg.hidden_size, 1e-6, **kw)
    self.fc1 = Dense((self.width,), (self.width,), ("merge", "vision_mlp"), bias=True, rngs=rngs, **kw)
    self.fc2 = Dense((self.width,), (cfg.out_hidden_size,), ("vision_mlp", "embed"), bias=True, rngs=rngs, **kw)

  def __call__(self, x):
    x = self.ln_q(x).reshape(-1, self.width)
    return self.fc2(ACTIVATIONS["gelu"](self.fc1(x)))


class VisionTower(nnx.Module):
  """Patch embedding, the blocks (one `scan.stack`, run as a scan) and the patch merger. In Qwen2.5-VL, whether a
  block attends over whole frames or over windows (`fullatt_block_indexes`) is a per-block flag scanned with the
  parameters, and each block picks its segments with `jax.lax.cond` on it (no branch when all blocks agree)."""

  def __init__(self, cfg: VisionConfig, version: str, *, remat_policy: str = "none", attention: str = "auto", dtype,
               param_dtype, rngs: nnx.Rngs):
    self.cfg, self.version, self.remat_policy, self.dtype = cfg, version, remat_policy, dtype
    self.attention = attention
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.patch_embed = Dense((cfg.patch_dim,), (cfg.hidden_size,), ("patch", "vision_embed"), bias=False, **kw)
    self.blocks = scan.stack([VisionBlock(cfg, version, **kw) for _ in range(cfg.depth)])
    self.merger = PatchMerger(cfg, version, **kw)

  def __call__(self, pixel_values: jax.Array, grid: Grid) -> jax.Array:
    """Image features [N / merge^2, out_hidden_size] for packed patches [N, patch_dim] of images `grid`."""
    grid = grid_tuple(grid)
    n_patches = sum(t * h * w for t, h, w in grid)
    if pixel_values.shape[0] != n_patches:
      raise ValueError(f"pixel_values has {pixel_values.shape[0]} patches but image_grid_thw {grid} needs {n_patches}")
    plan = vision_plan(grid, self.cfg, self.version)
    merge_area = self.cfg.spatial_merge_size ** 2
    x = shard(self.patch_embed(pixel_values), ("batch", "act_embed"))  # patches of whole images per shard
    if plan.order is not None:
      x = x.reshape(-1, merge_area, x.shape[-1])[jnp.asarray(plan.order)].reshape(x.shape)
    cos, sin = vision_cos_sin(plan.positions, self.cfg)
    full = np.asarray([plan.windows is None or i in self.cfg.fullatt_block_indexes for i in range(self.cfg.depth)])
    backend = self.attention

    def body(block, x, is_full):
      if full.all() or not full.any():  # every block attends alike: no branch
        return block(x, cos, sin, plan.full if full.all() else plan.windows, backend), None
      return jax.lax.cond(is_full, lambda x: block(x, cos, sin, plan.full, backend),
                          lambda x: block(x, cos, sin, plan.windows, backend), x), None

    x, _ = scan.scan(self.blocks, body, x, jnp.asarray(full), remat_policy=self.remat_policy)
    out = self.merger(x)
    if plan.restore is not None:
      out = out[jnp.asarray(plan.restore)]
    return out
