"""Shared fixtures: one gazetteer per test session (built once, then read from ~/.cache/geojax)."""
import pytest


@pytest.fixture(scope="session")
def gaz():
  from geojax.geo import Gazetteer
  return Gazetteer.load()
