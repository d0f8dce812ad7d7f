"""python -m geojax.geo LAT LON [--precision N]: prints the Chain of Region and continent of a coordinate."""
import argparse
import math
import sys

from geojax.geo.chain import DEFAULT_PRECISION, chain_of_region
from geojax.geo.gazetteer import Gazetteer


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m geojax.geo", description=__doc__)
  parser.add_argument("lat", type=float, help="latitude in degrees, -90..90")
  parser.add_argument("lon", type=float, help="longitude in degrees, -180..180")
  parser.add_argument("--precision", type=int, default=DEFAULT_PRECISION, help="decimals of the coordinate")
  args = parser.parse_args(argv)
  if not (math.isfinite(args.lat) and math.isfinite(args.lon) and abs(args.lat) <= 90 and abs(args.lon) <= 180):
    parser.error(f"coordinate out of range: ({args.lat}, {args.lon})")
  gaz = Gazetteer.load()
  print(chain_of_region(args.lat, args.lon, gaz, precision=args.precision))
  row = int(gaz.nearest_np([args.lat], [args.lon])[0])
  print(f"Continent: {gaz.continent(str(gaz.country_code[row])) or 'unknown'}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
