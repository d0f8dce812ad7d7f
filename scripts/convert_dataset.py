"""Converts a dataset to geojax ArrayRecord shards; same as `python -m geojax.data.convert` (see --help)."""
import sys

from geojax.data.convert import main

if __name__ == "__main__":
  sys.exit(main())
