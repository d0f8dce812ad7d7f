"""geojax.rl (being built)."""
