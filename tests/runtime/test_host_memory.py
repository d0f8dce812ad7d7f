"""The host allocator setting: freed large buffers are reused instead of mapped afresh (minor page faults counted by
the kernel, in a fresh process: the setting is process-wide and has no undo)."""
import json
import subprocess
import sys
from types import SimpleNamespace

import pytest

from geojax import experiment, runtime
from geojax.runtime import host_memory
from geojax.config_schema import base_config

PROBE = """
import ctypes, json, resource, sys, threading
from geojax.runtime import keep_freed_memory
took = keep_freed_memory() if sys.argv[1] == "keep" else None
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes, libc.free.argtypes = ctypes.c_void_p, (ctypes.c_size_t,), (ctypes.c_void_p,)

def faults_of_a_step(size=64 << 20):  # a buffer as XLA:CPU allocates it (malloc, no huge-page advice)
  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  buffer = libc.malloc(size)
  ctypes.memset(buffer, 1, size)  # first touch of every page
  libc.free(buffer)
  return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

def two_steps(out, size):
  faults_of_a_step(size)
  out.append(faults_of_a_step(size))

out = []
if sys.argv[2] == "thread":  # as XLA:CPU runs programs: on a thread of its own, which glibc gives an arena of its own
  worker = threading.Thread(target=two_steps, args=(out, 96 << 20))  # above an arena heap's 64 MiB
  worker.start()
  worker.join()
else:
  two_steps(out, 64 << 20)
print(json.dumps({"took": took, "faults": out[0]}))
"""


def _second_step_faults(mode: str, where: str) -> dict:
  out = subprocess.run([sys.executable, "-c", PROBE, mode, where], capture_output=True, text=True, check=True)
  return json.loads(out.stdout.splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc")
@pytest.mark.parametrize("where", ["main", "thread"])
def test_a_freed_buffer_is_reused_without_page_faults(where):
  default, kept = _second_step_faults("default", where), _second_step_faults("keep", where)
  assert kept["took"] is True
  assert default["faults"] > 10_000  # mapped afresh: a fault per 4 KiB page
  assert kept["faults"] < 100


@pytest.mark.parametrize("setting, cpu_only, expected", [
    ("auto", True, ["keep", "mesh"]),  # before the backend starts: the arena setting counts
    ("auto", False, ["mesh", "keep"]),  # an accelerator was possible: after, once the devices are known to be CPUs
    ("on", False, ["keep", "mesh"]),
    ("off", True, ["mesh"])])
def test_setup_runtime_keeps_freed_memory_on_cpu_devices_unless_off(monkeypatch, setting, cpu_only, expected):
  calls = []
  make_mesh = runtime.make_mesh
  monkeypatch.setattr(runtime, "keep_freed_memory", lambda: calls.append("keep") or True)
  monkeypatch.setattr(runtime, "only_cpu_possible", lambda: cpu_only)
  monkeypatch.setattr(runtime, "make_mesh", lambda *a: calls.append("mesh") or make_mesh(*a))
  config = base_config()
  config.runtime.keep_freed_memory, config.runtime.compilation_cache_dir = setting, ""
  experiment.setup_runtime(config)
  assert calls == expected


@pytest.mark.parametrize("platforms, expected", [("cpu", True), ("tpu,cpu", False), ("cuda", False)])
def test_only_cpu_possible_reads_jax_platforms(monkeypatch, platforms, expected):
  monkeypatch.setattr(host_memory, "jax", SimpleNamespace(config=SimpleNamespace(jax_platforms=platforms)))
  assert host_memory.only_cpu_possible() is expected
