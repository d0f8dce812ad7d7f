"""Test-wide settings: offline hubs, 8 host CPU devices for sharding tests, deterministic float32 matmuls."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402  (after the environment above)

jax.config.update("jax_default_matmul_precision", "highest")
