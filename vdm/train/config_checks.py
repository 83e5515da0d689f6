"""Every config field checked before anything is loaded or compiled, each error naming the field.

The fields and their defaults are those of configs/base.py, the one source of defaults: a
config that lacks a field of the base, or has one the base does not know (a typo), is refused.
Checks that need the data or the devices (batch sizes against the device count, a U-Net
against vector data) run in `vdm.train.devices.device_layout` and `vdm.objectives`.
"""
from __future__ import annotations

from vdm import checks
from vdm.train import rundir


def base_fields(config) -> dict:
  """The config's fields in the groups of configs/base.py, flattened ('training.num_steps').

  An experiment may add groups of its own (e.g. `paper`: settings of a paper script that the
  trainer does not read); those are left out here, and of the run-directory comparison.
  """
  return rundir.base_fields_of_json(rundir.config_as_json(config))


def check_fields_match_base(config) -> None:
  """Refuse a config whose fields in the base groups are not exactly configs/base.py's."""
  from configs.base import get_base_config
  base, have = set(base_fields(get_base_config())), set(base_fields(config))
  missing, extra = sorted(base - have), sorted(have - base)
  if missing or extra:
    parts = []
    if missing:
      parts.append(f"missing fields {missing} (build configs on configs.base.get_base_config())")
    if extra:
      parts.append(f"unknown fields {extra} (not in configs/base.py: a typo?)")
    raise ValueError("config: " + "; ".join(parts))


def validate_config(config) -> None:
  """Raise a ValueError naming the field for any config value the library cannot use."""
  from vdm import data as data_lib
  from vdm import objectives
  from vdm.diffusion import ddpm, schedules
  from vdm.train import devices, state
  check_fields_match_base(config)
  checks.nonnegative_int("seed", config.seed)

  d = config.data
  checks.choice("data.dataset", d.dataset, data_lib.DATASETS)
  for name in ("random_flip", "pad_to_32", "use_tfds", "dequantize"):
    checks.boolean(f"data.{name}", d[name])
  checks.nonnegative_int("data.seed", d.seed)
  checks.positive_int("data.dim", d.dim)
  checks.positive_int("data.num_train", d.num_train)
  checks.positive_int("data.num_test", d.num_test)

  m = config.model
  checks.choice("model.objective", m.objective, objectives.OBJECTIVES)
  checks.choice("model.denoiser", m.denoiser, objectives.DENOISERS)
  checks.choice("model.dtype", m.dtype, tuple(objectives.DTYPES))
  for name in ("ch", "num_groups"):
    checks.positive_int(f"model.{name}", m[name])
  checks.integer("model.mlp_hidden", m.mlp_hidden, minimum=4)
  for name in ("num_res_blocks", "mlp_num_blocks"):   # 0 is a valid (shallow) network
    checks.nonnegative_int(f"model.{name}", m[name])
  for i, mult in enumerate(m.ch_mult):
    checks.positive_int(f"model.ch_mult[{i}]", mult)
  if not len(m.ch_mult):
    raise ValueError("model.ch_mult must list at least one channel multiplier, got ()")
  for i, r in enumerate(m.attn_resolutions):
    checks.positive_int(f"model.attn_resolutions[{i}]", r)
  for i, n in enumerate(m.fourier_features):
    checks.integer(f"model.fourier_features[{i}]", n)
  checks.number("model.dropout", m.dropout, 0.0, 1.0, high_open=True)
  for name in ("resamp_with_conv", "zero_init_out"):
    checks.boolean(f"model.{name}", m[name])

  f = config.diffusion
  checks.positive_int("diffusion.num_timesteps", f.num_timesteps)
  checks.choice("diffusion.beta_schedule", f.beta_schedule, schedules.BETA_SCHEDULES)
  checks.number("diffusion.beta_start", f.beta_start, 0.0, 1.0, low_open=True)
  checks.number("diffusion.beta_end", f.beta_end, 0.0, 1.0, low_open=True)
  checks.choice("diffusion.mean_type", f.mean_type, ddpm.MEAN_TYPES)
  checks.choice("diffusion.var_type", f.var_type, ddpm.VAR_TYPES)
  checks.choice("diffusion.loss_type", f.loss_type, ddpm.LOSS_TYPES)
  checks.number("diffusion.hybrid_lambda", f.hybrid_lambda, 0.0)
  checks.choice("diffusion.timestep_sampler", f.timestep_sampler, objectives.TIMESTEP_SAMPLERS)
  checks.choice("diffusion.decoder_approx", f.decoder_approx, (None, "tanh"))
  checks.boolean("diffusion.clip_denoised", f.clip_denoised)
  checks.boolean("diffusion.clip_bound", f.clip_bound)
  checks.positive_int("diffusion.t_chunk_size", f.t_chunk_size)

  v = config.vdm
  checks.choice("vdm.gamma_type", v.gamma_type, objectives.GAMMA_TYPES)
  gmin = checks.number("vdm.gamma_min", v.gamma_min)
  gmax = checks.number("vdm.gamma_max", v.gamma_max)
  if gmin >= gmax:
    raise ValueError(f"vdm.gamma_min ({gmin}) must be below vdm.gamma_max ({gmax})")
  checks.nonnegative_int("vdm.num_timesteps", v.num_timesteps)
  checks.boolean("vdm.antithetic", v.antithetic)
  checks.positive_int("vdm.sample_steps", v.sample_steps)

  o = config.optimizer
  checks.choice("optimizer.name", o.name, state.OPTIMIZERS)
  checks.number("optimizer.learning_rate", o.learning_rate, 0.0, low_open=True)
  checks.nonnegative_int("optimizer.warmup_steps", o.warmup_steps)
  checks.choice("optimizer.schedule", o.schedule, state.LR_SCHEDULES)
  checks.number("optimizer.b1", o.b1, 0.0, 1.0, high_open=True)
  checks.number("optimizer.b2", o.b2, 0.0, 1.0, high_open=True)
  checks.number("optimizer.eps", o.eps, 0.0, low_open=True)
  checks.number("optimizer.weight_decay", o.weight_decay, 0.0)
  checks.number("optimizer.grad_clip", o.grad_clip, 0.0)
  checks.number("optimizer.ema_rate", o.ema_rate, 0.0, 1.0, high_open=True)

  t = config.training
  for name in ("num_steps", "batch_size", "steps_per_log", "steps_per_eval", "steps_per_save",
               "substeps", "keep_checkpoints"):
    checks.positive_int(f"training.{name}", t[name])
  for name in ("steps_per_log", "steps_per_eval", "steps_per_save"):
    if t[name] % t.substeps:
      raise ValueError(f"config field training.{name}={t[name]} must be a multiple of "
                       f"training.substeps={t.substeps} (the steps taken per dispatch)")
  if t.unroll_substeps is not None:
    checks.boolean("training.unroll_substeps", t.unroll_substeps)
  checks.nonnegative_int("training.keep_period", t.keep_period)
  checks.nonnegative_int("training.num_devices", t.num_devices)
  checks.choice("training.compiler_options", t.compiler_options, devices.COMPILER_OPTIONS)

  e = config.eval
  checks.positive_int("eval.batch_size", e.batch_size)
  checks.nonnegative_int("eval.num_examples", e.num_examples)
  checks.nonnegative_int("eval.num_samples", e.num_samples)
  checks.boolean("eval.at_start", e.at_start)
  check_likelihood_fields(config.likelihood)
  check_coding_fields(config.coding)


def check_likelihood_fields(l) -> None:
  """The `likelihood` group (--mode=iwbound, --mode=ode_nll), each field named on error."""
  from vdm.diffusion import ode
  checks.nonnegative_int("likelihood.num_examples", l.num_examples)
  checks.positive_int("likelihood.batch_size", l.batch_size)
  if not len(l.iw_num_samples):
    raise ValueError("likelihood.iw_num_samples must list at least one K, got ()")
  for i, k in enumerate(l.iw_num_samples):
    checks.positive_int(f"likelihood.iw_num_samples[{i}]", k)
  checks.positive_int("likelihood.iw_chunk_size", l.iw_chunk_size)
  checks.number("likelihood.ode_rtol", l.ode_rtol, 0.0, low_open=True)
  checks.number("likelihood.ode_atol", l.ode_atol, 0.0, low_open=True)
  checks.choice("likelihood.ode_solver", l.ode_solver, ode.SOLVERS)
  checks.nonnegative_int("likelihood.ode_num_steps", l.ode_num_steps)
  checks.number("likelihood.ode_t0", l.ode_t0, 0.0, 1.0, low_open=True, high_open=True)
  checks.choice("likelihood.ode_divergence", l.ode_divergence, ode.DIVERGENCES)
  checks.choice("likelihood.ode_probe", l.ode_probe, ode.PROBES)
  checks.positive_int("likelihood.ode_num_probes", l.ode_num_probes)
  checks.choice("likelihood.ode_interpolation", l.ode_interpolation, ode.DDPM_INTERPOLATIONS)


def check_coding_fields(c) -> None:
  """The `coding` group (--mode=compress, --mode=decompress), each field named on error."""
  from vdm.coding import diffusion as coding
  checks.nonnegative_int("coding.num_examples", c.num_examples)
  checks.positive_int("coding.batch_size", c.batch_size)
  checks.integer("coding.precision_bits", c.precision_bits, coding.MIN_PRECISION_BITS,
                 coding.MAX_PRECISION_BITS)
  checks.number("coding.latent_range", c.latent_range, 0.0, low_open=True)
  checks.nonnegative_int("coding.seed", c.seed)
  checks.boolean("coding.verify", c.verify)
  checks.positive_int("coding.bound_draws", c.bound_draws)
