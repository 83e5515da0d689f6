"""What every mode shares: the checked setup of a run, the bound over the held-out split, the
sample grid, and the files they write (each mode under its own names)."""
from __future__ import annotations

import json
import os
from typing import Any, NamedTuple, Optional

import jax
import numpy as np
from jax.experimental import multihost_utils
from absl import logging

from vdm import checks
from vdm import data as data_lib
from vdm import objectives as objectives_lib
from vdm import random_streams as streams
from vdm import reporting
from vdm.train.config_checks import validate_config
from vdm.train.devices import compiler_options, device_layout, pmap, replicate, unreplicate
from vdm.train.devices import AXIS
from vdm.train.steps import batch_info, make_eval_step


class Run(NamedTuple):
  """A checked run: its config, data, objective and devices (nothing compiled yet)."""
  config: Any
  dataset: data_lib.Dataset
  objective: Any
  devices: list
  per_device: int


def setup(config, dataset=None, denoiser=None, objective=None) -> Run:
  """Validate every field, load (or check) the data, build the objective: all that may fail
  fast, before any compilation."""
  validate_config(config)
  devices, per_device = device_layout(config)
  if dataset is None:
    dataset = data_lib.load_dataset(config.data)
  else:
    data_lib.check_dataset_matches_config(dataset, config.data)
  if objective is None:
    objective = objectives_lib.build_objective(config, dataset.shape, dataset.num_levels,
                                               denoiser=denoiser)
  elif denoiser is not None:
    raise ValueError("pass either objective= or denoiser=, not both")
  return Run(config, dataset, objective, devices, per_device)


def _mean_bound(run: Run, p_eval_step, params_rep, examples: np.ndarray, key) -> dict:
  """Mean bound terms over every row of `examples` (stored layout), bits/dim, float64."""
  sums = None
  for i, (batch, mask) in enumerate(data_lib.eval_batches(
      examples, global_batch_size=run.config.eval.batch_size, process_index=jax.process_index(),
      process_count=jax.process_count(), local_device_count=len(run.devices))):
    out = p_eval_step(params_rep, batch, mask,
                      replicate(jax.random.fold_in(key, i), run.devices))
    out = unreplicate(out)
    sums = out if sums is None else jax.tree_util.tree_map(np.add, sums, out)
  count = sums.pop("count")
  return {k: np.asarray(v, np.float64) / count for k, v in sums.items()}


def evaluate_bound(run: Run, p_eval_step, params_rep, key, num_examples: int) -> dict:
  """Mean bound terms over the first num_examples held-out examples (0 = all), bits/dim."""
  test = run.dataset.test[:num_examples or len(run.dataset.test)]
  return _mean_bound(run, p_eval_step, params_rep, test, key)


def bound_on(run: Run, params, examples: np.ndarray, key) -> dict:
  """The bound of `params` (one copy, e.g. `restore`'s EMA parameters) on any examples.

  examples: [N, *shape] in the dataset's stored layout (integer levels or floats), e.g. a
  subset of the training split; batched as the evaluation is (eval.batch_size, padded and
  masked). key: the bound's random key (timesteps, noise). Returns the mean of every bound
  term over the N examples, bits/dim (float64 arrays, as `evaluate_bound`).
  """
  examples = np.asarray(examples)
  if examples.shape[1:] != tuple(run.dataset.shape) or examples.shape[0] < 1:
    raise ValueError(f"examples must be [N >= 1, {', '.join(map(str, run.dataset.shape))}] "
                     f"(the data's per-example shape), got {examples.shape}")
  p_eval = pmap(make_eval_step(run.objective), run.devices, compiler_options(run.config, "eval"))
  return _mean_bound(run, p_eval, replicate(params, run.devices), examples, key)


def make_per_example_step(objective, fn):
  """(params, v [per_device, ...], mask, key) -> fn's [per_device] outputs, one call per example.

  fn(params, x [1, ...], key) -> dict of [1] arrays, with x encoded (dequantized with the
  example's own key when the objective dequantizes) and a key per example from its global
  index (random_streams.BOUND), so the values do not depend on the device layout.
  """

  def step(params, v, mask, key):
    del mask
    info = batch_info(key, v.shape[0], v.shape[0] * jax.lax.psum(1, AXIS))
    x = objective.encode(v, info.keys(streams.DEQUANTIZE))
    out = jax.vmap(lambda k, xi: fn(params, xi[None], k))(info.keys(streams.BOUND), x)
    return jax.tree_util.tree_map(lambda a: a[:, 0], out)

  return step


def per_example(run: Run, fn, params, examples: np.ndarray, key, batch_size: int) -> dict:
  """fn (see `make_per_example_step`) on every row of `examples`: dict of float64 [N].

  Batches of batch_size (global) examples over the run's devices, padded and masked; batch i
  uses the key fold_in(key, i). With several processes, every process gets all N values.
  """
  p_step = pmap(make_per_example_step(run.objective, fn), run.devices)
  params_rep = replicate(params, run.devices)
  parts = []
  for i, (batch, mask) in enumerate(data_lib.eval_batches(
      examples, global_batch_size=batch_size, process_index=jax.process_index(),
      process_count=jax.process_count(), local_device_count=len(run.devices))):
    out = p_step(params_rep, batch, mask, replicate(jax.random.fold_in(key, i), run.devices))
    if jax.process_count() > 1:
      out, mask = multihost_utils.process_allgather((out, mask), tiled=True)
    keep = np.asarray(mask).reshape(-1)
    parts.append({k: np.asarray(v, np.float64).reshape(-1)[keep] for k, v in out.items()})
  return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def mean_and_se(values: np.ndarray) -> tuple:
  """(mean, standard error of the mean) over examples: std (ddof 1) / sqrt(N); SE 0 if N=1."""
  values = np.asarray(values, np.float64)
  n = values.size
  se = float(values.std(ddof=1) / np.sqrt(n)) if n > 1 else 0.0
  return float(values.mean()), se


def draw_samples(run: Run, params_rep, key, n: int, batch_size: Optional[int] = None
                 ) -> np.ndarray:
  """n samples [n, *shape] on the data scale from the replicated params.

  Drawn in calls of batch_size samples (None: all n in one call) over the run's devices, one
  compilation for all calls; call c, device d uses key fold_in(fold_in(key, c), d) (d counted
  over every process), so the samples depend on (key, n, batch_size, device count) only.
  """
  n = checks.positive_int("n", n)
  per_call = n if batch_size is None else min(checks.positive_int("batch_size", batch_size), n)
  per_device = -(-per_call // len(run.devices))
  p_sample = pmap(lambda p, k: run.objective.sample(p, k, per_device), run.devices,
                  compiler_options(run.config, "eval"))
  first = jax.process_index() * len(run.devices)
  out = []
  for c in range(-(-n // per_call)):
    call_key = jax.random.fold_in(key, c)
    keys = np.stack([np.asarray(jax.random.fold_in(call_key, first + i))
                     for i in range(len(run.devices))])
    out.append(np.asarray(p_sample(params_rep, keys)).reshape((-1,) + tuple(run.dataset.shape)))
  return np.concatenate(out)[:n]


def record_path(workdir: str, name: str, step: int) -> str:
  return os.path.join(workdir, "eval", f"{name}_{step}.json")


def read_record(workdir: str, name: str, step: int) -> Optional[dict]:
  """The eval record DIR/eval/<name>_<step>.json, or None if absent or unreadable."""
  try:
    with open(record_path(workdir, name, step)) as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def eval_and_sample(run: Run, workdir: str, step: int, params_rep, p_eval, writer,
                    name: str = "bound", num_examples: Optional[int] = None,
                    samples_name: Optional[str] = "samples") -> dict:
  """The bound at `step` (printed first), then its files, then the samples' grid.

  Keys: random_streams.eval_key / samples_key of (seed, step), whatever the mode, so the same
  step gives the same numbers in training and in --mode=eval with the same num_examples.
  Files: DIR/eval/<name>_<step>.json (+ .png) recording num_examples and the key; the grid
  DIR/samples/<samples_name>_<step>.png (eval.num_samples images; None = no samples).
  """
  config = run.config
  n = config.eval.num_examples if num_examples is None else num_examples
  bound = evaluate_bound(run, p_eval, params_rep, streams.eval_key(config.seed, step), n)
  summary = reporting.bound_summary(bound)
  is_main = jax.process_index() == 0
  if is_main:
    logging.info("eval at step %d (%s): %s", step, name, reporting.format_summary(summary))
    used = min(n or len(run.dataset.test), len(run.dataset.test))
    info = {"mode": name, "num_examples": int(used), "seed": int(config.seed),
            "key": f"random_streams.eval_key(seed={config.seed}, step={step})"}
    reporting.write_bound(os.path.join(workdir, "eval"), step, bound, summary,
                          num_levels=run.dataset.num_levels, name=name, info=info)
    if writer is not None:
      writer.write(step, "eval", summary)
  if samples_name and config.eval.num_samples and run.dataset.is_image:
    samples = draw_samples(run, params_rep, streams.samples_key(config.seed, step),
                           config.eval.num_samples)
    if is_main:
      path = reporting.write_sample_grid(
          os.path.join(workdir, "samples", f"{samples_name}_{step}.png"), samples,
          run.dataset.num_levels)
      logging.info("samples at step %d: %s", step, path)
  return summary


def estimate_eval_seconds(run: Run, train_steps_per_s: float) -> float:
  """A first guess at one eval's time (replaced by the measured time after the first eval).

  A forward pass costs about a third of a train step's forward and backward pass per example,
  so an eval of N examples with P network passes each takes about N P / (3 B) step times
  (B the train batch); samples likewise with the sampler's passes.
  """
  config, obj = run.config, run.objective
  n = min(config.eval.num_examples or len(run.dataset.test), len(run.dataset.test))
  passes = n * obj.bound_network_passes
  if config.eval.num_samples and run.dataset.is_image:
    passes += config.eval.num_samples * obj.sample_network_passes
  return passes / (3.0 * config.training.batch_size) / max(train_steps_per_s, 1e-9)
