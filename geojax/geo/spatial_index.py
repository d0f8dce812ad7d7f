"""Exact nearest-city lookup in jnp: a lat/lon grid refined into quadtrees with per-leaf candidate lists.

The metric is the one `reverse_geocoder` (1.5.1) uses: its k-d tree holds raw (lat, lon) pairs, so "nearest"
is the planar Euclidean distance in degrees, without longitude wrap-around. (The library ships an ECEF helper,
`geodetic_in_ecef`, but never calls it.) Matching that metric is what makes our labels agree with it.

Build (numpy/scipy, once): every top cell of TOP_DEG degrees is split into quadrants until the set of cities
that can be nearest to some point of the cell has at most `leaf_size` members (or MAX_DEPTH is reached).
A candidate set is a superset of the cities whose Voronoi region meets the cell (enlarged by a small margin so
float32 rounding of the query cannot step outside it): cities farther from the cell than the smallest
"farthest distance from the cell to one city" are dropped, and so is any city that another city beats at all
four corners (the points where one city beats another form a half-plane, so the corners decide for the cell).

Query (jnp, jit-able; or numpy in float64 on the host): integer cell coordinates at the finest level, one
gather for the top cell, one per quadtree level, then one row gather of the leaf's candidate coordinates and an
argmin. The float32 jnp path can differ from reverse_geocoder only on near-ties (~1e-5 of random queries); the
float64 numpy path computes the same distances reverse_geocoder does.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from scipy.spatial import cKDTree

TOP_DEG = 1.0
MAX_DEPTH = 12
# Cells are enlarged by this much (degrees) when candidate sets are built; float32 rounds a query by < 2e-5.
CELL_MARGIN_DEG = 1e-4
_PAD_COORD = 1e4  # padding candidates sit far outside the domain
_N_ROWS = int(round(180 / TOP_DEG))
_N_COLS = int(round(360 / TOP_DEG))


@dataclasses.dataclass(frozen=True)
class SpatialIndex:
  """Arrays of the index (numpy); `to_device()` gives the jnp pytree the query uses."""
  top_node: np.ndarray  # int32 [_N_ROWS * _N_COLS]: node id of each top cell
  node_child: np.ndarray  # int32 [n_nodes]: first of 4 children (>= 0) or ~leaf id (< 0)
  leaf_coords: np.ndarray  # float32 [n_leaves, 2, K]: candidate lat (row 0) and lon (row 1)
  leaf_rows: np.ndarray  # int32 [n_leaves, K]: gazetteer row of each candidate
  depth: int  # deepest quadtree level used

  def arrays(self) -> dict[str, np.ndarray]:
    return {"top_node": self.top_node, "node_child": self.node_child, "leaf_coords": self.leaf_coords,
            "leaf_rows": self.leaf_rows, "depth": np.int32(self.depth)}

  @classmethod
  def from_arrays(cls, arrays) -> "SpatialIndex":
    return cls(top_node=np.asarray(arrays["top_node"]), node_child=np.asarray(arrays["node_child"]),
               leaf_coords=np.asarray(arrays["leaf_coords"]), leaf_rows=np.asarray(arrays["leaf_rows"]),
               depth=int(arrays["depth"]))


def _representatives(points: np.ndarray) -> np.ndarray:
  """Rows to index: of cities sharing a coordinate keep the one scipy's k-d tree (as used by
  reverse_geocoder, leafsize 30) returns; for every other query the tie goes the same way."""
  _, inverse, counts = np.unique(points, axis=0, return_inverse=True, return_counts=True)
  inverse = inverse.reshape(-1)
  keep = np.ones(len(points), dtype=bool)
  dup_groups = np.nonzero(counts > 1)[0]
  if len(dup_groups):
    tree = cKDTree(points, leafsize=30)
    in_dup = np.isin(inverse, dup_groups)
    keep[in_dup] = False
    first_rows = np.array([np.nonzero(inverse == g)[0][0] for g in dup_groups])
    _, winners = tree.query(points[first_rows])
    keep[winners] = True
  return np.nonzero(keep)[0]


def _rect_dist2(lo: np.ndarray, hi: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Squared min and max distance between rectangles [lo, hi] and points p (all [..., 2])."""
  nearest = np.clip(p, lo, hi)
  farthest = np.where(p - lo > hi - p, lo, hi)
  return ((p - nearest) ** 2).sum(-1), ((p - farthest) ** 2).sum(-1)


def _prune_dominated(lo, hi, cand_pts, valid):
  """valid[n, m] &= not beaten at all four corners by another valid candidate of the same cell."""
  corners = np.stack([lo, np.stack([lo[:, 0], hi[:, 1]], -1), np.stack([hi[:, 0], lo[:, 1]], -1), hi], 1)
  d2 = ((corners[:, :, None, :] - cand_pts[:, None, :, :]) ** 2).sum(-1)  # [n, 4, m]
  d2 = np.where(valid[:, None, :], d2, np.inf)
  beats = (d2[:, :, :, None] < d2[:, :, None, :]).all(1)  # [n, j, i]: j closer than i at every corner
  return valid & ~beats.any(1)


def _candidates(tree, points, lo, hi, leaf_size, dominance_limit):
  """Candidate row lists (indices into `points`) for cells [lo, hi] ([n, 2] each)."""
  lo = lo - CELL_MARGIN_DEG
  hi = hi + CELL_MARGIN_DEG
  center = 0.5 * (lo + hi)
  half_diag = 0.5 * np.sqrt(((hi - lo) ** 2).sum(-1))
  _, nearest_to_center = tree.query(center)
  _, bound2 = _rect_dist2(lo, hi, points[nearest_to_center])
  balls = tree.query_ball_point(center, np.sqrt(bound2) + half_diag + 1e-9)
  lengths = np.array([len(b) for b in balls])
  flat = np.concatenate([np.asarray(b, dtype=np.int64) for b in balls])
  cell = np.repeat(np.arange(len(lo)), lengths)
  near2, far2 = _rect_dist2(lo[cell], hi[cell], points[flat])
  starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
  best_far2 = np.minimum.reduceat(far2, starts)
  keep = near2 <= best_far2[cell] * (1 + 1e-9) + 1e-12
  flat, cell = flat[keep], cell[keep]
  lists = np.split(flat, np.cumsum(np.bincount(cell, minlength=len(lo)))[:-1])
  # Dominance pruning for cells just above the leaf size (larger ones are split anyway).
  todo = [i for i, c in enumerate(lists) if leaf_size < len(c) <= dominance_limit]
  for chunk_start in range(0, len(todo), 512):
    ids = np.array(todo[chunk_start:chunk_start + 512])
    m = max(len(lists[i]) for i in ids)
    rows = np.zeros((len(ids), m), dtype=np.int64)
    valid = np.zeros((len(ids), m), dtype=bool)
    for k, i in enumerate(ids):
      rows[k, :len(lists[i])] = lists[i]
      valid[k, :len(lists[i])] = True
    valid = _prune_dominated(lo[ids], hi[ids], points[rows], valid)
    for k, i in enumerate(ids):
      lists[i] = rows[k][valid[k]]
  return lists


def build(lat: np.ndarray, lon: np.ndarray, leaf_size: int = 16, dominance_limit: int = 96) -> SpatialIndex:
  """Builds the index over cities (float64 degrees). Rows refer to positions in `lat` / `lon`."""
  all_points = np.stack([np.asarray(lat, np.float64), np.asarray(lon, np.float64)], -1)
  rows_kept = _representatives(all_points)
  points = all_points[rows_kept]
  tree = cKDTree(points)

  iy, ix = np.meshgrid(np.arange(_N_ROWS), np.arange(_N_COLS), indexing="ij")
  lo = np.stack([iy.ravel() * TOP_DEG - 90.0, ix.ravel() * TOP_DEG - 180.0], -1)
  size = TOP_DEG
  node_child: list[np.ndarray] = []  # per level, values for that level's nodes
  level_first_node = 0
  leaf_lists: list[np.ndarray] = []
  top_node = np.arange(len(lo), dtype=np.int64)
  depth = 0
  n_nodes = len(lo)
  while len(lo):
    lists = _candidates(tree, points, lo, lo + size, leaf_size, dominance_limit)
    counts = np.array([len(c) for c in lists])
    split = (counts > leaf_size) & (depth < MAX_DEPTH)
    child = np.empty(len(lo), dtype=np.int64)
    leaf_ids = np.nonzero(~split)[0]
    child[leaf_ids] = ~(len(leaf_lists) + np.arange(len(leaf_ids)))
    for i in leaf_ids:
      # Nearest-to-center first so that ties between float32-equal coordinates go to the likelier city.
      c = lists[i]
      center = lo[i] + 0.5 * size
      leaf_lists.append(c[np.argsort(((points[c] - center) ** 2).sum(-1), kind="stable")])
    split_ids = np.nonzero(split)[0]
    child[split_ids] = n_nodes + 4 * np.arange(len(split_ids))
    node_child.append(child)
    n_nodes += 4 * len(split_ids)
    half = size / 2
    quadrant = np.array([[0, 0], [0, half], [half, 0], [half, half]])
    lo = (lo[split_ids][:, None, :] + quadrant[None]).reshape(-1, 2)
    size = half
    depth += 1 if len(lo) else 0
    level_first_node += len(child)

  width = max(len(c) for c in leaf_lists)
  leaf_coords = np.full((len(leaf_lists), 2, width), _PAD_COORD, dtype=np.float32)
  leaf_rows = np.zeros((len(leaf_lists), width), dtype=np.int32)
  for k, c in enumerate(leaf_lists):
    leaf_coords[k, :, :len(c)] = points[c].T
    leaf_rows[k, :len(c)] = rows_kept[c]
  return SpatialIndex(top_node=top_node.astype(np.int32), node_child=np.concatenate(node_child).astype(np.int32),
                      leaf_coords=leaf_coords, leaf_rows=leaf_rows, depth=depth)


def nearest_rows(index: dict, lat, lon, depth: int, xp=jnp, dtype=None):
  """Row of the nearest city for each query (`index`: `SpatialIndex.arrays()` as arrays of module `xp`).

  xp=jnp (default) is jit-able; xp=np runs on the host without JAX (data workers), in float64 when
  `dtype` is np.float64 and `index["leaf_coords"]` holds float64 coordinates. `depth` must be a Python int (the
  index's `depth`). Latitudes are clipped to [-90, 90]; longitudes outside [-180, 180] are wrapped into
  [-180, 180); NaN queries give an arbitrary valid row.
  """
  dtype = dtype or xp.float32
  lat = xp.asarray(lat, dtype)
  lon = xp.asarray(lon, dtype)
  lat = xp.clip(xp.nan_to_num(lat), -90.0, 90.0)
  lon = xp.nan_to_num(lon)
  lon = xp.where((lon < -180.0) | (lon > 180.0), xp.mod(lon + 180.0, 360.0) - 180.0, lon)
  scale = float((1 << depth) / TOP_DEG)
  fy = xp.clip(xp.floor((lat + 90.0) * scale).astype(xp.int32), 0, _N_ROWS * (1 << depth) - 1)
  fx = xp.clip(xp.floor((lon + 180.0) * scale).astype(xp.int32), 0, _N_COLS * (1 << depth) - 1)
  node = index["top_node"][(fy >> depth) * _N_COLS + (fx >> depth)]
  child = index["node_child"][node]
  for level in range(depth):
    bit = depth - 1 - level
    quadrant = ((fy >> bit) & 1) * 2 + ((fx >> bit) & 1)
    node = xp.where(child >= 0, child + quadrant, node)
    child = index["node_child"][node]
  leaf = ~child
  coords = index["leaf_coords"][leaf]  # [..., 2, K]
  d2 = (coords[..., 0, :] - lat[..., None]) ** 2 + (coords[..., 1, :] - lon[..., None]) ** 2
  best = xp.argmin(d2, axis=-1).astype(xp.int32)
  width = index["leaf_rows"].shape[-1]
  return index["leaf_rows"].reshape(-1)[leaf * width + best]


def to_device(index: SpatialIndex) -> dict:
  return {k: jnp.asarray(v) for k, v in index.arrays().items() if k != "depth"}


def host_arrays(index: SpatialIndex, lat: np.ndarray, lon: np.ndarray) -> dict:
  """Host arrays with float64 candidate coordinates (from the cities' own lat / lon), for exact distances."""
  arrays = {k: v for k, v in index.arrays().items() if k != "depth"}
  pad = arrays["leaf_coords"][:, 0, :] >= _PAD_COORD
  rows = arrays["leaf_rows"]
  coords = np.stack([np.where(pad, _PAD_COORD, lat[rows]), np.where(pad, _PAD_COORD, lon[rows])], 1)
  arrays["leaf_coords"] = coords.astype(np.float64)
  return arrays


nearest_rows_jit = jax.jit(nearest_rows, static_argnames=("depth", "xp"))
