"""Training and evaluation: pmap of lax.scan, EMA, orbax checkpoints, metrics, eval and samples.

Everything the loop needs is a pure function of (state, batch) compiled once; this module owns
the devices and the files, the math lives in vdm.objectives and below.

Reproducibility contract (what a resume restores, and why a killed run ends bitwise equal to an
uninterrupted one on CPU): the state holds step, params, optimizer state, EMA params, the
importance sampler's state and the base key; the batch at step s depends only on (seed, s)
(`vdm.data.get_batch`); every random draw at step s comes from fold_in(base key, s).
"""
from __future__ import annotations

import os
import signal
import time
from typing import Any, NamedTuple, Optional

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from absl import logging

from vdm import data as data_lib
from vdm import objectives as objectives_lib
from vdm import reporting

AXIS = "batch"
OPTIMIZERS = ("adam", "adamw")
LR_SCHEDULES = ("constant", "cosine")
MODES = ("train", "eval", "sample", "bpd")


class TrainState(flax.struct.PyTreeNode):
  """Everything a resume restores. All leaves are arrays (checkpointed by orbax)."""
  step: jnp.ndarray          # int32 [] optimizer steps taken
  params: Any
  ema_params: Any
  opt_state: Any
  sampler_state: Any         # timestep-sampler state (() for uniform timesteps)
  rng: jnp.ndarray           # uint32 [2] base key; step keys are fold_in(rng, step)


class TrainResult(NamedTuple):
  state: TrainState          # final state (host NumPy arrays)
  summary: dict              # the last eval's bound summary (bits/dim), {} if none ran


class NonFiniteLossError(FloatingPointError):
  """The loss became NaN or inf; the run stops and keeps its last good checkpoint."""


# -----------------------------------------------------------------------------------------
# Configuration checks (all before any compilation).

def _positive_int(field: str, value) -> int:
  if isinstance(value, bool) or int(value) != value or value < 1:
    raise ValueError(f"config field {field} must be a positive integer, got {value!r}")
  return int(value)


def validate_config(config) -> None:
  """Raise a ValueError naming the field for any config value the loop cannot use."""
  t = config.training
  for name in ("num_steps", "batch_size", "steps_per_log", "steps_per_eval", "steps_per_save"):
    _positive_int(f"training.{name}", t[name])
  substeps = _positive_int("training.substeps", t.get("substeps", 1))
  for name in ("steps_per_log", "steps_per_eval", "steps_per_save"):
    if t[name] % substeps:
      raise ValueError(f"config field training.{name}={t[name]} must be a multiple of "
                       f"training.substeps={substeps} (the steps taken per dispatch)")
  o = config.optimizer
  objectives_lib._choice("optimizer.name", o.name, OPTIMIZERS)
  objectives_lib._choice("optimizer.schedule", o.get("schedule", "constant"), LR_SCHEDULES)
  if not 0.0 <= o.ema_rate < 1.0:
    raise ValueError(f"config field optimizer.ema_rate must lie in [0, 1), got {o.ema_rate}")


def device_layout(config) -> tuple[list, int]:
  """(local devices used, per-device batch); checks the global batch divides evenly."""
  devices = jax.local_devices()
  n = config.training.get("num_devices", 0) or len(devices)
  if n > len(devices):
    raise ValueError(f"config field training.num_devices={n} exceeds the {len(devices)} local "
                     f"devices")
  if jax.process_count() > 1 and n != len(devices):
    raise ValueError(f"config field training.num_devices={n}: a multi-process run uses all "
                     f"{len(devices)} local devices of every process (set it to 0)")
  devices = devices[:n]
  total = n * jax.process_count()
  if config.training.batch_size % total:
    raise ValueError(f"config field training.batch_size={config.training.batch_size} (global) "
                     f"must be divisible by the number of devices, {n} local x "
                     f"{jax.process_count()} processes = {total}")
  return devices, config.training.batch_size // total


# -----------------------------------------------------------------------------------------
# Optimizer and state.

def learning_rate_schedule(opt_config, num_steps: int) -> optax.Schedule:
  """Linear warmup to optimizer.learning_rate, then constant or cosine decay to 0."""
  lr, warmup = opt_config.learning_rate, int(opt_config.get("warmup_steps", 0))
  if opt_config.get("schedule", "constant") == "cosine":
    return optax.warmup_cosine_decay_schedule(0.0, lr, max(warmup, 1) if warmup else 0,
                                              max(num_steps, warmup + 1))
  if warmup:
    return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup),
                                 optax.constant_schedule(lr)], [warmup])
  return optax.constant_schedule(lr)


def decay_mask(params):
  """True for parameters that get weight decay: kernels (ndim > 1), not biases or norm scales."""
  return jax.tree_util.tree_map(lambda p: p.ndim > 1, params)


def create_optimizer(opt_config, num_steps: int) -> optax.GradientTransformation:
  """optax chain: clip by global norm (optimizer.grad_clip > 0), then Adam or AdamW."""
  schedule = learning_rate_schedule(opt_config, num_steps)
  kw = dict(b1=opt_config.get("b1", 0.9), b2=opt_config.get("b2", 0.999),
            eps=opt_config.get("eps", 1e-8))
  if opt_config.name == "adamw":
    opt = optax.adamw(schedule, weight_decay=opt_config.get("weight_decay", 0.0),
                      mask=decay_mask, **kw)
  else:
    opt = optax.adam(schedule, **kw)
  clip = opt_config.get("grad_clip", 0.0)
  return optax.chain(optax.clip_by_global_norm(clip), opt) if clip > 0 else opt


def init_state(objective, optimizer, seed: int) -> TrainState:
  """A fresh state on the host (same on every process: it depends only on the seed)."""
  rng = jax.random.PRNGKey(seed)
  params = jax.jit(objective.init)(jax.random.fold_in(rng, 0x7A17))
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    ema_params=jax.tree_util.tree_map(jnp.copy, params),
                    opt_state=optimizer.init(params), sampler_state=objective.init_sampler(),
                    rng=rng)


# -----------------------------------------------------------------------------------------
# The step: pmap over devices of a lax.scan over substeps.

def batch_info(step_key, per_device: int, global_batch: int) -> objectives_lib.BatchInfo:
  """This device's place in the global batch.

  The global index of example i on the device with pmap index a is a * per_device + i
  (processes hold contiguous slices of the global batch, and pmap numbers devices
  process-major), so per-example draws do not depend on the number of devices or hosts.
  """
  first = jax.lax.axis_index(AXIS) * per_device
  return objectives_lib.BatchInfo(step_key, first + jnp.arange(per_device, dtype=jnp.int32),
                                  global_batch)


def unroll_substeps(config) -> bool:
  """Whether the lax.scan over substeps is unrolled (default: on CPU).

  XLA:CPU (jaxlib 0.10) compiles the weight-gradient convolution inside a while loop to a
  naive kernel, 30-100x slower than the same convolution outside a loop (measured here:
  3x3 conv, 64 channels, batch 64 at 8x8: 0.05 s vs 1.8 s; a whole digits U-Net step 0.3 s vs
  20 s). Unrolling removes the loop.
  """
  unroll = config.training.get("unroll_substeps", None)
  return jax.default_backend() == "cpu" if unroll is None else bool(unroll)


def make_train_step(objective, optimizer, ema_rate: float, schedule: optax.Schedule,
                    unroll: bool = False):
  """(state, batch [substeps, per_device, ...]) -> (state, metrics [substeps]) for one device."""

  def one_step(state: TrainState, v):
    per_device = v.shape[0]
    step_key = jax.random.fold_in(state.rng, state.step)
    info = batch_info(step_key, per_device, per_device * jax.lax.psum(1, AXIS))
    dropout_key = jax.random.fold_in(jax.random.fold_in(step_key, 1 << 30),
                                     jax.lax.axis_index(AXIS))
    x = objective.encode(v, info.keys(4))

    def loss_fn(params):
      per_example, aux = objective.loss(params, x, info, dropout_key, state.sampler_state)
      return jnp.mean(per_example), (per_example, aux)

    (loss, (per_example, aux)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    grads = jax.lax.pmean(grads, AXIS)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    ema = jax.tree_util.tree_map(lambda e, p: ema_rate * e + (1.0 - ema_rate) * p,
                                 state.ema_params, params)
    sampler_state = state.sampler_state
    if jax.tree_util.tree_leaves(sampler_state):
      t_all = jax.lax.all_gather(aux["t"], AXIS).reshape(-1)
      vb_all = jax.lax.all_gather(aux["vb"], AXIS).reshape(-1)
      sampler_state = objective.update_sampler(sampler_state, t_all, vb_all)
    # Metrics: global means over the batch, and per timestep quartile.
    count = jax.lax.psum(jnp.float32(per_device), AXIS)
    metrics = {"loss": jax.lax.pmean(loss, AXIS),
               "grad_norm": optax.tree.norm(grads),
               "learning_rate": schedule(state.step)}
    for name in objective.report_keys:
      metrics[name] = jax.lax.psum(jnp.sum(aux[name]), AXIS) / count
    if "quartile" in aux:
      onehot = jax.nn.one_hot(aux["quartile"], 4, dtype=jnp.float32)      # [B, 4]
      sums = jax.lax.psum(onehot.T @ per_example.astype(jnp.float32), AXIS)
      counts = jax.lax.psum(jnp.sum(onehot, axis=0), AXIS)
      for q in range(4):
        metrics[f"loss_q{q}"] = sums[q] / jnp.maximum(counts[q], 1.0)
    new_state = state.replace(step=state.step + 1, params=params, ema_params=ema,
                              opt_state=opt_state, sampler_state=sampler_state)
    return new_state, metrics

  def train_step(state, batch):
    if not unroll:
      return jax.lax.scan(one_step, state, batch)
    # A Python loop, not scan(unroll=True): jax still emits a while loop for a length-1 scan.
    metrics = []
    for i in range(batch.shape[0]):
      state, m = one_step(state, batch[i])
      metrics.append(m)
    return state, jax.tree_util.tree_map(lambda *ms: jnp.stack(ms), *metrics)

  return train_step


def make_eval_step(objective):
  """(params, v [per_device, ...], mask [per_device], key) -> summed bound terms (psum'd)."""

  def eval_step(params, v, mask, key):
    info = batch_info(key, v.shape[0], v.shape[0] * jax.lax.psum(1, AXIS))
    x = objective.encode(v, info.keys(4))
    # One key per example (from its global index): the bound does not depend on the layout.
    terms = jax.vmap(lambda k, xi: objective.bound(params, xi[None], k))(info.keys(5), x)
    terms = jax.tree_util.tree_map(lambda a: a[:, 0], terms)
    w = mask.astype(jnp.float32)
    sums = {k: jax.lax.psum(jnp.tensordot(w, a.astype(jnp.float32), axes=(0, 0)), AXIS)
            for k, a in terms.items()}
    sums["count"] = jax.lax.psum(jnp.sum(w), AXIS)
    return sums

  return eval_step


# -----------------------------------------------------------------------------------------
# Host side: replication, checkpoints, evaluation.

def compiler_options(config, purpose: str = "train") -> dict:
  """XLA compiler options for the pmapped steps (`training.compiler_options`).

  'auto': on CPU, `vdm.models.unet.xla_compiler_options(purpose=purpose)` (convolutions on
  Eigen's multi-threaded kernels instead of single-threaded YNNPACK; purpose 'train' for the
  train step, 'eval' for the forward-only bound and sampling programs; measured in
  experiments/bench_train.py and bench_bound.py); nothing elsewhere. 'none': XLA's defaults.
  """
  choice = objectives_lib._choice("training.compiler_options",
                                  config.training.get("compiler_options", "auto"),
                                  ("auto", "none"))
  if choice == "none":
    return {}
  from vdm.models.unet import xla_compiler_options
  return xla_compiler_options(purpose=purpose)


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


def checkpoint_manager(workdir: str, config, read_only: bool = False) -> ocp.CheckpointManager:
  """Orbax manager for DIR/checkpoints: keep the newest N (+ every keep_period-th step).

  Saves are synchronous and atomic (orbax writes a temporary directory and renames it when
  complete), so a kill during a save leaves the previous checkpoints intact and the partial
  one is ignored and cleaned up at the next start.
  """
  t = config.training
  options = ocp.CheckpointManagerOptions(
      max_to_keep=t.get("keep_checkpoints", 3), keep_period=t.get("keep_period", None) or None,
      create=not read_only, cleanup_tmp_directories=not read_only,
      enable_async_checkpointing=False, read_only=read_only)
  return ocp.CheckpointManager(os.path.abspath(os.path.join(workdir, "checkpoints")),
                               options=options)


def save_checkpoint(manager: ocp.CheckpointManager, state_host: TrainState) -> None:
  step = int(state_host.step)
  if manager.latest_step() == step:
    return
  manager.save(step, args=ocp.args.StandardSave(state_host), force=True)
  manager.wait_until_finished()


def restore_checkpoint(manager: ocp.CheckpointManager, template: TrainState):
  """The latest complete checkpoint restored into template's structure, or None."""
  step = manager.latest_step()
  if step is None:
    return None
  abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, template)
  restored = manager.restore(step, args=ocp.args.StandardRestore(abstract))
  return jax.tree_util.tree_map(np.asarray, restored)


def evaluate_bound(objective, p_eval_step, params_rep, test: np.ndarray, config, devices,
                   key) -> dict:
  """Mean bound terms over the held-out examples (eval.num_examples; 0 = all), EMA params."""
  n = config.eval.get("num_examples", 0) or len(test)
  test = test[:n]
  sums = None
  for i, (batch, mask) in enumerate(data_lib.eval_batches(
      test, global_batch_size=config.eval.batch_size, process_index=jax.process_index(),
      process_count=jax.process_count(), local_device_count=len(devices))):
    out = p_eval_step(params_rep, batch, mask,
                      replicate(jax.random.fold_in(key, i), devices))
    out = unreplicate(out)
    sums = out if sums is None else jax.tree_util.tree_map(np.add, sums, out)
  count = sums.pop("count")
  return {k: np.asarray(v, np.float64) / count for k, v in sums.items()}


def _log_line(step: int, num_steps: int, metrics: dict, rate: float, images_per_s: float,
              eta_s: float) -> str:
  parts = [f"step {step}/{num_steps}"]
  for k in ("loss", "grad_norm", "learning_rate"):
    if k in metrics:
      parts.append(f"{k} {metrics[k]:.4g}")
  parts.append(f"{rate:.2f} steps/s, {images_per_s:.1f} img/s, ETA {eta_s / 60:.1f} min")
  return " | ".join(parts)


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


def _setup(config):
  """Validate, load data, build the objective: everything that may fail fast."""
  validate_config(config)
  devices, per_device = device_layout(config)
  dataset = data_lib.load_dataset(config.data)
  objective = objectives_lib.build_objective(config, dataset.shape, dataset.num_levels)
  return dataset, objective, devices, per_device


def _write_eval(workdir, step, objective, bound, dataset, writer) -> dict:
  """Write DIR/eval/bound_<step>.json (+ PNG plots); returns the scalar summary."""
  summary = reporting.bound_summary(bound)
  if jax.process_index() == 0:
    reporting.write_bound(os.path.join(workdir, "eval"), step, bound, summary,
                          num_levels=dataset.num_levels)
    writer.write(step, "eval", summary)
  return summary


def _write_samples(workdir, step, objective, params_rep, config, devices, dataset, key):
  n = config.eval.get("num_samples", 0)
  if not n or not dataset.is_image:
    return
  per_device = -(-n // len(devices))
  p_sample = pmap(lambda p, k: objective.sample(p, k, per_device), devices,
                  compiler_options(config, "eval"))
  first = jax.process_index() * len(devices)
  keys = np.stack([np.asarray(jax.random.fold_in(key, first + i)) for i in range(len(devices))])
  samples = np.asarray(p_sample(params_rep, keys))
  samples = samples.reshape((-1,) + tuple(dataset.shape))[:n]
  if jax.process_index() == 0:
    reporting.write_sample_grid(os.path.join(workdir, "samples", f"samples_{step}.png"),
                                samples, dataset.num_levels)


# -----------------------------------------------------------------------------------------
# Entry points.

def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> TrainResult:
  """Train config's model in workdir, resuming from its latest checkpoint.

  Returns the final state and the last eval summary (bits/dim terms of the EMA params)."""
  dataset, objective, devices, per_device = _setup(config)
  t = config.training
  substeps = t.get("substeps", 1)
  optimizer = create_optimizer(config.optimizer, t.num_steps)
  schedule = learning_rate_schedule(config.optimizer, t.num_steps)
  is_main = jax.process_index() == 0
  if is_main:
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json_best_effort(indent=2))
  writer = reporting.MetricWriter(workdir, enabled=is_main)

  state = init_state(objective, optimizer, config.seed)
  manager = checkpoint_manager(workdir, config)
  restored = restore_checkpoint(manager, state)
  if restored is not None:
    state = restored
    logging.info("Resumed from %s at step %d", manager.directory, int(state.step))
  start = int(state.step)
  num_params = sum(int(np.prod(p.shape)) for p in jax.tree_util.tree_leaves(state.params))
  logging.info("%d parameters; %d devices x %d examples per device (global batch %d)",
               num_params, len(devices) * jax.process_count(), per_device, t.batch_size)

  options = compiler_options(config)
  p_train = pmap(make_train_step(objective, optimizer, config.optimizer.ema_rate, schedule,
                                 unroll_substeps(config)), devices, options,
                 donate_argnums=(0,))
  p_eval = pmap(make_eval_step(objective), devices, compiler_options(config, "eval"))
  state_rep = replicate(state, devices)
  eval_key = jax.random.fold_in(jax.random.PRNGKey(config.seed), 0xE7A1)

  def batches_from(step):
    """[local_devices, substeps, per_device, ...] for steps step..step+substeps-1."""
    per_step = [data_lib.get_batch(dataset.train, seed=config.seed, step=s,
                                   global_batch_size=t.batch_size,
                                   process_index=jax.process_index(),
                                   process_count=jax.process_count(),
                                   local_device_count=len(devices),
                                   random_flip=config.data.get("random_flip", False))
                for s in range(step, step + substeps)]
    return np.stack(per_step, axis=1)

  if start >= t.num_steps:
    logging.info("already trained to step %d (training.num_steps=%d): evaluating only", start,
                 t.num_steps)
    writer.close()
    return TrainResult(state, evaluate(config, workdir))
  def eval_and_sample(step, ema_rep):
    bound = evaluate_bound(objective, p_eval, ema_rep, dataset.test, config, devices,
                           jax.random.fold_in(eval_key, step))
    summary = _write_eval(workdir, step, objective, bound, dataset, writer)
    if is_main:
      logging.info("eval at step %d: %s", step, reporting.format_summary(summary))
    _write_samples(workdir, step, objective, ema_rep, config, devices, dataset,
                   jax.random.fold_in(eval_key, step + 1))
    return summary

  summary = {}
  step = start
  if step == 0 and config.eval.get("at_start", False):
    summary = eval_and_sample(0, state_rep.ema_params)
  t0, step_t0 = time.time(), step
  with _StopSignal() as stop:
    while step < t.num_steps:
      state_rep, metrics = p_train(state_rep, batches_from(step))
      step += substeps
      loss = np.asarray(metrics["loss"][0])
      if not np.all(np.isfinite(loss)):
        bad = step - substeps + int(np.argmin(np.isfinite(loss)))
        raise NonFiniteLossError(
            f"non-finite loss {loss[np.argmin(np.isfinite(loss))]} at step {bad}; the run "
            f"stopped and its last good checkpoint (step {manager.latest_step()}) is kept")
      if step % t.steps_per_log == 0 or step == t.num_steps:
        host = {k: float(np.asarray(v[0])[-1]) for k, v in metrics.items()}
        elapsed = time.time() - t0
        rate = (step - step_t0) / max(elapsed, 1e-9)
        host.update(steps_per_s=rate, images_per_s=rate * t.batch_size,
                    eta_s=(t.num_steps - step) / max(rate, 1e-9))
        writer.write(step, "train", host)
        if is_main:
          logging.info(_log_line(step, t.num_steps, host, rate, rate * t.batch_size,
                                 host["eta_s"]))
        t0, step_t0 = time.time(), step
      final = step >= t.num_steps
      if step % t.steps_per_save == 0 or final or stop.received:
        save_checkpoint(manager, unreplicate(state_rep))
      if step % t.steps_per_eval == 0 or final:
        summary = eval_and_sample(step, state_rep.ema_params)
      if stop.received:
        logging.warning("signal %d: saved step %d and stopping", stop.received, step)
        break
  writer.close()
  return TrainResult(unreplicate(state_rep), summary)


def _restore_for_eval(config, workdir):
  dataset, objective, devices, _ = _setup(config)
  optimizer = create_optimizer(config.optimizer, config.training.num_steps)
  template = init_state(objective, optimizer, config.seed)
  manager = checkpoint_manager(workdir, config, read_only=True)
  state = restore_checkpoint(manager, template)
  if state is None:
    raise FileNotFoundError(f"no checkpoint in {os.path.join(workdir, 'checkpoints')}: train "
                            f"first (--mode=train)")
  return dataset, objective, devices, state


def evaluate(config: ml_collections.ConfigDict, workdir: str, full: bool = False) -> dict:
  """Bound decomposition of the latest checkpoint's EMA params on the held-out split.

  full=True (--mode=bpd) uses every test example regardless of eval.num_examples.
  """
  dataset, objective, devices, state = _restore_for_eval(config, workdir)
  if full:
    config = ml_collections.ConfigDict(config.to_dict())
    config.eval.num_examples = 0
  p_eval = pmap(make_eval_step(objective), devices, compiler_options(config, "eval"))
  step = int(state.step)
  bound = evaluate_bound(objective, p_eval, replicate(state.ema_params, devices), dataset.test,
                         config, devices, jax.random.fold_in(jax.random.PRNGKey(config.seed),
                                                             0xB0D))
  writer = reporting.MetricWriter(workdir, enabled=jax.process_index() == 0)
  summary = _write_eval(workdir, step, objective, bound, dataset, writer)
  writer.close()
  logging.info("bound at step %d: %s", step, reporting.format_summary(summary))
  return summary


def sample(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Write a PNG grid of samples from the latest checkpoint's EMA params."""
  dataset, objective, devices, state = _restore_for_eval(config, workdir)
  _write_samples(workdir, int(state.step), objective, replicate(state.ema_params, devices), config,
                 devices, dataset, jax.random.fold_in(jax.random.PRNGKey(config.seed), 0x5A))
