"""geojax.sft (being built)."""
