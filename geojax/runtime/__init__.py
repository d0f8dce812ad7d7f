"""Run-time services for the entry points: processes and mesh, checkpoints, metrics, progress, failure guards,
the host allocator.

Nothing here knows about models or rewards; `geojax.train`, `geojax.eval` and `geojax.export` compose these.
"""
from geojax.runtime.checkpoint import Checkpointer
from geojax.runtime.distributed import (from_process_rows, gather_rows, gather_strings, host_device, initialize,
                                        make_mesh, place, process_rows, put_global, split_devices, to_host)
from geojax.runtime.guard import NonFiniteError, check_finite
from geojax.runtime.host_memory import keep_freed_memory, only_cpu_possible
from geojax.runtime.metrics import MetricWriter, progress

__all__ = ["Checkpointer", "MetricWriter", "NonFiniteError", "check_finite", "from_process_rows", "gather_rows",
           "gather_strings", "host_device", "initialize", "keep_freed_memory", "make_mesh", "only_cpu_possible",
           "place", "process_rows", "progress", "put_global", "split_devices", "to_host"]
