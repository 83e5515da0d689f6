"""The modes that read a trained run: restore, evaluate (--mode=eval and bpd), sample.

Each checks the config against the run's DIR/config.json and that DIR is writable before it
computes anything, restores the newest checkpoint that verifies, and writes under its own
names (eval/eval_<step>.json, eval/bpd_<step>.json, samples/sample_<step>.png), never over the
training run's eval/bound_<step>.json or samples/samples_<step>.png.
"""
from __future__ import annotations

import os
from typing import Any, NamedTuple, Optional

import jax
import ml_collections
import numpy as np
from absl import logging

from vdm import random_streams as streams
from vdm import reporting
from vdm.train import checkpoints as ckpt
from vdm.train import rundir
from vdm.train.devices import compiler_options, pmap, replicate
from vdm.train.evaluation import Run, draw_samples, eval_and_sample, record_path, setup
from vdm.train.state import TrainState, create_optimizer, init_state
from vdm.train.steps import make_eval_step


class RestoredRun(NamedTuple):
  run: Run                  # config, dataset, objective, devices
  state: TrainState         # the newest good checkpoint (host arrays)

  @property
  def step(self) -> int:
    return int(self.state.step)

  @property
  def ema_params(self):
    return self.state.ema_params


class EvalResult(NamedTuple):
  summary: dict             # bound terms, bits/dim (reporting.bound_summary)
  step: int                 # the checkpoint's step
  path: str                 # the JSON record written


class SampleResult(NamedTuple):
  samples: np.ndarray       # [n, *shape] on the data scale ([-1, 1] for images)
  step: int
  path: Optional[str]       # the PNG grid (None for vector data)


def restore_run(config: ml_collections.ConfigDict, workdir: str, dataset=None, denoiser=None,
                objective=None, allow_config_change: bool = False) -> RestoredRun:
  """The run's setup and its newest good checkpoint (read-only: nothing in DIR changes)."""
  run = setup(config, dataset, denoiser, objective)
  if not os.path.isdir(ckpt.checkpoint_dir(workdir)):
    raise FileNotFoundError(f"no checkpoints in {ckpt.checkpoint_dir(workdir)}: train first "
                            f"(--mode=train)")
  rundir.check_run(workdir, run, allow_config_change, write=False)
  optimizer = create_optimizer(config.optimizer, config.training.num_steps)
  template = jax.eval_shape(lambda: init_state(run.objective, optimizer, config.seed))
  manager = ckpt.checkpoint_manager(workdir, config, read_only=True)
  state = ckpt.restore_checkpoint(manager, template)
  if state is None:
    raise FileNotFoundError(f"no checkpoint in {ckpt.checkpoint_dir(workdir)} restores: train "
                            f"first (--mode=train)")
  return RestoredRun(run, state)


def restore(config: ml_collections.ConfigDict, workdir: str, **kwargs) -> Any:
  """The EMA parameters of the run's newest good checkpoint (kwargs: as `restore_run`)."""
  return restore_run(config, workdir, **kwargs).ema_params


def evaluate(config: ml_collections.ConfigDict, workdir: str, full: bool = False,
             **kwargs) -> EvalResult:
  """The bound of the newest checkpoint's EMA params on the held-out split (bits/dim).

  full=False (--mode=eval): eval.num_examples examples, written to eval/eval_<step>.json;
  full=True (--mode=bpd): every test example, eval/bpd_<step>.json. The key is that of the
  training evals at the same step (random_streams.eval_key), so --mode=eval with the
  training's eval.num_examples reproduces the training's number. kwargs: as `restore_run`.
  """
  if jax.process_index() == 0:
    rundir.check_writable(workdir)
  restored = restore_run(config, workdir, **kwargs)
  run, name = restored.run, "bpd" if full else "eval"
  p_eval = pmap(make_eval_step(run.objective), run.devices, compiler_options(config, "eval"))
  summary = eval_and_sample(run, workdir, restored.step,
                            replicate(restored.ema_params, run.devices), p_eval, writer=None,
                            name=name, num_examples=0 if full else None, samples_name=None)
  return EvalResult(summary, restored.step, record_path(workdir, name, restored.step))


def sample(config: ml_collections.ConfigDict, workdir: str, num_samples: Optional[int] = None,
           **kwargs) -> SampleResult:
  """Samples from the newest checkpoint's EMA params (eval.num_samples of them by default),
  with the key of the training's samples at that step; image data also get a PNG grid,
  DIR/samples/sample_<step>.png. kwargs: as `restore_run`."""
  if jax.process_index() == 0:
    rundir.check_writable(workdir)
  restored = restore_run(config, workdir, **kwargs)
  run = restored.run
  n = config.eval.num_samples if num_samples is None else num_samples
  if n < 1:
    raise ValueError(f"num_samples (or eval.num_samples) must be >= 1 to sample, got {n}")
  samples = draw_samples(run, replicate(restored.ema_params, run.devices),
                         streams.samples_key(config.seed, restored.step), n)
  path = None
  if run.dataset.is_image and jax.process_index() == 0:
    path = reporting.write_sample_grid(
        os.path.join(workdir, "samples", f"sample_{restored.step}.png"), samples,
        run.dataset.num_levels)
    logging.info("samples at step %d: %s", restored.step, path)
  return SampleResult(samples, restored.step, path)
