"""Checkpoints that are never silently wrong: only finite states are saved, each with a digest
of its contents, and a restore falls back past a damaged checkpoint to the newest good one.

Layout of DIR/checkpoints/<step>/ (orbax): item `state` (the TrainState, StandardSave) and item
`meta` (JSON: step, sha256 digest of the state's bytes). Saves are synchronous and atomic:
orbax writes a temporary directory and renames it when complete, so a kill during a save leaves
the previous checkpoints intact and the partial one is ignored and cleaned up at the next start.
A checkpoint that fails to restore, restores to other contents than its digest, or holds a
non-finite value is moved to DIR/checkpoints_damaged/ (when the workdir is writable) with one
warning naming it, and the next older one is tried.
"""
from __future__ import annotations

import hashlib
import logging as py_logging
import os
import shutil
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from vdm.train.state import TrainState, non_finite_leaves

DAMAGED_DIR = "checkpoints_damaged"


class NonFiniteStateError(FloatingPointError):
  """A state to be saved (or the loss) holds NaN or inf; nothing non-finite is ever saved."""


def checkpoint_dir(workdir: str) -> str:
  return os.path.abspath(os.path.join(workdir, "checkpoints"))


def checkpoint_manager(workdir: str, config, read_only: bool = False) -> ocp.CheckpointManager:
  """Orbax manager for DIR/checkpoints: keep the newest N (+ every keep_period-th step)."""
  t = config.training
  if read_only:   # nothing is saved or deleted: no retention options (orbax warns otherwise)
    options = ocp.CheckpointManagerOptions(
        create=False, cleanup_tmp_directories=False, enable_async_checkpointing=False,
        read_only=True, save_interval_steps=0)
    with _QuietOrbax():   # orbax warns that a read-only directory is read-only
      return ocp.CheckpointManager(checkpoint_dir(workdir), options=options)
  options = ocp.CheckpointManagerOptions(
      max_to_keep=t.keep_checkpoints, keep_period=t.keep_period or None, create=True,
      cleanup_tmp_directories=True, enable_async_checkpointing=False)
  return ocp.CheckpointManager(checkpoint_dir(workdir), options=options)


def state_digest(state) -> str:
  """sha256 (hex) of every leaf's dtype, shape and bytes, in tree order."""
  h = hashlib.sha256()
  for leaf in jax.tree_util.tree_leaves(state):
    a = np.ascontiguousarray(np.asarray(leaf))
    h.update(f"{a.dtype.str}{a.shape}".encode())
    h.update(a.tobytes())
  return h.hexdigest()


def structure_digest(tree) -> str:
  """sha256 (hex) of the tree's structure and its leaves' dtypes and shapes (not values)."""
  leaves, treedef = jax.tree_util.tree_flatten(tree)
  spec = [str(treedef)] + [f"{np.dtype(getattr(a, 'dtype', np.asarray(a).dtype)).str}"
                           f"{tuple(np.shape(a))}" for a in leaves]
  return hashlib.sha256("|".join(spec).encode()).hexdigest()


class CheckpointMismatchError(ValueError):
  """The checkpoint is intact but holds another model's state (other shapes or structure)."""


def save_checkpoint(manager: ocp.CheckpointManager, state_host: TrainState) -> None:
  """Save the host state under its step, with its digest; refuse a non-finite state."""
  step = int(state_host.step)
  if manager.latest_step() == step:
    return
  bad = non_finite_leaves(state_host)
  if bad:
    raise NonFiniteStateError(
        f"the state after step {step} holds NaN or inf in {len(bad)} arrays (first: {bad[0]}); "
        f"it was not saved, and the last good checkpoint (step {manager.latest_step()}) is kept")
  meta = {"step": step, "sha256": state_digest(state_host),
          "structure": structure_digest(state_host)}
  manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state_host),
                                             meta=ocp.args.JsonSave(meta)), force=True)
  manager.wait_until_finished()


class _QuietOrbax:
  """Silences orbax's and tensorstore's log chatter while a restore may fail."""

  def __enter__(self):
    self._disabled = py_logging.root.manager.disable
    py_logging.disable(py_logging.ERROR)
    return self

  def __exit__(self, *exc):
    py_logging.disable(self._disabled)
    return False


def _read_meta(manager, step: int):
  """The checkpoint's meta item, or None when it cannot be read (damage, or an old layout)."""
  path = os.path.join(str(manager.directory), str(step), "meta", "metadata")
  try:
    import json
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def _restore_one(manager, step: int, abstract):
  """Restore and verify one step: (state, None) or (None, reason).

  Raises CheckpointMismatchError when the checkpoint's recorded structure is not the
  template's (another model): that is not damage, and nothing is skipped or moved.
  """
  step_dir = os.path.join(str(manager.directory), str(step))
  meta = _read_meta(manager, step)
  if meta is not None and meta.get("structure") != structure_digest(abstract):
    raise CheckpointMismatchError(
        f"checkpoint {step_dir} holds a state of another structure or shapes than this run's "
        f"model (a changed model config, data shape or denoiser); it was left untouched")
  try:
    with _QuietOrbax():
      if os.path.isdir(os.path.join(step_dir, "default")):   # written before digests existed
        restored, meta = manager.restore(step, args=ocp.args.StandardRestore(abstract)), None
      else:
        out = manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
        restored, meta = out["state"], out["meta"]
  except Exception as e:  # orbax/tensorstore raise many types for damaged files
    first = str(e).strip().splitlines()[0] if str(e).strip() else ""
    # TensorStore appends a repr of its spec after "See full TensorStore details": drop it.
    first = first.split(" See full TensorStore details")[0]
    return None, f"{type(e).__name__}: {first[:200]}"
  state = jax.tree_util.tree_map(np.asarray, restored)
  if meta is not None and meta.get("sha256") != state_digest(state):
    return None, "its contents do not match the digest recorded when it was saved"
  bad = non_finite_leaves(state)
  if bad:
    return None, f"it holds NaN or inf ({bad[0]})"
  if int(state.step) != step:
    return None, f"it holds step {int(state.step)}, not {step}"
  return state, None


def _quarantine(manager, step: int, workdir: str) -> str:
  """Move a damaged checkpoint out of the manager's directory; returns where it went."""
  src = os.path.join(str(manager.directory), str(step))
  dst_root = os.path.join(workdir, DAMAGED_DIR)
  os.makedirs(dst_root, exist_ok=True)
  dst = os.path.join(dst_root, f"{step}.{time.strftime('%Y%m%d-%H%M%S')}")
  shutil.move(src, dst)
  manager.reload()
  return dst


def restore_checkpoint(manager: ocp.CheckpointManager, template: TrainState,
                       workdir: str | None = None, step: int | None = None):
  """The newest checkpoint that restores and verifies, in template's structure, or None.

  Damaged checkpoints are skipped with a warning naming each; with `workdir` (a writable run
  directory) they are also moved to DIR/checkpoints_damaged/ so that the run can save that step
  again. With `step`, only that step's checkpoint: FileNotFoundError if it is absent or does not
  verify (no other step is taken in its place).
  """
  abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, template)
  if step is not None:
    where = os.path.join(str(manager.directory), str(step))
    if step not in manager.all_steps():
      raise FileNotFoundError(f"no checkpoint of step {step} in {manager.directory} (steps "
                              f"there: {sorted(manager.all_steps()) or 'none'})")
    state, reason = _restore_one(manager, step, abstract)
    if state is None:
      raise FileNotFoundError(f"checkpoint {where} does not restore: {reason}")
    return state
  for step in sorted(manager.all_steps(), reverse=True):
    state, reason = _restore_one(manager, step, abstract)
    if state is not None:
      return state
    where = ""
    if workdir is not None and jax.process_index() == 0:
      where = f"; moved to {_quarantine(manager, step, workdir)}"
    logging.warning("checkpoint %s is damaged and was skipped (%s)%s",
                    os.path.join(str(manager.directory), str(step)), reason, where)
  return None
