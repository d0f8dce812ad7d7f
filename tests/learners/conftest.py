"""The learner tests' fixtures (see tests/run_fixtures.py)."""
from tests.run_fixtures import builtin_dir  # noqa: F401  (registers the fixture)
