"""One process of the multi-host equivalence test (run as a subprocess; see test_multihost.py).

  python multihost_driver.py PROCESS_ID NUM_PROCESSES DEVICES_PER_PROCESS PORT WORKDIR DATA_DIR

The reward is replaced by one that random-init completions already earn (the share of digit characters), so that
GRPO's advantages and losses are not all zero in a few steps.
"""
import os
import sys

process_id, num_processes, devices, port, workdir, data_dir = sys.argv[1:7]
os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
os.environ["JAX_PLATFORMS"] = "cpu"
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")
if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
  jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])

from geojax import train  # noqa: E402
from tests.train.helpers import tiny_config  # noqa: E402


def digit_share(texts, batch, group):
  del batch, group
  return np.array([sum(ch.isdigit() for ch in t) / max(len(t), 1) for t in texts], np.float32)


extra = {"stages": ("sft", "grpo"), "sft.steps": 2, "grpo.steps": 3, "grpo.batch_size": 2, "grpo.group_size": 4,
         "checkpoint.every": 10, "eval.at_stage_end": True}
if int(num_processes) > 1:
  extra.update({"runtime.distributed": "on", "runtime.coordinator_address": f"127.0.0.1:{port}",
                "runtime.num_processes": int(num_processes), "runtime.process_id": int(process_id)})
else:
  extra["runtime.distributed"] = "off"
train.train(tiny_config(workdir, data_dir, **extra), rewards=digit_share)
print(f"process {process_id}: devices {jax.device_count()} local {jax.local_device_count()}", flush=True)
