"""geojax.geo (being built)."""
