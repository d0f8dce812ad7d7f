"""python -m geojax.geo LAT LON: the Chain of Region and continent of a coordinate, the distance to the city it
names, and flags for points far from any city or at sea.

The named city is the nearest gazetteer city in degrees: latitude and longitude taken as plane coordinates, without
wrap-around at 180 degrees. That is reverse_geocoder's metric, which geojax's labels mirror (see
geojax.geo.spatial_index). Near cities it agrees with the great circle; far from them it can name a city thousands
of km away (-90 0 gives Grytviken, 3,972 km; McMurdo Station is 1,351 km), so the distance is printed, and the
nearest city on the sphere (a float64 search over all cities) when it is another one. At sea, the country and state
are still the nearest city's; the point is flagged by global-land-mask's mask in the built-in dataset's rasters.
"""
import argparse
import math
import sys

import numpy as np

from geojax.geo.chain import DEFAULT_PRECISION, chain_of_region
from geojax.geo.distance import haversine_km_np
from geojax.geo.gazetteer import Gazetteer


def at_sea(gaz: Gazetteer, lat: float, lon: float) -> bool:
  """Whether global-land-mask puts the point at sea, in the built-in dataset's land raster (geojax.data.render:
  0.05-degree cells by majority vote, so atolls are sea; built once, ~30 s, then cached)."""
  from geojax.data import render
  cities = render.CityTable(lat=np.asarray(gaz.lat, np.float64), lon=np.asarray(gaz.lon, np.float64),
                            name=gaz.name, admin1=gaz.admin1, country_code=gaz.country_code,
                            prominence=gaz.prominence)
  rasters = render.world_rasters(cities)
  height, width = rasters.land.shape
  row = min(max(int((90.0 - lat) / render.RASTER_RES_DEG), 0), height - 1)
  col = int((lon + 180.0) / render.RASTER_RES_DEG) % width
  return not rasters.land[row, col]


def _place(gaz: Gazetteer, row: int) -> str:
  return f"{gaz.name[row]}, {gaz.country_name(str(gaz.country_code[row]))}"


def describe(lat: float, lon: float, gaz: Gazetteer, far_km: float = 500.0,
             precision: int = DEFAULT_PRECISION) -> list[str]:
  """The lines the CLI prints for one coordinate."""
  row = int(gaz.nearest_np([lat], [lon])[0])
  lines = [chain_of_region(lat, lon, gaz, precision=precision),
           f"Continent: {gaz.continent(str(gaz.country_code[row])) or 'unknown'}"]
  km = float(haversine_km_np(lat, lon, gaz.lat[row], gaz.lon[row]))
  lines.append(f"Named city: {_place(gaz, row)}, {km:.1f} km away")
  all_km = haversine_km_np(lat, lon, gaz.lat, gaz.lon)
  nearest = int(np.argmin(all_km))
  nearer = ""
  if gaz.city_key[nearest] != gaz.city_key[row] and all_km[nearest] < km:
    nearer = (f"nearest on the sphere: {_place(gaz, nearest)}, {all_km[nearest]:.1f} km away "
              "(the chain names the nearest in degrees)")
  if all_km[nearest] > far_km:
    lines.append(f"Far from any city: none within {far_km:g} km" + (f"; {nearer}" if nearer else ""))
  elif nearer:
    lines.append(nearer[0].upper() + nearer[1:])
  if at_sea(gaz, lat, lon):
    lines.append("At sea (land mask): the country and state above are the named city's")
  return lines


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m geojax.geo", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("lat", type=float, help="latitude in degrees, -90..90")
  parser.add_argument("lon", type=float, help="longitude in degrees, -180..180")
  parser.add_argument("--precision", type=int, default=DEFAULT_PRECISION, help="decimals of the coordinate")
  parser.add_argument("--far_km", type=float, default=500.0,
                      help="flag points with no city within this great-circle distance (default 500)")
  args = parser.parse_args(argv)
  if not (math.isfinite(args.lat) and math.isfinite(args.lon) and abs(args.lat) <= 90 and abs(args.lon) <= 180):
    parser.error(f"coordinate out of range: ({args.lat}, {args.lon})")
  print("\n".join(describe(args.lat, args.lon, Gazetteer.load(), args.far_km, args.precision)))
  return 0


if __name__ == "__main__":
  sys.exit(main())
