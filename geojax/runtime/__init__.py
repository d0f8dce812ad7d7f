"""Run-time services for the entry points: processes and mesh, checkpoints, metrics, progress, failure guards.

Nothing here knows about models or rewards; `geojax.train`, `geojax.eval` and `geojax.export` compose these.
"""
from geojax.runtime.checkpoint import Checkpointer
from geojax.runtime.distributed import initialize, make_mesh, place, put_global, to_host
from geojax.runtime.guard import NonFiniteError, check_finite
from geojax.runtime.metrics import MetricWriter, progress

__all__ = ["Checkpointer", "MetricWriter", "NonFiniteError", "check_finite", "initialize", "make_mesh",
           "place", "progress", "put_global", "to_host"]
