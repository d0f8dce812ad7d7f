"""geojax.models (being built)."""
