"""Hard-sample mining as in Geo-R: drop training samples within `radius_km` of any "hotspot" coordinate.

Points become unit vectors; a great-circle distance <= R is a chord length <= c = 2 sin(R / 2 R_earth), so the
test is exact. Hotspots are binned into cubic voxels of side c; a sample can only be near hotspots of its own or the 26
neighbouring voxels. Samples are first compared with the hotspots of their own voxel, then the rest with every
hotspot listed under the neighbouring voxels (one binary search over sorted voxel keys per sample and pass), so
the work grows with the number of nearby candidates instead of N x M. A first pass with voxels of side c/2
(diagonal < c) drops every sample sharing a voxel with a hotspot without any distance computation, which removes
the dense city clusters cheaply.
"""
from __future__ import annotations

import math

import numpy as np

EARTH_RADIUS_KM = 6371.0
_MIN_CELL = 1e-5  # voxel side floor (in unit-sphere units, ~64 m) keeping int64 voxel keys exact


def _unit_vectors(lat, lon) -> np.ndarray:
  lat = np.radians(np.asarray(lat, np.float64))
  lon = np.radians(np.asarray(lon, np.float64))
  cos_lat = np.cos(lat)
  return np.stack([cos_lat * np.cos(lon), cos_lat * np.sin(lon), np.sin(lat)], axis=-1)


class _VoxelKeys:
  """Integer keys of cubic voxels of side `cell` covering [-1, 1]^3."""

  def __init__(self, cell: float):
    self.cell = cell
    self.offset = int(math.ceil(1.0 / cell)) + 2
    self.base = 2 * self.offset + 1

  def coords(self, xyz: np.ndarray) -> np.ndarray:
    return np.floor(xyz / self.cell).astype(np.int64) + self.offset

  def key(self, coords: np.ndarray) -> np.ndarray:
    return (coords[:, 0] * self.base + coords[:, 1]) * self.base + coords[:, 2]


def _expand_ranges(starts: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """For ranges [start, start + count): (owner row of each element, element position)."""
  owners = np.repeat(np.arange(len(counts)), counts)
  first = np.cumsum(counts) - counts
  positions = np.arange(int(counts.sum())) - np.repeat(first, counts) + np.repeat(starts, counts)
  return owners, positions


def near_hotspots(lat, lon, hot_lat, hot_lon, radius_km: float = 200.0,
                  max_pairs: int = 1 << 22) -> np.ndarray:
  """Boolean [N]: True where a sample lies within `radius_km` (great circle) of at least one hotspot.

  Samples with non-finite coordinates are never near. `max_pairs` bounds the candidate pairs held in memory.
  """
  p = _unit_vectors(lat, lon).reshape(-1, 3)
  q = _unit_vectors(hot_lat, hot_lon).reshape(-1, 3)
  q = q[np.isfinite(q).all(axis=1)]
  n = p.shape[0]
  near = np.zeros(n, bool)
  valid = np.isfinite(p).all(axis=1)
  if n == 0 or q.shape[0] == 0 or radius_km < 0:
    return near
  angle = radius_km / EARTH_RADIUS_KM
  if angle >= math.pi:
    return valid.copy()
  chord = 2.0 * math.sin(angle / 2.0)
  chord2 = chord * chord

  active = np.flatnonzero(valid)
  if chord / 2 >= _MIN_CELL:  # a voxel of side c/2 has diagonal 0.87 c: sharing one means being near
    fine = _VoxelKeys(chord / 2)
    shares = np.isin(fine.key(fine.coords(p[active])), fine.key(fine.coords(q)))
    near[active[shares]] = True
    active = active[~shares]
  if active.size == 0:
    return near

  # Pass 1 compares samples with the hotspots of their own voxel (most hits, few candidates). Pass 2 lists every
  # hotspot under its own and its 26 neighbouring voxels, so one lookup of a remaining sample's voxel finds every
  # hotspot that can be within the chord.
  vox = _VoxelKeys(max(chord, _MIN_CELL))
  hot_coords = vox.coords(q)
  own = np.zeros((1, 1, 3), np.int64)
  neighbours = np.stack(np.meshgrid([-1, 0, 1], [-1, 0, 1], [-1, 0, 1], indexing="ij"), -1).reshape(-1, 1, 3)
  for offsets in (own, neighbours):
    if active.size == 0:
      break
    keys = vox.key((hot_coords[None] + offsets).reshape(-1, 3))
    listed = np.tile(np.arange(q.shape[0]), len(offsets))
    order = np.argsort(keys, kind="stable")
    keys, listed = keys[order], listed[order]
    unique_keys, first, counts = np.unique(keys, return_index=True, return_counts=True)
    sample_keys = vox.key(vox.coords(p[active]))
    slot = np.minimum(np.searchsorted(unique_keys, sample_keys), len(unique_keys) - 1)
    rows = np.flatnonzero(unique_keys[slot] == sample_keys)
    hit_rows = rows[_pairs_within(p[active[rows]], q[listed], first[slot[rows]], counts[slot[rows]], chord2,
                                  max_pairs)]
    near[active[hit_rows]] = True
    active = np.delete(active, hit_rows)
  return near


def _pairs_within(points: np.ndarray, hot: np.ndarray, starts: np.ndarray, counts: np.ndarray, chord2: float,
                  max_pairs: int) -> np.ndarray:
  """Indices of `points` with at least one hotspot of their candidate range within the chord."""
  hits = []
  cum = np.cumsum(counts)
  begin = 0
  while begin < len(counts):
    # Largest run of rows whose candidate pairs fit in max_pairs (at least one row).
    done = cum[begin - 1] if begin else 0
    end = max(int(np.searchsorted(cum, done + max_pairs, side="right")), begin + 1)
    owners, positions = _expand_ranges(starts[begin:end], counts[begin:end])
    d2 = ((points[begin:end][owners] - hot[positions]) ** 2).sum(axis=1)
    hit = np.zeros(end - begin, bool)
    hit[owners[d2 <= chord2]] = True
    hits.append(np.flatnonzero(hit) + begin)
    begin = end
  return np.concatenate(hits) if hits else np.zeros(0, np.int64)


def drop_near_hotspots(lat, lon, hot_lat, hot_lon, radius_km: float = 200.0) -> np.ndarray:
  """Keep mask (bool [N]) of the Geo-R hard subset: True for samples farther than radius_km from every hotspot."""
  return ~near_hotspots(lat, lon, hot_lat, hot_lon, radius_km)


def hotspots(rows, radius_km: float) -> tuple[np.ndarray, np.ndarray]:
  """(lat, lon) of the true locations of the predictions within `radius_km` of them: Geo-R's hotspots.

  rows: prediction dicts with "true_lat", "true_lon" and "distance_km" (None when the answer was unreadable), as
  geojax.evaluation writes them.
  """
  hot = [(r["true_lat"], r["true_lon"]) for r in rows
         if r.get("distance_km") is not None and r["distance_km"] <= radius_km]
  lat, lon = (np.asarray(v, np.float64) for v in (zip(*hot) if hot else ((), ())))
  return lat, lon


class Subset:
  """The records of `source` at `indices`, in that order (a random-access source like the one it views)."""

  def __init__(self, source, indices):
    self._source, self.indices = source, [int(i) for i in indices]

  def __len__(self) -> int:
    return len(self.indices)

  def __getitem__(self, index: int):
    return self._source[self.indices[index]]
