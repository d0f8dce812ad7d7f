"""Benchmark: geojax.geo nearest city + Haversine vs reverse_geocoder (mode 2) and the `haversine` package.

  cd /work/main && /work/venv/bin/python scripts/bench_geo.py --n 1000000 --repeats 5

Both sides run in this process on the same random points (uniform over the sphere). Prints best and median
seconds per side and the ratio peer / ours (> 1: geojax is faster), plus the agreement of the nearest rows.
"""
import argparse
import statistics
import time
import warnings

import numpy as np


def _timed(fn, repeats):
  times = []
  out = None
  for _ in range(repeats):
    start = time.perf_counter()
    out = fn()
    times.append(time.perf_counter() - start)
  return out, min(times), statistics.median(times)


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--n", type=int, default=1_000_000)
  parser.add_argument("--repeats", type=int, default=5)
  args = parser.parse_args()
  warnings.filterwarnings("ignore", message="os.fork", category=RuntimeWarning)

  import haversine
  import jax
  import jax.numpy as jnp
  import reverse_geocoder

  from geojax.geo import Gazetteer, haversine_km

  rng = np.random.default_rng(0)
  lat = np.degrees(np.arcsin(rng.uniform(-1, 1, args.n)))
  lon = rng.uniform(-180, 180, args.n)
  lat2 = np.degrees(np.arcsin(rng.uniform(-1, 1, args.n)))
  lon2 = rng.uniform(-180, 180, args.n)
  points = list(zip(lat.tolist(), lon.tolist()))

  gaz = Gazetteer.load()
  rg = reverse_geocoder.RGeocoder(mode=2, verbose=False)  # build its tree outside the timing
  position = {id(loc): i for i, loc in enumerate(rg.locations)}
  lat32, lon32 = jnp.asarray(lat, jnp.float32), jnp.asarray(lon, jnp.float32)
  nearest = jax.jit(gaz.nearest)
  nearest(lat32, lon32).block_until_ready()  # compile

  rows = []
  theirs, t_best, t_med = _timed(lambda: reverse_geocoder.search(points, mode=2, verbose=False), args.repeats)
  query = np.stack([lat, lon], 1)
  _, p_best, p_med = _timed(lambda: rg.tree.pquery(query), args.repeats)  # its core, without list/dict handling
  ours, o_best, o_med = _timed(lambda: nearest(lat32, lon32).block_until_ready(), args.repeats)
  host, h_best, h_med = _timed(lambda: gaz.nearest_np(lat, lon), args.repeats)
  their_rows = np.array([position[id(r)] for r in theirs])
  agreement = (np.asarray(ours) == their_rows).mean()
  host_agreement = (host == their_rows).mean()
  rows.append(("nearest city: reverse_geocoder.search(mode=2) vs gaz.nearest (jit, on device)",
               t_best, t_med, o_best, o_med))
  rows.append(("nearest city: reverse_geocoder.search(mode=2) vs gaz.nearest_np (numpy float64 twin)",
               t_best, t_med, h_best, h_med))
  rows.append(("nearest city: reverse_geocoder k-d tree pquery (numpy in) vs gaz.nearest (jit)",
               p_best, p_med, o_best, o_med))

  a = np.stack([lat, lon], 1)
  b = np.stack([lat2, lon2], 1)
  args32 = [jnp.asarray(x, jnp.float32) for x in (lat, lon, lat2, lon2)]
  dist = jax.jit(haversine_km)
  dist(*args32).block_until_ready()
  theirs_d, t_best, t_med = _timed(lambda: haversine.haversine_vector(a, b, haversine.Unit.KILOMETERS), args.repeats)
  ours_d, o_best, o_med = _timed(lambda: dist(*args32).block_until_ready(), args.repeats)
  rel = np.abs(np.asarray(ours_d) - theirs_d * 6371.0 / 6371.0088) / np.maximum(theirs_d, 1.0)
  rows.append(("haversine: haversine.haversine_vector vs haversine_km (jit, float32)", t_best, t_med, o_best, o_med))

  print(f"n = {args.n:,} queries, {args.repeats} repeats, jax {jax.__version__} on {jax.devices()[0].platform}")
  print(f"nearest-row agreement with reverse_geocoder: jnp {agreement:.6f}, numpy twin {host_agreement:.6f}; "
        f"haversine max rel. diff: {rel.max():.2e}")
  print("| comparison | peer best s | peer median s | geojax best s | geojax median s | ratio (median) |")
  print("|---|---|---|---|---|---|")
  for name, pb, pm, ob, om in rows:
    print(f"| {name} | {pb:.3f} | {pm:.3f} | {ob:.3f} | {om:.3f} | {pm / om:.2f}x |")


if __name__ == "__main__":
  main()
