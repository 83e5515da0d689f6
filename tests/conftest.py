"""Test session setup, done before any test module imports jax.

- 4 virtual CPU devices, so multi-device code runs in-process. XLA reads XLA_FLAGS once, when
  jax initializes its backend. Single-device code is unaffected (jit uses device 0).
- JAX's persistent compilation cache in a fresh directory of this test run and xdist worker,
  exported through the environment so that the scripts the tests run as subprocesses (vdm.main,
  the experiments) share it: the same small programs (the digits U-Net's step, its bound) are
  compiled by dozens of tests, and XLA:CPU's compilation is most of their time. A cache hit
  returns the executable XLA compiled for the same program and options; nothing a test asserts
  depends on compile time, and in-process recompilation checks use jit's own cache
  (`_cache_size`), which the persistent cache does not change. One directory per xdist worker
  (no two workers write one entry), under a root the session removes when it ends.
  VDM_TEST_COMPILATION_CACHE=0 turns it off; a JAX_COMPILATION_CACHE_DIR of your own is kept.
"""
import os
import shutil
import sys
import tempfile

_flag = "--xla_force_host_platform_device_count=4"
if _flag not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _flag).strip()

_ROOT = None   # the cache root this process made (and removes at the end of its session)
if os.environ.get("VDM_TEST_COMPILATION_CACHE", "1") != "0" and (
    "VDM_TEST_CACHE_ROOT" in os.environ or "JAX_COMPILATION_CACHE_DIR" not in os.environ):
  # The first process (pytest itself, or xdist's controller) makes the root; xdist's workers
  # inherit its environment and each takes its own directory under it.
  if "VDM_TEST_CACHE_ROOT" not in os.environ:
    _ROOT = tempfile.mkdtemp(prefix="vdm-test-jax-cache-")
    os.environ["VDM_TEST_CACHE_ROOT"] = _ROOT
  _dir = os.path.join(os.environ["VDM_TEST_CACHE_ROOT"],
                      os.environ.get("PYTEST_XDIST_WORKER", "main"))
  os.makedirs(_dir, exist_ok=True)
  os.environ.update({"JAX_COMPILATION_CACHE_DIR": _dir,
                     "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
                     "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"})
  if "jax" in sys.modules:  # imported before this file (a plugin): set it in-process too
    import jax
    jax.config.update("jax_compilation_cache_dir", _dir)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def pytest_sessionfinish(session, exitstatus):
  del session, exitstatus
  if _ROOT is not None:
    shutil.rmtree(_ROOT, ignore_errors=True)
