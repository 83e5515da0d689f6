"""Devices and compilation: the device layout, pmap (compiled ahead of time with XLA options),
replication of host trees onto the devices and back."""
from __future__ import annotations

import dataclasses
from typing import Union

from absl import logging
import jax
import numpy as np

from vdm import checks, xla_options
from vdm.xla_options import xla_compiler_options

AXIS = "batch"
COMPILER_OPTIONS = ("auto", "probe", "none")


@dataclasses.dataclass(frozen=True)
class Probe:
  """Compile with the option set that a measured probe finds fastest on this CPU
  (vdm.xla_options.probe_compile), for a program of `purpose` ('train' | 'eval')."""
  purpose: str


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


def compiler_options(config, purpose: str = "train") -> Union[dict, Probe]:
  """XLA compiler options for the pmapped steps (`training.compiler_options`).

  'auto': on a CPU of a vendor the table of vdm.xla_options was measured on (AMD),
  `xla_compiler_options(purpose=purpose)` (convolutions on Eigen's multi-threaded kernels
  instead of single-threaded YNNPACK; purpose 'train' for the train step, 'eval' for the
  forward-only bound and sampling programs); on other CPUs a Probe; nothing off CPU.
  'probe': a Probe on any CPU (the program's first call compiles it under each candidate set
  and keeps the fastest; cached per CPU model and program). 'none': XLA's defaults.
  """
  choice = checks.choice("training.compiler_options", config.training.compiler_options,
                         COMPILER_OPTIONS)
  if choice == "none":
    return {}
  if xla_options.wants_probe(choice):
    return Probe(purpose)
  return xla_compiler_options(purpose=purpose)


class _Pmapped:
  """jax.pmap compiled ahead of time, on its first call, with XLA compiler options (a dict, or
  a Probe: the options a measured probe on that call's arguments finds fastest)."""

  def __init__(self, fn, options: Union[dict, Probe]):
    self._fn, self._options, self._compiled = fn, options, None
    self.probe_record = None

  def __call__(self, *args):
    if self._compiled is None:
      lowered = self._fn.lower(*args)
      if isinstance(self._options, Probe):
        self._compiled, self.probe_record = xla_options.probe_compile(
            lowered, args, self._options.purpose)
        logging.info("XLA:CPU options of the %s program (%s): %s; median call s %s",
                     self._options.purpose, self.probe_record["source"],
                     self.probe_record["choice"], self.probe_record.get("median_s", "-"))
      else:
        self._compiled = lowered.compile(compiler_options=self._options)
    return self._compiled(*args)


def pmap(fn, devices, options: Union[dict, Probe, None] = None, **kwargs):
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
