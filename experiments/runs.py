"""The run layer of the paper experiments: a run is a config; train it or reuse it, restore its
EMA parameters, cache what is computed from them. One on-disk schema for every script.

A run directory DIR (the trainer's: config.json, checkpoints, eval/, metrics.jsonl) gets
DIR/experiment_run.json:

    {"schema": 1, "name": str, "fingerprint": sha256[:16] of the config's JSON,
     "state": "trained" | "diverged", "step": int | null, "train_seconds": float | null,
     "message": str (diverged runs)}

and DIR/experiment_cache.json ({"fingerprint": ..., key: JSON value, ...}) for values computed
from the trained parameters (e.g. the bound on training images), dropped when the fingerprint
differs. Directories written by the earlier per-script schemes (paper_status.json of
ddpm_paper, run_info.json of improved_ddpm and vdm_paper) are migrated on first use when they
record a finished run, and refused with a message naming the file otherwise.

Configs: `config_from_cli(cpu, full_scale_config, argv)` is the --full_scale rule every script
shares: the CPU config as given, or the full-scale config with the same --config.* overrides.
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Callable, Optional

import ml_collections
from absl import logging

from experiments import common

STATUS = "experiment_run.json"
CACHE = "experiment_cache.json"
SCHEMA = 1
LEGACY = ("paper_status.json", "run_info.json")


# ------------------------------------------------------------------------------------------
# Configs.

def fingerprint(config: ml_collections.ConfigDict) -> str:
  """sha256[:16] of the config's JSON (sorted keys): the run's identity."""
  return hashlib.sha256(config.to_json(sort_keys=True).encode()).hexdigest()[:16]


def override_keys(argv) -> list:
  """Dotted config fields given on the command line as --config.a.b=v or --config.a.b v."""
  return [a[len("--config."):].split("=", 1)[0] for a in argv if a.startswith("--config.")]


def config_from_cli(cpu: ml_collections.ConfigDict, full_scale: Optional[Callable], argv
                    ) -> ml_collections.ConfigDict:
  """A copy of `cpu` (the --config, overrides applied), or with full_scale (a function
  returning the full-scale config) that config with every --config.* field named in argv
  copied over from `cpu`, which already holds the command-line values."""
  if full_scale is None:
    return ml_collections.ConfigDict(cpu.to_dict())
  config = full_scale()
  for key in override_keys(argv):
    *parents, leaf = key.split(".")
    src, dst = cpu, config
    for p in parents:
      src, dst = src[p], dst[p]
    dst[leaf] = src[leaf]
  return config


def legacy_dir(root: str, name: str, config) -> str:
  """Where improved_ddpm and vdm_paper kept a run before this module (sha1[:8] names)."""
  text = json.dumps(config.to_dict(), sort_keys=True, default=str)
  return os.path.join(root, f"{name}-{hashlib.sha1(text.encode()).hexdigest()[:8]}")


def run_dir(root: str, name: str, config, legacy: tuple = ()) -> str:
  """root/<name>-<fingerprint>: a changed config trains in a new directory. A run directory
  at one of the `legacy` paths (an earlier script's layout) is moved here on first use."""
  path = os.path.join(root, f"{name}-{fingerprint(config)}")
  if not os.path.exists(path):
    for old in legacy:
      if os.path.isdir(old):
        os.makedirs(root, exist_ok=True)
        os.rename(old, path)
        logging.info("run %s: moved %s (an earlier layout) to %s", name, old, path)
        break
  return path


# ------------------------------------------------------------------------------------------
# JSON files, written atomically.

def read_json(path: str):
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def write_json(path: str, obj) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=1)
  os.replace(tmp, path)


# ------------------------------------------------------------------------------------------
# One run.

class Run:
  """One training run of an experiment: train or reuse, its bound, its parameters, a cache."""

  def __init__(self, name: str, config, workdir: str, dataset=None):
    self.name, self.config, self.workdir, self.dataset = name, config, workdir, dataset
    self.fingerprint = fingerprint(config)
    self.status_path = os.path.join(workdir, STATUS)
    self.cache_path = os.path.join(workdir, CACHE)
    self.num_steps = int(config.training.num_steps)
    self.bound_path = os.path.join(workdir, "eval", f"bound_{self.num_steps}.json")
    self._ema = None
    self._setup = None

  @classmethod
  def under(cls, root: str, name: str, config, dataset=None) -> "Run":
    """The run in root/<name>-<fingerprint> (`run_dir`; a directory of the earlier sha1-named
    layout of improved_ddpm and vdm_paper is moved there)."""
    legacy = (legacy_dir(root, name, config),)
    return cls(name, config, run_dir(root, name, config, legacy=legacy), dataset)

  # -- status -------------------------------------------------------------------------------
  def _status(self) -> Optional[dict]:
    status = read_json(self.status_path)
    if status is None:
      status = self._migrate()
    if status is None:
      return None
    if status.get("schema") != SCHEMA:
      raise ValueError(f"{self.status_path}: schema {status.get('schema')!r}, this code reads "
                       f"{SCHEMA}; delete the directory or pass another --workdir_root")
    if status["fingerprint"] != self.fingerprint:
      raise ValueError(f"{self.workdir} holds a run with a different config (fingerprint "
                       f"{status['fingerprint']} != {self.fingerprint}): pass another "
                       f"--workdir_root or delete that directory")
    return status

  def _migrate(self) -> Optional[dict]:
    """The status from an earlier script's file (finished or diverged runs only), or None."""
    for name in LEGACY:
      path = os.path.join(self.workdir, name)
      old = read_json(path)
      if old is None:
        continue
      fp = old.get("fingerprint")
      if fp is not None and fp != self.fingerprint:
        raise ValueError(f"{path} (an earlier experiment script's record) describes a run "
                         f"with another config (fingerprint {fp}): pass another "
                         f"--workdir_root or delete that directory")
      diverged = old.get("state") == "diverged" or old.get("status") == "diverged"
      if not diverged and not os.path.exists(self.bound_path):
        raise ValueError(f"{path}: a run directory of an earlier experiment script whose run "
                         f"did not finish (no {self.bound_path}); delete the directory to "
                         f"train it again")
      status = {"schema": SCHEMA, "name": self.name, "fingerprint": self.fingerprint,
                "state": "diverged" if diverged else "trained",
                "step": None if diverged else self.num_steps,
                "train_seconds": old.get("train_seconds", old.get("seconds"))}
      if diverged:
        status["message"] = old.get("message", old.get("error", "non-finite loss"))
      write_json(self.status_path, status)
      logging.info("run %s: migrated %s to %s", self.name, path, self.status_path)
      return status
    return None

  def ensure_trained(self) -> dict:
    """Train (resuming) unless the run finished or diverged before; returns the status, with
    trained_now=True when this call trained. A diverged run (train.NonFiniteLossError) is
    recorded as such and not retried."""
    from vdm import train
    status = self._status()
    if status is not None and (status["state"] == "diverged" or os.path.exists(self.bound_path)):
      logging.info("run %s: reusing (%s)", self.name, status["state"])
      return dict(status, trained_now=False)
    status = {"schema": SCHEMA, "name": self.name, "fingerprint": self.fingerprint}
    timer = common.Timer()
    logging.info("run %s: training in %s", self.name, self.workdir)
    try:
      result = train.train_and_evaluate(self.config, self.workdir, dataset=self.dataset)
      self._ema = result.state.ema_params
      status.update(state="trained", step=int(result.state.step))
    except train.NonFiniteLossError as e:
      logging.warning("run %s diverged: %s", self.name, e)
      status.update(state="diverged", step=None, message=str(e))
    if status["state"] == "trained" and not os.path.exists(self.bound_path):
      raise RuntimeError(f"run {self.name}: training ended without {self.bound_path} "
                         f"(interrupted?): rerun to resume")
    status["train_seconds"] = timer.seconds
    write_json(self.status_path, status)
    return dict(status, trained_now=True)

  # -- what the run produced ----------------------------------------------------------------
  def bound(self) -> dict:
    """The trainer's final held-out bound record (summary, terms, ...)."""
    record = read_json(self.bound_path)
    if record is None:
      raise FileNotFoundError(f"no final bound {self.bound_path}: the run did not finish")
    return record

  def train_metrics(self) -> list:
    """Rows of metrics.jsonl with split == 'train', one per step (the last write wins)."""
    from vdm import reporting
    if not os.path.exists(os.path.join(self.workdir, "metrics.jsonl")):
      return []
    rows = {r["step"]: r for r in reporting.read_metrics(self.workdir)
            if r.get("split") == "train"}
    return [rows[s] for s in sorted(rows)]

  def setup(self):
    """The checked run (vdm.train.setup) of this config."""
    if self._setup is None:
      from vdm import train
      self._setup = train.setup(self.config, self.dataset)
    return self._setup

  def ema_params(self):
    if self._ema is None:
      from vdm import train
      self._ema = train.restore(self.config, self.workdir, dataset=self.dataset)
    return self._ema

  # -- evaluations of the trained parameters, cached ------------------------------------------
  def train_bound(self, indices) -> dict:
    """The full bound (bits/dim, EMA parameters) on dataset.train[indices]: {num_examples,
    summary, seconds}, cached per set of indices."""
    import numpy as np
    from vdm import random_streams as streams
    from vdm import reporting, train
    indices = np.asarray(indices)

    def compute():
      timer = common.Timer()
      bound = train.bound_on(self.setup(), self.ema_params(), self.dataset.train[indices],
                             streams.eval_key(self.config.seed, self.num_steps))
      return {"num_examples": int(len(indices)), "summary": reporting.bound_summary(bound),
              "seconds": timer.seconds}

    key = f"train_bound_{len(indices)}_{hashlib.sha256(indices.tobytes()).hexdigest()[:8]}"
    return self.cached(key, compute)

  def samples(self, n: int, batch_size: int) -> tuple:
    """(uint8 levels [n, *data shape], info) by ancestral sampling with the EMA parameters;
    the levels are cached in DIR/paper_samples_<n>.npy (and a grid of 64 in DIR/samples/).
    info: num, nonfinite_fraction, out_of_range_fraction (of the model-scale values), seconds."""
    import numpy as np
    from experiments import frechet
    from vdm import random_streams as streams
    from vdm import reporting, train
    path = os.path.join(self.workdir, f"paper_samples_{n}.npy")

    def compute():
      timer = common.Timer()
      run = self.setup()
      x = np.asarray(train.draw_samples(
          run, train.replicate(self.ema_params(), run.devices),
          streams.samples_key(self.config.seed, self.num_steps), n, batch_size=batch_size),
          np.float64)
      K = self.dataset.num_levels
      info = {"num": n, "nonfinite_fraction": float(np.mean(~np.isfinite(x))),
              "out_of_range_fraction": float(np.mean(np.abs(np.nan_to_num(x, nan=9.0))
                                                     > 1.0 + 1e-6)),
              "seconds": timer.seconds}
      np.save(path, frechet.quantize_samples(x, K))
      reporting.write_sample_grid(os.path.join(self.workdir, "samples", "paper_samples.png"),
                                  np.nan_to_num(x[:64]), K)
      return info

    info = self.cached(f"samples_{n}", compute, valid=lambda _: os.path.exists(path))
    return np.load(path), info

  # -- cache --------------------------------------------------------------------------------
  def cached(self, key: str, compute: Callable[[], object],
             valid: Callable[[object], bool] = lambda value: True):
    """compute()'s JSON-able value, stored in DIR/experiment_cache.json under key (computed
    once per config fingerprint, or again when valid(stored value) is False, e.g. a file it
    names is gone)."""
    cache = read_json(self.cache_path) or {}
    if cache.get("fingerprint") != self.fingerprint:
      cache = {"fingerprint": self.fingerprint}
    if key not in cache or not valid(cache[key]):
      cache[key] = compute()
      write_json(self.cache_path, cache)
    return cache[key]
