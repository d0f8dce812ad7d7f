"""Which kind of chip a program is being built for: "tpu", "gpu" or "cpu".

Some choices depend on it (the attention backend; on CPU, the LM head's vocabulary blocks).
geojax.plan builds TPU programs in a CPU process, so the answer comes from the mesh's devices when one is set, not
from the host.
"""
from __future__ import annotations

import jax


def device_platform(device) -> str:
  """"tpu", "gpu" or "cpu" for a device (or an abstract one)."""
  return "gpu" if device.platform in ("cuda", "rocm", "gpu") else device.platform


def current_platform() -> str:
  """"tpu", "gpu" or "cpu": the devices of the current mesh if one is set, else JAX's default backend."""
  mesh = jax.sharding.get_abstract_mesh()
  device = None if mesh.empty else getattr(mesh, "abstract_device", None)
  if device is not None:
    return device_platform(device)
  return "gpu" if jax.default_backend() in ("cuda", "rocm", "gpu") else jax.default_backend()
