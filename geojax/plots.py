"""World map of predicted vs true photo locations, drawn offline.

Coastlines come from the global-land-mask raster (1 km land/sea grid shipped with the package), subsampled and
contoured, so no map download (cartopy, Natural Earth) is needed.
"""
from __future__ import annotations

import functools

import numpy as np


@functools.lru_cache(maxsize=1)
def _land_grid(step: int = 40) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(lat [H], lon [W], land float [H, W]) every `step`-th cell of the 1 km mask (~0.33 degrees at 40)."""
  from global_land_mask import globe
  land = 1.0 - np.asarray(globe._mask[::step, ::step], np.float32)  # the raster marks ocean cells
  return np.asarray(globe._lat[::step]), np.asarray(globe._lon[::step]), land


def world_map(path: str, true_lat, true_lon, pred_lat=None, pred_lon=None, valid=None, title: str = "",
              max_lines: int = 2000) -> str:
  """Writes a PNG: land shaded, true locations (green), predictions (red) joined to their truth by grey lines.

  pred_* may be None (ground truth only); `valid` marks predictions that parsed (others are not drawn).
  Returns `path`.
  """
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  true_lat = np.asarray(true_lat, np.float64)
  true_lon = np.asarray(true_lon, np.float64)
  fig, ax = plt.subplots(figsize=(12, 6.2), dpi=110)
  lat, lon, land = _land_grid()
  ax.contourf(lon, lat, land, levels=[0.5, 1.5], colors=["#e8e4d8"])
  ax.contour(lon, lat, land, levels=[0.5], colors=["#8a8a8a"], linewidths=0.4)
  ax.set_facecolor("#dcebf5")
  if pred_lat is not None:
    pred_lat = np.asarray(pred_lat, np.float64)
    pred_lon = np.asarray(pred_lon, np.float64)
    ok = np.isfinite(pred_lat) & np.isfinite(pred_lon)
    if valid is not None:
      ok &= np.asarray(valid, bool)
    idx = np.flatnonzero(ok)[:max_lines]
    for i in idx:
      ax.plot([true_lon[i], pred_lon[i]], [true_lat[i], pred_lat[i]], color="#777777", lw=0.5, alpha=0.5,
              zorder=2)
    ax.scatter(pred_lon[idx], pred_lat[idx], s=10, c="#d62728", label=f"predicted ({ok.sum()}/{ok.size} valid)",
               zorder=4, edgecolors="none")
  ax.scatter(true_lon, true_lat, s=10, c="#2ca02c", label="true", zorder=3, edgecolors="none")
  ax.set_xlim(-180, 180)
  ax.set_ylim(-90, 90)
  ax.set_xticks(range(-180, 181, 60))
  ax.set_yticks(range(-90, 91, 30))
  ax.set_xlabel("longitude")
  ax.set_ylabel("latitude")
  ax.grid(color="white", lw=0.4)
  ax.legend(loc="lower left", fontsize=8)
  if title:
    ax.set_title(title)
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)
  return path
