"""The environment of the tests that run a script as a user types it, in a subprocess."""
import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Tiny programs, so compilation dominates: compile without XLA's expensive optimizations
# (halves the CPU time of the smoke runs; the tests check relations, not optimized kernels).
FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"


def fast_compile_env(**extra) -> dict:
  """os.environ for a script run: one CPU device (conftest's four virtual devices are for the
  in-process tests), fast compilation, the repository importable; plus `extra`."""
  return dict(os.environ, XLA_FLAGS=FAST_COMPILE, PYTHONPATH=REPO, **extra)
