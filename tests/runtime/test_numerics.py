"""XLA:CPU flags pinned by the entry points (geojax.runtime.numerics): added once, never over the user's own."""
from unittest import mock

from geojax.runtime import numerics


def test_pins_the_isa_and_turns_ynnpack_fusions_off():
  env = {}
  with mock.patch.object(numerics, "_x86", return_value=True):
    added = numerics.pin_cpu_numerics(env)
    assert added == ["--xla_cpu_max_isa=AVX2", "--xla_cpu_experimental_ynn_fusion_type="]
    assert env["XLA_FLAGS"] == "--xla_cpu_max_isa=AVX2 --xla_cpu_experimental_ynn_fusion_type="
    assert numerics.pin_cpu_numerics(env) == [] and env["XLA_FLAGS"].count("max_isa") == 1  # idempotent


def test_keeps_the_users_flags():
  env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8 --xla_cpu_max_isa=AVX512"}
  with mock.patch.object(numerics, "_x86", return_value=True):
    assert numerics.pin_cpu_numerics(env) == ["--xla_cpu_experimental_ynn_fusion_type="]
  assert env["XLA_FLAGS"] == ("--xla_force_host_platform_device_count=8 --xla_cpu_max_isa=AVX512 "
                              "--xla_cpu_experimental_ynn_fusion_type=")


def test_no_isa_names_off_x86():
  env = {}
  with mock.patch.object(numerics, "_x86", return_value=False):
    assert numerics.pin_cpu_numerics(env) == ["--xla_cpu_experimental_ynn_fusion_type="]
