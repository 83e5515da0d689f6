"""XLA compiler options by platform and purpose, for the jitted train and eval programs.

Used by vdm.train (field `training.compiler_options`) and the benchmarks. Two ways to choose:
the table below, measured on an AMD EPYC (Zen 4) in experiments/bench_train.py and
experiments/bench_bound.py, and a measured probe (`probe_compile`): compile the program itself
under each candidate option set, time a few interleaved calls, keep the fastest. The probe is
for CPUs the table was not measured on (XLA:CPU's library choices differ in speed between CPU
families); its choice is cached per CPU model, jaxlib version and program, so a program is
probed once per machine.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform as platform_lib
import time
from typing import Callable, Optional

import jax
import jaxlib

from vdm import checks

# XLA:CPU (jaxlib 0.10) sends convolutions, dots and reductions to YNNPACK by default. On the
# 2-core AVX2 machine of experiments/bench_train.py its 3x3 convolutions ran on one thread, and
# its filter gradients reached 15-50 GFLOP per CPU-second against ~80 for Eigen (forward, input
# and filter gradients alike, 32-256 channels); the CIFAR-10 U-Net's Adam step went from 6.8 to
# 4.9 CPU-seconds at batch 8 with the 'train' options, which keep YNNPACK for dots and
# reductions only. Forward-only programs (the bound, sampling) do best without YNNPACK at all:
# its reduction fusions grow around whole residual blocks, convolutions included, at larger
# batches (the small U-Net's forward pass at batch 128: 963 ms with the 'train' options, 628 ms
# without YNNPACK; equal within 2% at batch 8-64), while the gradient's many reductions still
# gain from it (the Adam step at batch 32: 516 against 781 ms).
XLA_PURPOSES = ("train", "eval")
_CPU_COMPILER_OPTIONS = {
  "train": {"xla_cpu_experimental_ynn_fusion_type":
              "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE"},
  "eval": {"xla_cpu_experimental_ynn_fusion_type": ""},
}


def xla_compiler_options(platform: Optional[str] = None, purpose: str = "train") -> dict:
  """Options for `jax.jit(f, compiler_options=...)` that make the U-Net fast on `platform`.

  Args:
   platform: 'cpu', 'gpu', 'tpu', ...; None = jax.default_backend().
   purpose: 'train' (programs that differentiate the network) or 'eval' (forward passes only:
    the bound, sampling).
  Returns:
   a new dict: the XLA:CPU options above for 'cpu', {} elsewhere.
  """
  checks.choice("purpose", purpose, XLA_PURPOSES)
  platform = jax.default_backend() if platform is None else platform
  return dict(_CPU_COMPILER_OPTIONS[purpose]) if platform == "cpu" else {}


# ------------------------------------------------------------------------------------------
# The measured probe.

# Candidate option sets of the probe, by name: the table's two sets and XLA's defaults (every
# YNNPACK fusion on). The first of each purpose is the table's choice.
CPU_CANDIDATES = {
  "train": ("ynn_dot_reduce", "ynn_off", "xla_default"),
  "eval": ("ynn_off", "ynn_dot_reduce", "xla_default"),
}
_CANDIDATE_OPTIONS = {"ynn_dot_reduce": _CPU_COMPILER_OPTIONS["train"],
                      "ynn_off": _CPU_COMPILER_OPTIONS["eval"], "xla_default": {}}
# CPUs the table was measured on (vendor_id of /proc/cpuinfo); 'auto' probes on the others.
TABLE_MEASURED_VENDORS = ("AuthenticAMD",)
# Programs cheaper than this (XLA's FLOP count of one call) are not probed: their run time is
# dominated by dispatch, and compiling them three times would cost more than it could save.
PROBE_MIN_FLOPS = 1e9


def cpu_model() -> dict:
  """{'vendor': vendor_id, 'model': model name} of this CPU from /proc/cpuinfo (Linux), else
  what `platform` knows."""
  info = {}
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        key, _, value = line.partition(":")
        key = key.strip()
        if key in ("vendor_id", "model name") and key not in info:
          info[key] = value.strip()
        if len(info) == 2:
          break
  except OSError:
    pass
  return {"vendor": info.get("vendor_id", platform_lib.machine()),
          "model": info.get("model name", platform_lib.processor() or platform_lib.machine())}


def wants_probe(choice: str, platform: Optional[str] = None) -> bool:
  """Whether `training.compiler_options` = choice ('auto' | 'probe' | 'none') probes here:
  'probe' on any CPU, 'auto' on a CPU whose vendor the table was not measured on."""
  platform = jax.default_backend() if platform is None else platform
  if platform != "cpu" or choice == "none":
    return False
  return choice == "probe" or cpu_model()["vendor"] not in TABLE_MEASURED_VENDORS


def default_cache_path() -> str:
  """$VDM_CACHE_DIR or $XDG_CACHE_HOME/vdm or ~/.cache/vdm, then xla_cpu_probe.json."""
  root = os.environ.get("VDM_CACHE_DIR") or os.path.join(
      os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"),
      "vdm")
  return os.path.join(root, "xla_cpu_probe.json")


def _read_cache(path: str) -> dict:
  try:
    with open(path) as f:
      cache = json.load(f)
    return cache if isinstance(cache, dict) else {}
  except (OSError, ValueError):
    return {}   # absent or unreadable: probe again (the cache only saves time)


def _write_cache(path: str, key: str, entry: dict) -> None:
  """Adds entry under key; atomic (a reader never sees a half-written file)."""
  try:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    cache = _read_cache(path)
    cache[key] = entry
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
      json.dump(cache, f, indent=1, sort_keys=True)
    os.replace(tmp, path)
  except OSError:
    pass   # a read-only home: the choice is simply not remembered


def probe_key(lowered, purpose: str) -> str:
  """The cache key of a program: CPU model, jaxlib version, purpose and the program's text."""
  cpu = cpu_model()
  text = "\n".join([cpu["vendor"], cpu["model"], jaxlib.__version__, purpose, lowered.as_text()])
  return hashlib.sha256(text.encode()).hexdigest()[:24]


def _flops(lowered) -> Optional[float]:
  try:
    cost = lowered.cost_analysis()
  except Exception:   # not every backend or program has an analysis; then probe anyway
    return None
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost["flops"]) if cost and "flops" in cost else None


def time_call(compiled, args: tuple) -> float:
  """Wall seconds of one call of `compiled` on fresh copies of args, to its results' readiness."""
  fresh = _copies(args)
  t0 = time.perf_counter()
  jax.block_until_ready(compiled(*fresh))
  return time.perf_counter() - t0


def probe_compile(lowered, args: tuple, purpose: str = "train", reps: int = 3,
                  cache_path: Optional[str] = None,
                  timing: Callable[[object, tuple], float] = time_call,
                  min_flops: Optional[float] = None):
  """Compile `lowered` (a jax Lowered) with the fastest XLA:CPU option set for this CPU.

  Every candidate of CPU_CANDIDATES[purpose] is compiled, called once to warm up, then timed
  `reps` rounds by timing(compiled, args) (default time_call, on copies of `args`, so that
  buffers the program donates survive for the caller), the candidates interleaved within each
  round so that drift of the machine's speed hits all alike; the smallest median time wins
  (ties: the earlier candidate, the table's choice first). The choice is cached (cache_path;
  default default_cache_path()) under probe_key, and a cached program compiles only its
  choice. A program of fewer than min_flops (default PROBE_MIN_FLOPS) FLOPs per call compiles
  with the table's options, unprobed.

  Returns:
   (compiled, record): record has 'choice' (a candidate name), 'options' (its dict), 'source'
   ('probe' | 'cache' | 'table: below min_flops'), and for a probe 'median_s' and 'compile_s'
   per candidate.
  """
  checks.choice("purpose", purpose, XLA_PURPOSES)
  checks.positive_int("reps", reps)
  names = CPU_CANDIDATES[purpose]
  flops = _flops(lowered)
  if flops is not None and flops < (PROBE_MIN_FLOPS if min_flops is None else min_flops):
    options = dict(_CANDIDATE_OPTIONS[names[0]])
    return lowered.compile(compiler_options=options), {
        "choice": names[0], "options": options, "source": "table: below min_flops",
        "flops": flops}
  path = cache_path or default_cache_path()
  key = probe_key(lowered, purpose)
  cached = _read_cache(path).get(key)
  if isinstance(cached, dict) and cached.get("choice") in names:
    options = dict(_CANDIDATE_OPTIONS[cached["choice"]])
    return lowered.compile(compiler_options=options), {**cached, "options": options,
                                                       "source": "cache"}
  compiled, compile_s, times = {}, {}, {name: [] for name in names}
  for name in names:
    t0 = time.perf_counter()
    compiled[name] = lowered.compile(compiler_options=dict(_CANDIDATE_OPTIONS[name]))
    compile_s[name] = time.perf_counter() - t0
    time_call(compiled[name], args)   # warm-up, untimed
  for _ in range(reps):
    for name in names:
      times[name].append(timing(compiled[name], args))
  median = {name: sorted(ts)[len(ts) // 2] for name, ts in times.items()}
  choice = min(names, key=median.get)
  entry = {"choice": choice, "median_s": median, "compile_s": compile_s, "cpu": cpu_model(),
           "jaxlib": jaxlib.__version__, "purpose": purpose, "flops": flops}
  _write_cache(path, key, entry)
  return compiled[choice], {**entry, "options": dict(_CANDIDATE_OPTIONS[choice]),
                            "source": "probe"}


def _copies(args: tuple) -> tuple:
  """Fresh device copies of every array leaf (a donating program may consume its inputs)."""
  return jax.tree_util.tree_map(lambda a: a.copy() if isinstance(a, jax.Array) else a, args)
