"""The training loop: train_and_evaluate, resuming from the newest good checkpoint.

Reproducibility contract (why a killed run ends bitwise equal to an uninterrupted one on CPU):
the state holds step, params, optimizer state, EMA params, the importance sampler's state and
the base key; the batch at step s depends only on (seed, s) (`vdm.data.get_batch`); every
random draw at step s comes from fold_in(base key, s); the eval and samples at step s use
`random_streams.eval_key(seed, s)` / `samples_key(seed, s)`, so a run killed during its final
eval gives, when rerun, the same final eval and samples.
"""
from __future__ import annotations

import os
import signal
import time
from typing import NamedTuple, Optional

import jax
import ml_collections
import numpy as np
from absl import logging

from vdm import data as data_lib
from vdm import reporting
from vdm.train import checkpoints as ckpt
from vdm.train import rundir
from vdm.train.devices import compiler_options, pmap, replicate, unreplicate
from vdm.train.evaluation import (Run, eval_and_sample, estimate_eval_seconds, read_record,
                                  setup)
from vdm.train.state import TrainState, create_optimizer, init_state, learning_rate_schedule
from vdm.train.steps import make_eval_step, make_train_step, unroll_substeps


class TrainResult(NamedTuple):
  state: TrainState          # final state (host NumPy arrays)
  summary: dict              # the last eval's bound summary (bits/dim), {} if none ran
  stopped_by: Optional[int] = None   # the signal that stopped the run early, else None


class NonFiniteLossError(ckpt.NonFiniteStateError):
  """The loss or the updated state became NaN or inf; the run stops and keeps its last good
  checkpoint (every saved checkpoint is finite)."""


class _StopSignal:
  """Turns SIGTERM/SIGINT into a flag the loop checks after each dispatch (preemption save)."""

  def __init__(self):
    self.received = None
    self._old = {}

  def __enter__(self):
    for sig in (signal.SIGTERM, signal.SIGINT):
      try:
        self._old[sig] = signal.signal(sig, self._handle)
      except ValueError:  # not the main thread
        pass
    return self

  def _handle(self, signum, frame):
    self.received = signum

  def __exit__(self, *exc):
    for sig, old in self._old.items():
      signal.signal(sig, old)
    return False


def _progress_line(step: int, num_steps: int, metrics: dict, rate: float, batch: int,
                   eta_s: float) -> str:
  parts = [f"step {step}/{num_steps}"]
  for k in ("loss", "grad_norm"):
    if k in metrics:
      parts.append(f"{k} {metrics[k]:.4g}")
  parts.append(f"{rate:.2f} steps/s ({rate * batch:.0f} img/s)")
  parts.append(f"ETA {eta_s / 60:.1f} min (with the final eval and samples)")
  return " | ".join(parts)


def _check_finite(metrics, first_step: int, manager) -> None:
  """Stop at the first step of a dispatch whose loss or updated state is not finite."""
  loss = np.asarray(metrics["loss"][0])
  state_ok = np.asarray(metrics["state_finite"][0]) > 0
  ok = np.isfinite(loss) & state_ok
  if np.all(ok):
    return
  i = int(np.argmin(ok))
  what = (f"non-finite loss {loss[i]}" if not np.isfinite(loss[i]) else
          f"non-finite parameters or optimizer state after the update (loss {loss[i]:.6g})")
  raise NonFiniteLossError(
      f"{what} at step {first_step + i + 1} (the update from step {first_step + i}); the run "
      f"stopped without saving it, and its last good checkpoint (step "
      f"{manager.latest_step()}) is kept")


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       dataset: Optional[data_lib.Dataset] = None, denoiser=None,
                       objective=None, allow_config_change: bool = False) -> TrainResult:
  """Train config's model in workdir, resuming from its newest good checkpoint.

  Args:
    config: a config built on configs/base.py (all fields checked before anything runs).
    workdir: the run directory (created; see README "Run directories").
    dataset: your own data (`vdm.data.from_arrays`), with config.data.dataset = 'custom';
      None = the data set the config names.
    denoiser: your own Flax module for the config's bound (DDPM: called as
      `net.apply({'params': p}, x_t, t, train=...)` with int32 timesteps t [B]; VDM: with
      float gamma [B]); None = the config's U-Net or MLP.
    objective: a fully built objective (vdm.objectives), instead of the config's.
    allow_config_change: resume even if the config differs from DIR/config.json in fields
      that change what is trained (the stored file is kept as the run was started).
  Returns:
    TrainResult: the final state, the last eval summary (bits/dim terms of the EMA params),
    and the signal that stopped the run early (None when it ran to training.num_steps).
  """
  run = setup(config, dataset, denoiser, objective)
  is_main = jax.process_index() == 0
  if is_main:
    rundir.check_writable(workdir)
  with rundir.lock(workdir, enabled=is_main):
    rundir.check_run(workdir, run, allow_config_change, write=is_main)
    return _train(run, workdir)


def _train(run: Run, workdir: str) -> TrainResult:
  config, objective, devices = run.config, run.objective, run.devices
  t = config.training
  optimizer = create_optimizer(config.optimizer, t.num_steps)
  schedule = learning_rate_schedule(config.optimizer, t.num_steps)
  is_main = jax.process_index() == 0
  writer = reporting.MetricWriter(workdir, enabled=is_main)

  state = init_state(objective, optimizer, config.seed)
  manager = ckpt.checkpoint_manager(workdir, config)
  restored = ckpt.restore_checkpoint(manager, state, workdir=workdir)
  if restored is not None:
    state = restored
    logging.info("Resumed from %s at step %d", manager.directory, int(state.step))
  start = int(state.step)
  num_params = sum(int(np.prod(p.shape)) for p in jax.tree_util.tree_leaves(state.params))
  logging.info("%d parameters; %d devices x %d examples per device (global batch %d)",
               num_params, len(devices) * jax.process_count(), run.per_device, t.batch_size)

  p_eval = pmap(make_eval_step(objective), devices, compiler_options(config, "eval"))

  def evaluate_at(step, ema_rep):
    return eval_and_sample(run, workdir, step, ema_rep, p_eval, writer, name="bound")

  if start >= t.num_steps:
    # Finished: the final eval is read back if it was written, else computed with the same
    # keys as in the loop (a run killed during its final eval).
    record = read_record(workdir, "bound", start)
    if record is not None:
      logging.info("already trained to step %d (training.num_steps=%d); its final eval is in "
                   "%s", start, t.num_steps, os.path.join(workdir, "eval"))
      summary = record["summary"]
    else:
      logging.info("already trained to step %d; computing its final eval", start)
      summary = evaluate_at(start, replicate(state.ema_params, devices))
    writer.close()
    return TrainResult(state, summary)

  p_train = pmap(make_train_step(objective, optimizer, config.optimizer.ema_rate, schedule,
                                 unroll_substeps(config)), devices, compiler_options(config),
                 donate_argnums=(0,))
  state_rep = replicate(state, devices)

  def batches_from(step):
    """[local_devices, substeps, per_device, ...] for steps step..step+substeps-1."""
    per_step = [data_lib.get_batch(run.dataset.train, seed=config.seed, step=s,
                                   global_batch_size=t.batch_size,
                                   process_index=jax.process_index(),
                                   process_count=jax.process_count(),
                                   local_device_count=len(devices),
                                   random_flip=config.data.random_flip)
                for s in range(step, step + t.substeps)]
    return np.stack(per_step, axis=1)

  summary = {}
  step = start
  if step == 0 and config.eval.at_start:
    summary = evaluate_at(0, state_rep.ema_params)
  eval_s = None        # measured duration of one eval (+ samples), once one has run
  t0, step_t0 = time.time(), step
  stopped_by = None
  with _StopSignal() as stop:
    while step < t.num_steps:
      state_rep, metrics = p_train(state_rep, batches_from(step))
      _check_finite(metrics, step, manager)
      step += t.substeps
      final = step >= t.num_steps
      if step % t.steps_per_log == 0 or final:
        host = {k: float(np.asarray(v[0])[-1]) for k, v in metrics.items()
                if k != "state_finite"}
        rate = (step - step_t0) / max(time.time() - t0, 1e-9)
        evals_left = len({s for s in range(step + 1, t.num_steps + 1)
                          if s % t.steps_per_eval == 0} | {t.num_steps})
        per_eval = eval_s if eval_s is not None else estimate_eval_seconds(run, rate)
        eta = (t.num_steps - step) / max(rate, 1e-9) + evals_left * per_eval
        host.update(steps_per_s=rate, images_per_s=rate * t.batch_size, eta_s=eta)
        writer.write(step, "train", host)
        if is_main:
          logging.info(_progress_line(step, t.num_steps, host, rate, t.batch_size, eta))
        t0, step_t0 = time.time(), step
      if step % t.steps_per_save == 0 or final or stop.received:
        ckpt.save_checkpoint(manager, unreplicate(state_rep))
      if step % t.steps_per_eval == 0 or final:
        e0 = time.time()
        summary = evaluate_at(step, state_rep.ema_params)
        eval_s = time.time() - e0
        t0 = time.time()   # the eval's time is not training time
      if stop.received:
        stopped_by = stop.received
        logging.warning("signal %d: saved step %d and stopping", stop.received, step)
        break
  writer.close()
  return TrainResult(unreplicate(state_rep), summary, stopped_by)
