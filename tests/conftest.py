"""Test session setup, done before any test module imports jax.

- 4 virtual CPU devices, so multi-device code runs in-process. XLA reads XLA_FLAGS once, when
  jax initializes its backend. Single-device code is unaffected (jit uses device 0).
- JAX's persistent compilation cache in a fresh directory of this test run and xdist worker,
  exported through the environment so that the scripts the tests run as subprocesses (vdm.main,
  the experiments) share it: the same small programs (the digits U-Net's step, its bound) are
  compiled by dozens of tests, and XLA:CPU's compilation is most of their time. A cache hit
  returns the executable XLA compiled for the same program and options; nothing a test asserts
  depends on compile time, and in-process recompilation checks use jit's own cache
  (`_cache_size`), which the persistent cache does not change. One directory per worker: no two
  workers write one entry. The directory is removed when the worker's session ends.
  VDM_TEST_COMPILATION_CACHE=0 turns it off.
"""
import os
import shutil
import sys
import tempfile

_flag = "--xla_force_host_platform_device_count=4"
if _flag not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _flag).strip()

_CACHE_DIR = None
if os.environ.get("VDM_TEST_COMPILATION_CACHE", "1") != "0" \
    and "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _CACHE_DIR = tempfile.mkdtemp(
      prefix=f"vdm-test-jax-cache-{os.environ.get('PYTEST_XDIST_WORKER', 'main')}-")
  os.environ.update({"JAX_COMPILATION_CACHE_DIR": _CACHE_DIR,
                     "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
                     "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"})
  if "jax" in sys.modules:  # imported before this file (a plugin): set it in-process too
    import jax
    jax.config.update("jax_compilation_cache_dir", _CACHE_DIR)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def pytest_sessionfinish(session, exitstatus):
  del session, exitstatus
  if _CACHE_DIR is not None:
    shutil.rmtree(_CACHE_DIR, ignore_errors=True)
