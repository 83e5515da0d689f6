"""Devices and compilation: the device layout, pmap (compiled ahead of time with XLA options),
replication of host trees onto the devices and back."""
from __future__ import annotations

from typing import Optional

import jax
import numpy as np

from vdm import checks
from vdm.xla_options import xla_compiler_options

AXIS = "batch"
COMPILER_OPTIONS = ("auto", "none")


def device_layout(config) -> tuple[list, int]:
  """(local devices used, per-device batch); checks the global batch divides evenly."""
  devices = jax.local_devices()
  n = config.training.num_devices or len(devices)
  if n > len(devices):
    raise ValueError(f"config field training.num_devices={n} exceeds the {len(devices)} local "
                     f"devices")
  if jax.process_count() > 1 and n != len(devices):
    raise ValueError(f"config field training.num_devices={n}: a multi-process run uses all "
                     f"{len(devices)} local devices of every process (set it to 0)")
  devices = devices[:n]
  total = n * jax.process_count()
  for field in ("training.batch_size", "eval.batch_size"):
    group, name = field.split(".")
    size = config[group][name]
    if size % total:
      raise ValueError(f"config field {field}={size} (global) must be divisible by the number "
                       f"of devices, {n} local x {jax.process_count()} processes = {total}")
  return devices, config.training.batch_size // total


def compiler_options(config, purpose: str = "train") -> dict:
  """XLA compiler options for the pmapped steps (`training.compiler_options`).

  'auto': `vdm.xla_options.xla_compiler_options(purpose=purpose)` (on CPU, convolutions on
  Eigen's multi-threaded kernels instead of single-threaded YNNPACK; purpose 'train' for the
  train step, 'eval' for the forward-only bound and sampling programs); nothing elsewhere.
  'none': XLA's defaults.
  """
  choice = checks.choice("training.compiler_options", config.training.compiler_options,
                         COMPILER_OPTIONS)
  return {} if choice == "none" else xla_compiler_options(purpose=purpose)


class _Pmapped:
  """jax.pmap compiled ahead of time, on its first call, with XLA compiler options."""

  def __init__(self, fn, options: dict):
    self._fn, self._options, self._compiled = fn, options, None

  def __call__(self, *args):
    if self._compiled is None:
      self._compiled = self._fn.lower(*args).compile(compiler_options=self._options)
    return self._compiled(*args)


def pmap(fn, devices, options: Optional[dict] = None, **kwargs):
  """jax.pmap over `devices` (a subset of the local devices) in one process; over every
  device of every process in a multi-process run (pmap's default), so that collectives such
  as the gradient pmean span all hosts. With `options`, compiled with those XLA options
  (the arguments of every call must then have the shapes of the first). Ahead-of-time
  lowering of a multi-process pmap sees global shapes but is called with local ones, so
  there the options are not applied: multi-host runs use XLA's defaults."""
  multi_process = jax.process_count() > 1
  mapped = jax.pmap(fn, axis_name=AXIS, devices=None if multi_process else devices, **kwargs)
  return _Pmapped(mapped, options) if options and not multi_process else mapped


def replicate(tree, devices):
  """One copy of every leaf per device, as a pmap output ([n_devices, ...]).

  Going through a pmapped identity gives the arrays the same sharding as the train step's
  outputs, so the step compiles once (host arrays would compile it a second time at step 2).
  """
  n = len(devices)
  stacked = jax.tree_util.tree_map(lambda a: np.broadcast_to(np.asarray(a), (n,) + np.shape(a)),
                                   tree)
  return pmap(lambda x: x, devices)(stacked)


def unreplicate(tree):
  """The first replica of every leaf, as host NumPy arrays."""
  return jax.device_get(jax.tree_util.tree_map(lambda a: a[0], tree))
