"""geojax.geo: distances, the GeoNames gazetteer (exact jnp nearest city, name resolution), Chain of Region,
answer parsers, rewards of Geo-R and GLOBE, and evaluation metrics."""
from geojax.geo.chain import DEFAULT_TEMPLATE, ChainOfRegion, chain_of_region, format_chain, parse_chain
from geojax.geo.distance import EARTH_RADIUS_KM, haversine_km, haversine_km_np
from geojax.geo.gazetteer import Gazetteer
from geojax.geo.metrics import GeoMetrics, format_table, level_matches
from geojax.geo.parse import FORMATS, ParsedAnswers, parse_answers
from geojax.geo.rewards import (REWARDS, GeoTargets, globe_name_match, piecewise_distance_reward, reward_batch,
                                score, visual_fraction)

__all__ = [
  "DEFAULT_TEMPLATE", "ChainOfRegion", "chain_of_region", "format_chain", "parse_chain",
  "EARTH_RADIUS_KM", "haversine_km", "haversine_km_np", "Gazetteer",
  "GeoMetrics", "format_table", "level_matches", "FORMATS", "ParsedAnswers", "parse_answers",
  "REWARDS", "GeoTargets", "globe_name_match", "piecewise_distance_reward", "reward_batch", "score",
  "visual_fraction",
]
