"""The modes that read a trained run: restore, evaluate (--mode=eval and bpd), sample.

Each checks the config against the run's DIR/config.json and that DIR is writable before it
computes anything, restores the newest checkpoint that verifies, and writes under its own
names (eval/eval_<step>.json, eval/bpd_<step>.json, samples/sample_<step>.png), never over the
training run's eval/bound_<step>.json or samples/samples_<step>.png.
"""
from __future__ import annotations

import os
import time
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
from vdm.train.evaluation import (Run, draw_samples, eval_and_sample, mean_and_se, per_example,
                                  record_path, setup)
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
                objective=None, allow_config_change: bool = False,
                step: Optional[int] = None) -> RestoredRun:
  """The run's setup and its newest good checkpoint, or that of `step` (read-only: nothing in
  DIR changes)."""
  run = setup(config, dataset, denoiser, objective)
  if not os.path.isdir(ckpt.checkpoint_dir(workdir)):
    raise FileNotFoundError(f"no checkpoints in {ckpt.checkpoint_dir(workdir)}: train first "
                            f"(--mode=train)")
  rundir.check_run(workdir, run, allow_config_change, write=False)
  optimizer = create_optimizer(config.optimizer, config.training.num_steps)
  template = jax.eval_shape(lambda: init_state(run.objective, optimizer, config.seed))
  manager = ckpt.checkpoint_manager(workdir, config, read_only=True)
  state = ckpt.restore_checkpoint(manager, template, step=step)
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


class LikelihoodResult(NamedTuple):
  record: dict              # what the JSON holds (means, standard errors, timings)
  step: int
  path: str                 # DIR/eval/<mode>_<step>.json


def _likelihood_setup(config, workdir, kwargs):
  """Checks, the restored run, the held-out examples (likelihood.num_examples) and the key."""
  if jax.process_index() == 0:
    rundir.check_writable(workdir)
  restored = restore_run(config, workdir, **kwargs)
  test = restored.run.dataset.test
  examples = test[:config.likelihood.num_examples or len(test)]
  return restored, examples, streams.eval_key(config.seed, restored.step)


def _summary_row(values: dict, seconds: float, **extra) -> dict:
  """Means and standard errors over the examples of every per-example value."""
  row = dict(extra)
  for k, v in values.items():
    row[k], row[f"{k}_se"] = mean_and_se(v)
  row["seconds"] = seconds
  return row


def _write_likelihood(workdir: str, name: str, restored, examples, record: dict):
  record = dict(record, mode=name, step=restored.step, num_examples=int(len(examples)),
                seed=int(restored.run.config.seed),
                key=f"random_streams.eval_key(seed={restored.run.config.seed}, "
                    f"step={restored.step})")
  path = record_path(workdir, name, restored.step)
  if jax.process_index() == 0:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    rundir.write_json_atomic(path, record)
    logging.info("%s at step %d: %s", name, restored.step, path)
  return LikelihoodResult(record, restored.step, path)


def iwbound(config: ml_collections.ConfigDict, workdir: str, **kwargs) -> LikelihoodResult:
  """Importance-weighted bounds L_K (Burda et al. 2016) over whole forward trajectories for
  each K of likelihood.iw_num_samples, beside calc_bpd's bound of the same examples.

  On the first likelihood.num_examples held-out examples with the newest checkpoint's EMA
  params; bits/dim with standard errors over the examples; written to
  DIR/eval/iwbound_<step>.json. The K-sample bound costs K T network passes per example.
  Trajectory k of an example is the same for every K, so the K's are paired.
  kwargs: as `restore_run`.
  """
  restored, examples, key = _likelihood_setup(config, workdir, kwargs)
  run, l, params = restored.run, config.likelihood, restored.ema_params
  start = time.perf_counter()
  bound = per_example(run, lambda p, x, k: {"total_bpd": run.objective.bound(p, x, k)[
      "total_bpd"]}, params, examples, key, l.batch_size)
  rows = [_summary_row(bound, time.perf_counter() - start, K="calc_bpd")]
  for num_samples in l.iw_num_samples:
    start = time.perf_counter()
    values = per_example(
        run, lambda p, x, k, n=num_samples: run.objective.iw_bound(p, x, k, n, l.iw_chunk_size),
        params, examples, key, l.batch_size)
    rows.append(_summary_row(values, time.perf_counter() - start, K=int(num_samples)))
    logging.info("iwbound K=%d: %.4f +- %.4f bits/dim (ESS %.1f) in %.1f s", num_samples,
                 rows[-1]["iw_bound_bpd"], rows[-1]["iw_bound_bpd_se"], rows[-1]["ess"],
                 rows[-1]["seconds"])
  return _write_likelihood(workdir, "iwbound", restored, examples,
                           {"units": "bits/dim", "rows": rows})


def ode_options(likelihood_config) -> dict:
  """The keyword options of `vdm.diffusion.ode.log_likelihood` from the likelihood group."""
  l = likelihood_config
  return dict(divergence=l.ode_divergence, probe=l.ode_probe, num_probes=l.ode_num_probes,
              solver=l.ode_solver, rtol=l.ode_rtol, atol=l.ode_atol,
              num_steps=l.ode_num_steps or None, t0=l.ode_t0)


def ode_nll(config: ml_collections.ConfigDict, workdir: str, **kwargs) -> LikelihoodResult:
  """The probability-flow ODE likelihood (Song et al. 2021, eq. 13 / App. D) of the newest
  checkpoint's EMA params on the first likelihood.num_examples held-out examples.

  Integer data: uniform dequantization, an upper bound on the discrete NLL in bits/dim
  (>= 0 in expectation; a negative mean is refused as a bug, never reported); continuous
  data: the density's -log p / (D ln 2). With standard errors over the examples, the mean
  number of function evaluations and the wall time; DIR/eval/ode_nll_<step>.json.
  Options: likelihood.ode_* (solver, tolerances or fixed steps, t0, divergence estimator).
  kwargs: as `restore_run`.
  """
  restored, examples, key = _likelihood_setup(config, workdir, kwargs)
  run, l = restored.run, config.likelihood
  options = ode_options(l)
  run.objective.ode_process(restored.ema_params, l.ode_interpolation)   # checked before solving
  start = time.perf_counter()
  values = per_example(
      run, lambda p, x, k: run.objective.ode_nll(p, x, k, options, l.ode_interpolation),
      restored.ema_params, examples, key, l.batch_size)
  discrete = run.dataset.num_levels is not None
  row = _summary_row(values, time.perf_counter() - start, divergence=l.ode_divergence)
  if discrete and row["ode_nll_bpd"] < 0:
    raise FloatingPointError(
        f"the dequantized ODE bound is {row['ode_nll_bpd']:.4f} bits/dim < 0 on discrete data, "
        f"which a normalized density cannot give in expectation: a bug or too loose "
        f"tolerances (likelihood.ode_rtol={l.ode_rtol}, ode_atol={l.ode_atol})")
  quantity = ("upper bound on the discrete NLL (uniform dequantization + log2((K-1)/2))"
              if discrete else "continuous density -log p(x) / (D ln 2)")
  logging.info("ode_nll: %.4f +- %.4f bits/dim, %.0f function evaluations, %.1f s",
               row["ode_nll_bpd"], row["ode_nll_bpd_se"], row["nfe"], row["seconds"])
  return _write_likelihood(workdir, "ode_nll", restored, examples,
                           {"units": "bits/dim", "quantity": quantity,
                            "options": dict(options, interpolation=l.ode_interpolation),
                            "rows": [row]})
