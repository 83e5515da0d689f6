"""A run directory that cannot be silently damaged: the stored config, a lock, writability.

- DIR/config.json is the config the run was started with. It is written once and never
  overwritten; a later start compares the new config with it and refuses, listing every
  differing field, unless each difference is in a field that may change on resume
  (`RESUMABLE_FIELDS`) or the caller allows the change deliberately (--allow_config_change).
- DIR/run.json describes what the config does not: the data (name, shapes, levels, a digest of
  the arrays) and the denoiser (its repr), and is compared the same way.
- DIR/lock holds the pid and host of the process training in DIR; a second run is refused,
  and a lock whose process is gone (same host) is taken over with a warning.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import tempfile
import time

import numpy as np
from absl import logging

# Fields that may differ from the stored config when a run resumes or is evaluated: the length
# of training, the schedule of logs/evals/saves, evaluation and sampling sizes, devices and
# compilation, and where the data files are. Everything else changes what is trained.
RESUMABLE_FIELDS = (
    "training.num_steps", "training.steps_per_log", "training.steps_per_eval",
    "training.steps_per_save", "training.keep_checkpoints", "training.keep_period",
    "training.num_devices", "training.compiler_options", "training.unroll_substeps",
    "eval.batch_size", "eval.num_examples", "eval.num_samples", "eval.at_start",
    "data.data_dir", "data.tfds_data_dir",
)
# Config groups that never change training (every field in them may change on resume).
RESUMABLE_GROUPS = ("likelihood", "coding")
# Fields that only change how a trained model is evaluated: the read-only modes (eval, bpd,
# sample, restore) accept them changed; a resumed training run does not (its evals would mix).
EVAL_ONLY_FIELDS = ("diffusion.clip_bound",)


class RunDirError(RuntimeError):
  """The run directory cannot be used as asked (locked, config changed, not writable)."""


def flatten(tree: dict, prefix: str = "") -> dict:
  """{'a': {'b': 1}} -> {'a.b': 1}; lists and tuples compare as lists."""
  out = {}
  for k, v in tree.items():
    name = f"{prefix}{k}"
    if isinstance(v, dict):
      out.update(flatten(v, name + "."))
    else:
      out[name] = list(v) if isinstance(v, tuple) else v
  return out


def config_as_json(config) -> dict:
  """The config as plain JSON values (what config.json holds)."""
  return json.loads(config.to_json_best_effort())


def differences(stored: dict, new: dict) -> list:
  """[(field, stored value, new value)] for every field that differs (missing = '<absent>')."""
  a, b = flatten(stored), flatten(new)
  out = []
  for key in sorted(set(a) | set(b)):
    va, vb = a.get(key, "<absent>"), b.get(key, "<absent>")
    if va != vb:
      out.append((key, va, vb))
  return out


def write_json_atomic(path: str, obj) -> None:
  d = os.path.dirname(path)
  fd, tmp = tempfile.mkstemp(dir=d, prefix=".tmp-", suffix=".json")
  with os.fdopen(fd, "w") as f:
    json.dump(obj, f, indent=2, sort_keys=True)
    f.write("\n")
  os.replace(tmp, path)


def read_json(path: str):
  with open(path) as f:
    return json.load(f)


def check_or_store(workdir: str, name: str, record: dict, allow_change: bool,
                   resumable: tuple = (), write: bool = True, compare=None) -> None:
  """Compare `record` with DIR/<name> (refusing on a difference), or store it if absent.

  Args:
    name: 'config.json' or 'run.json'.
    record: the JSON-able description of the new run.
    allow_change: accept any difference (logged as a warning); the stored file is kept.
    resumable: fields allowed to differ silently.
    write: store the record when the file is absent (process 0 of a training run).
    compare: maps a record to the flat dict of fields compared (default: all, flattened).
  """
  compare = compare or flatten
  path = os.path.join(workdir, name)
  if not os.path.exists(path):
    if write:
      write_json_atomic(path, record)
    return
  try:
    stored = read_json(path)
  except (OSError, ValueError) as e:
    raise RunDirError(f"{path} cannot be read ({e}); it records how this run was started. "
                      f"Restore it, or start the run in a new --workdir") from None
  diffs = [d for d in differences(compare(stored), compare(record))
           if d[0] not in resumable and d[0].split(".")[0] not in RESUMABLE_GROUPS]
  if not diffs:
    return
  lines = "\n".join(f"  {k}: stored {a!r}, now {b!r}" for k, a, b in diffs)
  if allow_change:
    logging.warning("%s: continuing with %d changed fields (allowed by the caller); %s is "
                    "kept as the run was started:\n%s", workdir, len(diffs), name, lines)
    return
  raise RunDirError(
      f"{workdir} holds a run started with other settings ({name}); {len(diffs)} fields "
      f"differ:\n{lines}\nUse a new --workdir, set them back, or pass --allow_config_change "
      f"(train_and_evaluate(..., allow_config_change=True)) to change them deliberately. "
      f"Fields that may change freely: {', '.join(resumable) or 'none'}.")


def data_record(dataset) -> dict:
  """What run.json records of the data: enough to notice other data in the same workdir."""
  h = hashlib.sha256()
  for a in (dataset.train, dataset.test):
    a = np.ascontiguousarray(a)
    h.update(f"{a.dtype.str}{a.shape}".encode())
    h.update(a.tobytes())
  return {"name": dataset.name, "shape": list(dataset.shape), "num_levels": dataset.num_levels,
          "num_train": int(len(dataset.train)), "num_test": int(len(dataset.test)),
          "sha256": h.hexdigest()}


def run_record(dataset, objective) -> dict:
  return {"data": data_record(dataset), "denoiser": repr(objective.net),
          "objective": type(objective).__name__}


def check_writable(workdir: str) -> None:
  """Raise before any compute if files cannot be created in workdir (created if absent)."""
  try:
    os.makedirs(workdir, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=workdir, prefix=".write-test-"):
      pass
  except OSError as e:
    raise RunDirError(f"--workdir {workdir} is not writable ({e.strerror}); results could not "
                      f"be saved. Use a writable directory (copy the run there).") from None


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


@contextlib.contextmanager
def lock(workdir: str, enabled: bool = True):
  """Hold DIR/lock for the duration (pid, host, start time). Refuses a second holder."""
  if not enabled:
    yield
    return
  path = os.path.join(workdir, "lock")
  me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
  for _ in range(2):
    try:
      fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
      try:
        holder = read_json(path)
      except (OSError, ValueError):
        holder = {}
      pid, host = holder.get("pid"), holder.get("host")
      if host == me["host"] and isinstance(pid, int) and not _pid_alive(pid):
        logging.warning("%s: taking over the stale lock of process %d (no longer running)",
                        path, pid)
        os.remove(path)
        continue
      since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("started", 0)))
      raise RunDirError(
          f"{workdir} is in use by another run (process {pid} on host {host}, since {since}: "
          f"{path}). Wait for it to finish, or, if no such process is running, delete "
          f"{path}.") from None
    with os.fdopen(fd, "w") as f:
      json.dump(me, f)
    break
  try:
    yield
  finally:
    with contextlib.suppress(OSError):
      if read_json(path).get("pid") == me["pid"]:
        os.remove(path)


def check_run(workdir: str, run, allow_change: bool, write: bool = True) -> None:
  """config.json and run.json of workdir against this run (module docstring); before anything
  is restored or written."""
  check_or_store(workdir, "config.json", config_as_json(run.config), allow_change,
                 RESUMABLE_FIELDS + (() if write else EVAL_ONLY_FIELDS), write=write,
                 compare=base_fields_of_json)
  check_or_store(workdir, "run.json", run_record(run.dataset, run.objective), allow_change,
                 (), write=write)


def base_fields_of_json(record: dict) -> dict:
  """The flattened fields of a config JSON in the groups of configs/base.py (experiments' own
  groups, which the trainer does not read, are not compared)."""
  from configs.base import get_base_config
  groups = set(get_base_config().keys())
  return {k: v for k, v in flatten(record).items() if k.split(".")[0] in groups}
