"""Training objectives: a denoiser network composed with a bound (DDPM or VDM).

An objective knows the math and the network, nothing of devices or files. It offers, for ONE
device's share of a batch:

- `init(key)` -> params (a pytree);
- `encode(v, keys)` -> x: data as stored (integer levels, or float vectors) to the model's scale
  (DESIGN.md: v -> 2v/(K-1) - 1), with uniform dequantization when asked;
- `loss(params, x, batch_info, dropout_key, sampler_state)` -> (per-example loss [B], aux
  dict); `batch_info` holds the step key, the examples' indices in the GLOBAL batch and its
  size; per-example draws come from fold_in(step key, index), so the noise an example sees
  does not depend on how the batch is split over devices and hosts;
- `bound(params, x, key)` -> dict of per-example bound terms in bits/dim;
- `sample(params, key, n)` -> n samples on the data scale ([-1, 1] for images);
- `update_sampler(sampler_state, aux_all)` for importance-sampled timesteps;
- bits-back coding (`vdm.coding`) of integer data: `check_codable()`, `chain_bound(params, x,
  key)` (the bound of the chain the coder runs, bits/dim [B]), `encode_bits(params, levels,
  message, options)` and `decode_bits(params, message, num_examples, options)` with options
  = `coding_options(config.coding)`.

"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from vdm import checks
from vdm import random_streams as streams
from vdm.diffusion import iwbound, ode
from vdm.diffusion import timesteps as timestep_samplers
from vdm.diffusion.ddpm import GaussianDiffusion
from vdm.diffusion.encoding import (decode, dequantization_offset_bpd, dequantize as dequantize_fn,
                                    encode)
from vdm.diffusion.schedules import get_beta_schedule

OBJECTIVES = ("ddpm", "vdm")
DENOISERS = ("unet", "mlp")
TIMESTEP_SAMPLERS = ("uniform", "importance")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def build_denoiser(model_config, data_shape: tuple, out_channels: int, conditioning: str = "t",
                   gamma_range: tuple = (-13.3, 5.0)):
  """The Flax denoiser named by `model.denoiser` for data of per-example shape data_shape."""
  kind = checks.choice("model.denoiser", model_config.denoiser, DENOISERS)
  dtype = DTYPES[checks.choice("model.dtype", model_config.dtype, tuple(DTYPES))]
  if kind == "unet":
    from vdm.models.unet import UNet
    if len(data_shape) != 3:
      raise ValueError(f"model.denoiser='unet' needs image data [H, W, C]; got per-example shape "
                       f"{data_shape}: use model.denoiser='mlp' for vector data")
    return UNet(ch=model_config.ch, ch_mult=tuple(model_config.ch_mult),
                num_res_blocks=model_config.num_res_blocks,
                attn_resolutions=tuple(model_config.attn_resolutions),
                dropout=model_config.dropout, out_channels=out_channels,
                resamp_with_conv=model_config.resamp_with_conv,
                num_groups=model_config.num_groups, conditioning=conditioning,
                gamma_min=gamma_range[0], gamma_max=gamma_range[1],
                fourier_features=tuple(model_config.fourier_features),
                zero_init_out=model_config.zero_init_out, dtype=dtype)
  if len(data_shape) != 1:
    raise ValueError(f"model.denoiser='mlp' needs vector data [D]; got per-example shape "
                     f"{data_shape}")
  from vdm.models.mlp import MLPDenoiser
  return MLPDenoiser(hidden=model_config.mlp_hidden, num_blocks=model_config.mlp_num_blocks,
                     out_dim=out_channels, dropout=model_config.dropout,
                     conditioning=conditioning,
                     zero_init_out=model_config.zero_init_out)


def _num_dims(shape) -> int:
  return int(np.prod(shape))


def encode_data(v, num_levels: Optional[int], dequantize: bool, keys=None):
  """Stored data [B, ...] -> model scale; uniform dequantization needs per-example keys [B]."""
  if not dequantize:
    return encode(v, num_levels)
  if keys is None:
    raise ValueError("dequantized data need per-example keys")
  return jax.vmap(lambda k, vi: dequantize_fn(k, vi, num_levels))(keys, v)


def _per_example_normal(keys, shape, dtype):
  """One standard-normal draw of `shape` per key: keys [B] -> [B, *shape]."""
  return jax.vmap(lambda k: jax.random.normal(k, shape, dtype))(keys)


class BatchInfo(NamedTuple):
  """Where a device's examples sit in the global batch of one training step."""
  step_key: jax.Array      # PRNG key of the step (the same on every device)
  index: jax.Array         # int32 [B] positions in the global batch
  global_batch: int        # global batch size (static)

  def keys(self, stream: int):
    """Per-example keys [B] for an independent stream of draws."""
    k = jax.random.fold_in(self.step_key, stream)
    return jax.vmap(lambda i: jax.random.fold_in(k, i))(self.index)


@dataclasses.dataclass(frozen=True)
class DDPMObjective:
  """Ho et al. (2020) / Nichol & Dhariwal (2021): GaussianDiffusion + a t-conditioned denoiser."""
  diffusion: GaussianDiffusion
  net: Any
  data_shape: tuple
  timestep_sampler: str = "uniform"
  clip_denoised: bool = True
  # Clip pred_x0 to [-1, 1] inside the bound as well (the reverse process's mean is then that of
  # the clipped prediction: still a valid bound). The DDPM and improved-diffusion evaluation
  # code do (calc_bpd_loop(clip_denoised=True)); the default keeps the unclipped network.
  clip_bound: bool = False
  num_levels: Optional[int] = None   # K of the stored data (None: continuous vectors)
  dequantize: bool = False           # uniform dequantization (the bound then adds offset_bpd)
  offset_bpd: float = 0.0

  def encode(self, v, keys=None):
    return encode_data(v, self.num_levels, self.dequantize, keys)

  report_keys = ("mse", "vb")   # per-example aux averaged into the train metrics

  @property
  def num_timesteps(self) -> int:
    return self.diffusion.num_timesteps

  @property
  def bound_network_passes(self) -> int:
    """Network evaluations per example of `bound` (one per timestep)."""
    return self.diffusion.num_timesteps

  @property
  def sample_network_passes(self) -> int:
    """Network evaluations per sample."""
    return self.diffusion.num_timesteps

  def init(self, key):
    x = jnp.zeros((1,) + tuple(self.data_shape), jnp.float32)
    return self.net.init({"params": key}, x, jnp.zeros((1,), jnp.int32), train=False)["params"]

  def model_fn(self, params, x_t, t):
    """Deterministic evaluation (dropout off): model_fn(params, x_t, t) of DESIGN.md."""
    return _apply_deterministic(self.net, params, x_t, t)

  def init_sampler(self):
    if self.timestep_sampler == "importance":
      return timestep_samplers.init(self.num_timesteps)
    return ()

  def loss(self, params, x, info: BatchInfo, dropout_key, sampler_state):
    """Per-example training loss of `diffusion.loss_type` and its parts, for one device.

    Args:
      x: encoded data [B, ...]; info: the examples' place in the global batch.
    Returns:
      (loss [B], aux dict of [B] arrays: mse, vb (bits/dim), t, weights, quartile).
    """
    T = self.num_timesteps
    t_keys = info.keys(streams.TIMESTEP)
    if self.timestep_sampler == "importance":
      t, weights = jax.vmap(lambda k: timestep_samplers.sample(sampler_state, k, 1))(t_keys)
      t, weights = t[:, 0], weights[:, 0]
    else:
      t = jax.vmap(lambda k: jax.random.randint(k, (), 0, T, jnp.int32))(t_keys)
      weights = jnp.ones(t.shape, x.dtype)
    noise = _per_example_normal(info.keys(streams.NOISE), x.shape[1:], x.dtype)
    train_fn = lambda p, x_t, tt: self.net.apply({"params": p}, x_t, tt, train=True,
                                                 rngs={"dropout": dropout_key})
    out = self.diffusion.training_losses(train_fn, params, x, None, t=t, weights=weights,
                                         noise=noise)
    aux = {"mse": out["mse"], "vb": out["vb"], "t": out["t"], "weights": out["weights"],
           "quartile": (4 * out["t"]) // T}
    return out["loss"], aux

  def update_sampler(self, sampler_state, t_all, vb_all):
    """Feed the all-gathered (t, unweighted vb) of a step to the importance sampler."""
    if self.timestep_sampler != "importance":
      return sampler_state
    return timestep_samplers.update(sampler_state, t_all, vb_all)

  def bound(self, params, x, key):
    """The full bound per example: dict total_bpd [B], prior_bpd [B], vb/xstart_mse/mse [B, T]."""
    out = self.diffusion.calc_bpd(self.model_fn, params, x, key, clip_denoised=self.clip_bound)
    if self.offset_bpd:
      out = dict(out, total_bpd=out["total_bpd"] + self.offset_bpd)
    return out

  def iw_bound(self, params, x, key, num_samples: int, chunk_size: int):
    """The K-sample importance-weighted bound over forward trajectories, bits/dim [B]:
    dict iw_bound_bpd, elbo_bpd (the K-sample average of one-sample bounds), ess."""
    out = iwbound.ddpm_iw_bound(self.diffusion, self.model_fn, params, x, key, num_samples,
                                sample_chunk_size=chunk_size, clip_denoised=self.clip_bound)
    return _iw_bpd(out, self.offset_bpd)

  def ode_process(self, params, interpolation: str = "auto"):
    """The probability-flow ODE's process of this model (vdm.diffusion.ode): its betas in
    continuous time with log alphas_cumprod interpolated (`ode.DDPMProcess`)."""
    del params
    return ode.DDPMProcess.from_diffusion(self.diffusion, interpolation)

  def ode_model(self, params):
    """(model function, its params) as `vdm.diffusion.ode.log_likelihood` calls them: the
    network as `solver_net` runs it inside the solver's loop."""
    return functools.partial(_apply_deterministic, solver_net(self.net)), params

  def ode_nll(self, params, x, key, options: dict, interpolation: str = "auto"):
    """Probability-flow ODE bits/dim [B] (`ode_nll_bpd`); see `_ode_nll`."""
    return _ode_nll(self, params, x, key, options, interpolation)

  def check_codable(self) -> None:
    _check_codable(self.num_levels, self.dequantize)

  def chain_bound(self, params, x, key):
    """calc_bpd's total_bpd [B]: the coded chain is the model's own T-step chain."""
    return self.bound(params, x, key)["total_bpd"]

  def encode_bits(self, params, levels, message, options: dict):
    """Bits-back encode levels [N, *data_shape] (integers 0..K-1) onto `message` through the
    T-step chain (`vdm.coding.diffusion.encode`); returns its EncodeResult."""
    from vdm.coding import diffusion as coding
    self.check_codable()
    return coding.encode(self.diffusion, self.model_fn, params, levels, message,
                         clip_denoised=self.clip_bound, **options)

  def decode_bits(self, params, message, num_examples: int, options: dict):
    """The inverse of `encode_bits`: int64 levels [num_examples, *data_shape]."""
    from vdm.coding import diffusion as coding
    self.check_codable()
    return coding.decode(self.diffusion, self.model_fn, params, message, num_examples,
                         self.data_shape, clip_denoised=self.clip_bound,
                         **_decode_options(options))

  def sample(self, params, key, n: int):
    return self.diffusion.p_sample_loop(self.model_fn, params, (n,) + tuple(self.data_shape), key,
                                        clip_denoised=self.clip_denoised)


def solver_net(net):
  """The denoiser as an ODE solve should run it (same parameters, same function).

  On XLA:CPU (jaxlib 0.10.2) the input gradients of `lax` convolutions run ~3-5x slower inside
  a while loop, as in every adaptive solver, than in a top-level program
  (experiments/bench_ode.py: unet vs unet_matmul); the U-Net's im2col-GEMM convolutions
  (`conv_impl="matmul"`, the same `kernel` [3, 3, C, O] parameters) do not slow down there. So
  on the CPU backend a U-Net with `conv_impl="lax"` is solved as its `"matmul"` clone; other
  networks and other backends are used as they are.
  """
  if jax.default_backend() == "cpu" and getattr(net, "conv_impl", None) == "lax":
    return net.clone(conv_impl="matmul")
  return net


def _apply_deterministic(net, params, x, cond):
  """net(x, t or gamma) with dropout off: the model_fn(params, x_t, t) of DESIGN.md."""
  return net.apply({"params": params}, x, cond, train=False)


def _ode_nll(objective, params, x, key, options: dict, interpolation: str = "auto") -> dict:
  """-log p(x) of the probability-flow ODE (Song et al. 2021, eq. 13), bits/dim [B].

  x: encoded data [B, ...]. Integer data on the grid (num_levels K, no data.dequantize) are
  dequantized here, uniformly on each level's bin (vdm.diffusion.encoding.dequantize), and
  log2((K-1)/2) is added: `ode_nll_bpd` is then an unbiased estimate of an upper bound on the
  discrete NLL in bits/dim (Theis et al. 2016; `vdm.diffusion.ode.discrete_bpd`), >= 0 in
  expectation. With data.dequantize the data arrive dequantized and the objective's offset is
  added (the same bound). Continuous data: -log p(x) / (D ln 2) of the density (may be < 0).
  Also `nfe` [B], the network evaluations of each example's solve.
  """
  k_deq, k_probe = jax.random.split(key)
  offset = objective.offset_bpd
  if objective.num_levels is not None and not objective.dequantize:
    x = dequantize_fn(k_deq, decode(x, objective.num_levels), objective.num_levels, x.dtype)
    offset = dequantization_offset_bpd(objective.num_levels)
  model_fn, model_params = objective.ode_model(params)
  out = ode.log_likelihood(model_fn, model_params, x, k_probe,
                           objective.ode_process(params, interpolation), **options)
  bpd = -out["log_likelihood"] / (_num_dims(x.shape[1:]) * math.log(2.0)) + offset
  return {"ode_nll_bpd": bpd, "nfe": jnp.broadcast_to(out["nfe"], bpd.shape).astype(bpd.dtype)}


def _check_codable(num_levels, dequantize) -> None:
  """Bits-back coding needs integer data and the discretized decoder over its K levels."""
  if num_levels is None:
    raise ValueError("bits-back coding (--mode=compress) needs integer data (data.num_levels "
                     "K of an image dataset); this run's data are continuous vectors, which no "
                     "finite code represents losslessly")
  if dequantize:
    raise ValueError("bits-back coding (--mode=compress) needs the discretized decoder over "
                     "the K levels; this run was trained with data.dequantize=True (a "
                     "continuous density): train with data.dequantize=False")


def coding_options(coding_config) -> dict:
  """The keyword options of `vdm.coding.diffusion.encode` from the config's coding group."""
  c = coding_config
  return dict(precision_bits=int(c.precision_bits), R=float(c.latent_range),
              batch_size=int(c.batch_size), seed=int(c.seed))


def _decode_options(options: dict) -> dict:
  """`coding_options` less the seed (decoding reads the seed words from the message)."""
  return {k: v for k, v in options.items() if k != "seed"}


def _iw_bpd(out: dict, offset_bpd: float) -> dict:
  """The bits/dim entries of an importance-weighted bound (+ the dequantization offset)."""
  return {"iw_bound_bpd": out["iw_bound_bpd"] + offset_bpd,
          "elbo_bpd": out["elbo_bpd"] + offset_bpd, "ess": out["ess"]}


def _clip_bound(d, levels) -> bool:
  """diffusion.clip_bound, allowed only for data on [-1, 1] (discrete levels)."""
  clip = bool(d.clip_bound)
  if clip and levels is None:
    raise ValueError("diffusion.clip_bound=True clips x0 predictions to [-1, 1] and needs data "
                     "on K levels in [-1, 1]; this data set is continuous (allowed: False)")
  return clip


def build_objective(config, data_shape: tuple, num_levels: Optional[int], denoiser=None):
  """The objective named by `model.objective`, validated before any compilation.

  Args:
    config: a config on configs/base.py; data_shape: per-example shape ([H, W, C] or [D]);
    num_levels: K of integer data, None for continuous data.
    denoiser: a Flax module to use instead of the config's (model.denoiser and its fields are
      then ignored). DDPM calls `denoiser.apply({'params': p}, x_t, t, train=bool,
      rngs={'dropout': key})` with x_t [B, *data_shape] and int32 timesteps t [B]; VDM the
      same with float log-SNR gamma [B] in place of t. Its output has the data's shape, with
      2C channels (or 2D features) when diffusion.var_type learns variances (first C: the
      mean parameterization, last C: the variance).
  """
  kind = checks.choice("model.objective", config.model.objective, OBJECTIVES)
  data_shape = tuple(int(s) for s in data_shape)
  channels = data_shape[-1]
  dequantize = bool(config.data.dequantize)
  if dequantize and num_levels is None:
    raise ValueError("data.dequantize=True needs integer data (num_levels); the data set is "
                     "continuous")
  offset = dequantization_offset_bpd(num_levels) if dequantize else 0.0
  levels = None if dequantize else num_levels
  if kind == "ddpm":
    d = config.diffusion
    sampler = checks.choice("diffusion.timestep_sampler", d.timestep_sampler, TIMESTEP_SAMPLERS)
    kwargs = {}
    if d.beta_schedule in ("linear", "quad"):
      kwargs = dict(beta_start=d.beta_start, beta_end=d.beta_end)
    betas = get_beta_schedule(d.beta_schedule, d.num_timesteps, **kwargs)
    diffusion = GaussianDiffusion(betas, d.mean_type, d.var_type, d.loss_type, num_levels=levels,
                                  decoder_approx=d.decoder_approx,
                                  hybrid_lambda=d.hybrid_lambda,
                                  t_chunk_size=d.t_chunk_size)
    out_channels = channels * (2 if diffusion.learns_variance else 1)
    net = denoiser if denoiser is not None else build_denoiser(config.model, data_shape,
                                                                out_channels)
    return DDPMObjective(diffusion, net, data_shape, sampler,
                         clip_denoised=d.clip_denoised and levels is not None,
                         clip_bound=_clip_bound(d, levels),
                         num_levels=num_levels, dequantize=dequantize, offset_bpd=offset)
  return build_vdm_objective(config, data_shape, num_levels, dequantize, offset, denoiser)


@dataclasses.dataclass(frozen=True)
class VDMObjective:
  """Kingma et al. (2021): the VDM bound with a gamma-conditioned denoiser and a log-SNR schedule.

  params = {"denoiser": ..., "gamma": ...}; losses are per-example nats from
  `vdm.diffusion.vdm.vdm_losses`, converted to bits/dim here (the edge of the math).
  """
  net: Any
  gamma_module: Any
  data_shape: tuple
  num_timesteps: int = 0           # 0 = continuous time
  antithetic: bool = True
  sample_steps: int = 200
  num_levels: Optional[int] = None
  dequantize: bool = False
  offset_bpd: float = 0.0
  report_keys = ("loss_recon", "loss_klz", "loss_diff")
  bound_network_passes = 1           # one Monte Carlo draw of t per example

  @property
  def sample_network_passes(self) -> int:
    return self.sample_steps

  @property
  def decoder_levels(self):
    return None if self.dequantize else self.num_levels

  def encode(self, v, keys=None):
    return encode_data(v, self.num_levels, self.dequantize, keys)

  def init(self, key):
    x = jnp.zeros((1,) + tuple(self.data_shape), jnp.float32)
    k1, k2 = jax.random.split(key)
    net = self.net.init({"params": k1}, x, jnp.zeros((1,), jnp.float32), train=False)["params"]
    gamma = self.gamma_module.init(k2, jnp.zeros((1,), jnp.float32))
    return {"denoiser": net, "gamma": gamma}

  def gamma_fn(self, gamma_params, t):
    return self.gamma_module.apply(gamma_params, t)

  def denoise_fn(self, params, z_t, g_t):
    """Deterministic eps-prediction (dropout off)."""
    return _apply_deterministic(self.net, params, z_t, g_t)

  def init_sampler(self):
    return ()

  def update_sampler(self, sampler_state, t_all, vb_all):
    return sampler_state

  def _to_bpd(self, losses):
    from vdm.diffusion.vdm import losses_to_bpd
    return losses_to_bpd(losses, _num_dims(self.data_shape))

  def loss(self, params, x, info: BatchInfo, dropout_key, sampler_state):
    """Per-example -ELBO estimate in bits/dim and its parts (loss_recon, loss_klz, loss_diff)."""
    from vdm.diffusion.vdm import discretize_times, vdm_losses
    # Antithetic times over the GLOBAL batch (VDM): t_i = mod(u0 + i / B_global, 1).
    if self.antithetic:
      u0 = jax.random.uniform(jax.random.fold_in(info.step_key, streams.ANTITHETIC), (), x.dtype)
      t = jnp.mod(u0 + info.index.astype(x.dtype) / info.global_batch, 1.0)
    else:
      t = jax.vmap(lambda k: jax.random.uniform(k, (), x.dtype))(info.keys(streams.TIMESTEP))
    t_model = discretize_times(t, self.num_timesteps) if self.num_timesteps else t
    train_fn = lambda p, z, g: self.net.apply({"params": p}, z, g, train=True,
                                              rngs={"dropout": dropout_key})
    nats = vdm_losses(train_fn, params["denoiser"], self.gamma_fn, params["gamma"], x, None,
                      self.decoder_levels, T=self.num_timesteps, t=t_model,
                      noise=_per_example_normal(info.keys(streams.NOISE), x.shape[1:], x.dtype),
                      noise_0=_per_example_normal(info.keys(streams.NOISE_0), x.shape[1:],
                                                  x.dtype))
    bpd = self._to_bpd(nats)
    aux = {k: bpd[k] for k in self.report_keys}
    aux["t"] = t_model
    aux["quartile"] = jnp.minimum((4 * t).astype(jnp.int32), 3)
    return bpd["loss"], aux

  @property
  def iw_num_timesteps(self) -> int:
    """T of the chain the importance-weighted bound runs over: vdm.num_timesteps, or for a
    continuous-time model its sampler's sample_steps (the discrete-time bound of T steps is a
    valid bound of the same model, VDM eq. 10-11)."""
    return self.num_timesteps or self.sample_steps

  def iw_bound(self, params, x, key, num_samples: int, chunk_size: int):
    """The K-sample importance-weighted bound over the discrete-time chain of
    `iw_num_timesteps` steps, bits/dim [B]: dict iw_bound_bpd, elbo_bpd, ess."""
    out = iwbound.vdm_iw_bound(self.denoise_fn, params["denoiser"], self.gamma_fn,
                               params["gamma"], x, key, self.decoder_levels,
                               self.iw_num_timesteps, num_samples, sample_chunk_size=chunk_size)
    return _iw_bpd(out, self.offset_bpd)

  def ode_process(self, params, interpolation: str = "auto"):
    """The probability-flow ODE's process: VDM's gamma(t) with the trained schedule."""
    del interpolation   # gamma(t) is already a function of continuous time
    return ode.VDMProcess(self.gamma_fn, params["gamma"])

  def ode_model(self, params):
    return functools.partial(_apply_deterministic, solver_net(self.net)), params["denoiser"]

  def ode_nll(self, params, x, key, options: dict, interpolation: str = "auto"):
    """Probability-flow ODE bits/dim [B] (`ode_nll_bpd`); see `_ode_nll`."""
    return _ode_nll(self, params, x, key, options, interpolation)

  def check_codable(self) -> None:
    _check_codable(self.num_levels, self.dequantize)

  def chain_bound(self, params, x, key):
    """The discrete-time VDM bound with `iw_num_timesteps` steps, bits/dim [B]: the chain the
    coder runs (for a continuous-time model a valid, looser bound; Kingma et al. eq. 10-11)."""
    from vdm.diffusion.vdm import vdm_losses
    nats = vdm_losses(self.denoise_fn, params["denoiser"], self.gamma_fn, params["gamma"], x,
                      key, self.decoder_levels, T=self.iw_num_timesteps,
                      antithetic=self.antithetic)
    return self._to_bpd(nats)["loss"]

  def _coder_args(self, params):
    return (self.denoise_fn, params["denoiser"], self.gamma_fn, params["gamma"],
            self.iw_num_timesteps, self.num_levels)

  def encode_bits(self, params, levels, message, options: dict):
    """Bits-back encode levels [N, *data_shape] through the `iw_num_timesteps`-step chain
    (`vdm.coding.diffusion.encode_vdm`); returns its EncodeResult."""
    from vdm.coding import diffusion as coding
    self.check_codable()
    return coding.encode_vdm(*self._coder_args(params), levels, message, **options)

  def decode_bits(self, params, message, num_examples: int, options: dict):
    """The inverse of `encode_bits`: int64 levels [num_examples, *data_shape]."""
    from vdm.coding import diffusion as coding
    self.check_codable()
    return coding.decode_vdm(*self._coder_args(params), message, num_examples, self.data_shape,
                             **_decode_options(options))

  def bound(self, params, x, key):
    """Per-example bound terms in bits/dim (one Monte Carlo draw of t and the noise)."""
    from vdm.diffusion.vdm import vdm_losses
    nats = vdm_losses(self.denoise_fn, params["denoiser"], self.gamma_fn, params["gamma"], x,
                      key, self.decoder_levels, T=self.num_timesteps,
                      antithetic=self.antithetic)
    bpd = self._to_bpd(nats)
    out = {f"{k}_bpd": bpd[k] for k in self.report_keys}
    out["total_bpd"] = bpd["loss"] + self.offset_bpd
    out["gamma_0"] = jnp.broadcast_to(self.gamma_fn(params["gamma"], jnp.zeros(())), (x.shape[0],))
    out["gamma_1"] = jnp.broadcast_to(self.gamma_fn(params["gamma"], jnp.ones(())), (x.shape[0],))
    return out

  def sample(self, params, key, n: int):
    from vdm.diffusion.vdm import sample
    return sample(self.denoise_fn, params["denoiser"], self.gamma_fn, params["gamma"],
                  (n,) + tuple(self.data_shape), key, self.sample_steps,
                  num_levels=self.decoder_levels)


GAMMA_TYPES = ("fixed_linear", "learned_linear", "learned_net")


def build_vdm_objective(config, data_shape, num_levels, dequantize, offset, denoiser=None):
  from vdm.diffusion.schedules import get_gamma_schedule
  v = config.vdm
  gamma_type = checks.choice("vdm.gamma_type", v.gamma_type, GAMMA_TYPES)
  gamma_module = get_gamma_schedule(gamma_type, gamma_min=v.gamma_min, gamma_max=v.gamma_max)
  if denoiser is None:
    denoiser = build_denoiser(config.model, data_shape, data_shape[-1], conditioning="gamma",
                              gamma_range=(v.gamma_min, v.gamma_max))
  net = denoiser
  T = int(v.num_timesteps)
  if T < 0:
    raise ValueError(f"config field vdm.num_timesteps must be >= 0 (0 = continuous), got {T}")
  return VDMObjective(net, gamma_module, tuple(data_shape), T, bool(v.antithetic),
                      int(v.sample_steps), num_levels, dequantize, offset)
