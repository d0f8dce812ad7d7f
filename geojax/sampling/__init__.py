"""geojax.sampling (being built)."""
