"""Test session setup: 4 virtual CPU devices, so multi-device code runs in-process.

XLA reads XLA_FLAGS once, when jax initializes its backend, so this must run before any test
module imports jax. Single-device code is unaffected (jit uses device 0).
"""
import os

_flag = "--xla_force_host_platform_device_count=4"
if _flag not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _flag).strip()
