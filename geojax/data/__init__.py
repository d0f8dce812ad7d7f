"""geojax.data (being built)."""
