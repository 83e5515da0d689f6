"""Importance-weighted bounds over whole forward trajectories of a diffusion (issue 10).

The latent variables of a diffusion are its whole chain h = x_{1:T}, and the forward process is
a proposal q(h | x_0). Burda et al. (2016) apply to it unchanged:

  L_K(x_0) = log (1/K) sum_{k=1}^K w_k,   w_k = p(x_0, h^k) / q(h^k | x_0),   h^k ~ q(. | x_0) iid,

with E[L_1] = E_q[log w] = the ELBO (Ho et al. 2020, eq. 5; what `GaussianDiffusion.calc_bpd`
computes term by term), E[L_K] <= E[L_{K+1}] <= log p(x_0), and L_K -> log p(x_0) as K -> inf
(log p(x_0) of the discrete-time chain, decoder included). Three chains:

- `ddpm_iw_bound`: `GaussianDiffusion` (Ho et al. 2020).
- `vdm_iw_bound`: the discrete-time VDM chain (Kingma et al. 2021, T >= 1 steps).
- `discrete_iw_bound`: the enumerable discrete diffusion of `oracles.DiscreteDiffusion`, whose
  exact log p(x_0) is `oracles.log_marginal_chain`.

Log-weights. Each log-weight is a sum of about T terms of O(D) nats, and log p and log q
nearly cancel. It is therefore never formed as log p - log q: it is accumulated step by step as
  log w = [log p(x_T) + log p(x_0 | x_1) - log q(x_1 | x_0)]
          + sum_{t >= 2} [log p(x_{t-1} | x_t) - log q(x_t | x_{t-1})]     (Ho et al. eq. 9 pairing)
and every Gaussian pair is written so that its parts cancel analytically: with x_t drawn as
m_q + s_q eps and r = (x_{t-1} - m_p) / s_p,
  log p(x_{t-1} | x_t) - log q(x_t | x_{t-1}) = (log s_q - log s_p) + (eps - r)(eps + r) / 2
per dimension (the log 2 pi parts cancel; the 2 pi of the prior N(0, I) is cancelled against the
one of q(x_1 | x_0)). The per-dimension quadratic parts are computed in the data's dtype (the
network's); the per-step constants (D/2 times a log-variance ratio, for fixed variances taken as
one difference of the float64 tables) are added once per example, and the sums over the
dimensions and over the steps are accumulated in float64 when 64-bit mode is on
(`jax.enable_x64()`, whatever the data's dtype), else in float32, with compensated (Neumaier)
summation over the steps. Results are in the accumulation dtype.

float32 behaviour. The chain x_1..x_T and the network run in the data's dtype. In float32 a drawn
x_t is rounded (by u |x_t|, u = 6e-8, so the noise that log q is evaluated with is off by
u |x_t| / s_q), r loses about log2(|x_{t-1}| / s_p) bits to the difference x_{t-1} - m_p, and
the network's own arithmetic rounds (an eps-predictor's x0 = (x_t - sqrt(1 - abar) eps) /
sqrt(abar) amplifies it by 1/sqrt(abar_t)). Measured for D = 3072, T = 1000 (DDPM linear
schedule, fixed_large, the Bayes-optimal model of Gaussian data, continuous or K = 256 decoder):
float32 data give log-weights within about 1e-2 nats (4e-6 bits/dim) of the float64 chain driven
by the same noise, a shift nearly common to all trajectories; float32 accumulation (64-bit mode
off) adds about 1e-3 nats on log-weights of 2.5e3 to 1.7e4 nats. The spread of the log-weights
between trajectories is tens of nats there, so float32 is adequate for L_K in bits/dim; the
identities (L_K = log p(x_0) for a tight model, E[L_1] = the closed-form ELBO) are checked in
float64.

Randomness. Trajectory k of every example uses key_k = fold_in(key, k); the noise of step j is
normal(fold_in(key_k, j), x.shape). So the result does not depend on `sample_chunk_size`, and
the first K' trajectories of a call with K > K' samples are those of the call with K'.

Cost: one network evaluation per (timestep, trajectory, example): K * T per example. The K
trajectories are visited in chunks of `sample_chunk_size`; within a chunk one `lax.scan` over
the timesteps carries the current latent of every (trajectory, example) and calls the network
once per step on [sample_chunk_size * B] inputs, so memory is O(sample_chunk_size * B * D),
independent of T and K.

Units (the rule of `vdm.diffusion`): keys with `bpd` are bits per dimension (nats / (D ln 2)),
the rest nats. `L_K` and `elbo` are lower bounds on log p(x_0) (nats, negative for discrete
data); `iw_bound_bpd` = -L_K / (D ln 2) and `elbo_bpd` = -elbo / (D ln 2) are upper bounds on
the negative log-likelihood in bits/dim, the sign of `calc_bpd`'s `total_bpd`.
"""
from __future__ import annotations

import math
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from vdm import checks
from vdm.diffusion import gaussian as G
from vdm.diffusion import vdm as V
from vdm.diffusion.ddpm import GaussianDiffusion
from vdm.diffusion.oracles import DiscreteDiffusion, reverse_log_probs
from vdm.diffusion.schedules import alpha_sigma_from_gamma
from vdm.static_fn import static_fn

DEFAULT_SAMPLE_CHUNK_SIZE = 16


# -------------------------------------------------------------------------------- helpers

def _acc_dtype():
  """float64 when 64-bit mode is on, else float32 (read at trace time)."""
  return jnp.asarray(0.0).dtype


def _check_common(num_samples, sample_chunk_size, return_log_weights):
  num_samples = checks.positive_int("num_samples", num_samples)
  sample_chunk_size = checks.optional_positive_int("sample_chunk_size", sample_chunk_size)
  return_log_weights = checks.boolean("return_log_weights", return_log_weights)
  chunk = num_samples if sample_chunk_size is None else min(sample_chunk_size, num_samples)
  return num_samples, chunk, return_log_weights


def _check_key(key):
  if key is None:
    raise ValueError("key must be a PRNG key (jax.random.PRNGKey or jax.random.key), got None")
  return key


def _neumaier_add(acc, comp, term):
  """One step of Neumaier's compensated summation: (acc + term, running compensation)."""
  s = acc + term
  comp = comp + jnp.where(jnp.abs(acc) >= jnp.abs(term), (acc - s) + term, (term - s) + acc)
  return s, comp


def _neumaier_total(acc, comp):
  """The compensated sum; a non-finite sum (a zero-probability path: -inf) is kept as it is."""
  return jnp.where(jnp.isfinite(acc), acc + comp, acc)


def _chunks(num_samples, chunk):
  """Trajectory indices [num_chunks, chunk], padded past num_samples (the padding is dropped)."""
  num_chunks = -(-num_samples // chunk)
  return jnp.arange(num_chunks * chunk, dtype=jnp.int32).reshape(num_chunks, chunk)


def _summarize(log_w, num_dims, return_log_weights):
  """log_w [B, K] nats -> the result dict (module docstring)."""
  K = log_w.shape[-1]
  lse = jax.scipy.special.logsumexp(log_w, axis=-1)
  L_K = lse - math.log(K)
  elbo = jnp.mean(log_w, axis=-1)
  ess = jnp.exp(2.0 * lse - jax.scipy.special.logsumexp(2.0 * log_w, axis=-1))
  scale = 1.0 / (num_dims * G.LOG2)
  out = {"L_K": L_K, "elbo": elbo, "iw_bound_bpd": -L_K * scale, "elbo_bpd": -elbo * scale,
         "ess": ess}
  if return_log_weights:
    out["log_weights"] = log_w
  return out


def _run_chunks(one_chunk, num_samples, chunk, batch):
  """lax.map of one_chunk(ks [chunk]) -> [chunk, B] over the chunks -> log_w [B, K]."""
  ks = _chunks(num_samples, chunk)
  lw = jax.lax.map(one_chunk, ks)                         # [num_chunks, chunk, B]
  return lw.reshape(-1, batch)[:num_samples].T            # [B, K]


def _noise(key, ks, step, shape, dtype):
  """[chunk, *shape] standard normals: trajectory k's noise of step `step` (module docstring)."""
  return jax.vmap(lambda k: jax.random.normal(
      jax.random.fold_in(jax.random.fold_in(key, k), step), shape, dtype))(ks)


def _flat_sum(x, dtype):
  """Sum over all axes but the first, in dtype: [N, ...] -> [N]."""
  return G.sum_flat(x.astype(dtype))


# ------------------------------------------------------------------------------ DDPM chain

def ddpm_iw_bound(diffusion: GaussianDiffusion, model_fn: Callable, params, x0, key,
                  num_samples: int, sample_chunk_size: Optional[int] = DEFAULT_SAMPLE_CHUNK_SIZE,
                  clip_denoised: bool = False, return_log_weights: bool = False):
  """The K-sample importance-weighted bound over forward trajectories of a GaussianDiffusion.

  Indexing. The paper's chain is x_0 (data), x_1, ..., x_T with q(x_j | x_{j-1}) =
  N(sqrt(1 - beta_j) x_{j-1}, beta_j I), j = 1..T. In the code's timesteps (DESIGN.md) the
  latent of code timestep t in {0..T-1} is the paper's x_{t+1} and betas[t] is the paper's
  beta_{t+1}. Writing z_t for it and z_{-1} = x_0, one trajectory is
    z_0 = sqrt(1 - betas[0]) x_0 + sqrt(betas[0]) eps_0          (paper x_1 ~ q(x_1 | x_0)),
    z_t = sqrt(1 - betas[t]) z_{t-1} + sqrt(betas[t]) eps_t      (paper x_{t+1} ~ q(. | x_t)),
  and, with the model's p(z_{t-1} | z_t) from `p_mean_variance(model_fn(params, z_t, t), z_t, t)`
  (mean and variance of every var_type; at t = 0 it is the decoder p(x_0 | z_0)),
    log w = log N(z_{T-1}; 0, I) + log p(x_0 | z_0) + sum_{t=1}^{T-1} log p(z_{t-1} | z_t)
            - sum_{t=0}^{T-1} log q(z_t | z_{t-1}),
  accumulated as sum over t of [log p(z_{t-1} | z_t) - log q(z_t | z_{t-1})] (module docstring).
  The decoder is the discretized Gaussian over K = diffusion.num_levels bins (with
  diffusion.decoder_approx), or a Gaussian density when num_levels is None. So E[log w] is
  minus the bound of `calc_bpd` (total_bpd, in nats): E[elbo_bpd] = E[total_bpd].

  Args:
    diffusion: the GaussianDiffusion (static: one compilation per configuration).
    model_fn: model_fn(params, x_t [N, ..., C], t int32 [N]) -> [N, ..., C or 2C], called once
      per timestep on N = chunk * B inputs (a static argument keyed by `vdm.static_fn`).
    params: the model parameters (traced; new values reuse the compiled program).
    x0: [B, ..., C] float data (in [-1, 1] on the grid for the discretized decoder).
    key: a PRNG key.
    num_samples: K >= 1, trajectories per example.
    sample_chunk_size: trajectories evaluated together (None: all K); memory is linear in it.
    clip_denoised: passed to p_mean_variance (clips pred_x0 to [-1, 1]; default off, as in
      calc_bpd, so that the bound is that of the model as trained).
    return_log_weights: also return `log_weights` [B, K] (nats).
  Returns:
    dict of [B] arrays, float64 in 64-bit mode (else float32): `L_K` and `elbo` (nats; L_K and
    the mean log-weight), `iw_bound_bpd` (-L_K in bits/dim), `elbo_bpd` (minus the mean
    log-weight in bits/dim, the K-sample average of the one-sample estimate of calc_bpd's
    total_bpd), `ess` ((sum w)^2 / sum w^2, in [1, K]); and `log_weights` [B, K] on request.
  Cost: K * T network evaluations per example.
  """
  if not isinstance(diffusion, GaussianDiffusion):
    raise ValueError(f"diffusion must be a GaussianDiffusion, got {type(diffusion).__name__}")
  if not callable(model_fn):
    raise ValueError(f"model_fn must be callable, got {type(model_fn).__name__}")
  x0 = diffusion._check_x0(x0)
  key = _check_key(key)
  num_samples, chunk, return_log_weights = _check_common(num_samples, sample_chunk_size,
                                                         return_log_weights)
  clip_denoised = checks.boolean("clip_denoised", clip_denoised)
  return _ddpm_iw_jit(diffusion, static_fn(model_fn), params, x0, key, num_samples, chunk,
                      clip_denoised, return_log_weights)


def _ddpm_iw_impl(diffusion, model_fn, params, x0, key, num_samples, chunk, clip_denoised,
                  return_log_weights):
  d = diffusion
  T, B = d.num_timesteps, x0.shape[0]
  dt, acc_dt = x0.dtype, _acc_dtype()
  N = chunk * B
  x0_flat = jnp.broadcast_to(x0, (chunk,) + x0.shape).reshape((N,) + x0.shape[1:])
  D = int(np.prod(x0.shape[1:]))
  sqrt_alphas = jnp.asarray(np.sqrt(1.0 - d.betas), dt)
  sqrt_betas = jnp.asarray(np.sqrt(d.betas), dt)
  # Per-step constants, added once per example in the accumulation dtype (D times a rounded
  # float32 constant would be a systematic error of D ulps): D/2 log beta_t, and for fixed
  # variances D/2 (log beta_t - log sigma_t^2) from the float64 tables (small: no rounding).
  half_d_log_betas = jnp.asarray(0.5 * D * d.log_betas, acc_dt)
  if d.var_type == "fixed_small":
    half_d_log_ratio = jnp.asarray(0.5 * D * (d.log_betas - d.posterior_log_variance_clipped),
                                   acc_dt)
  elif d.var_type == "fixed_large":
    half_d_log_ratio = jnp.asarray(0.5 * D * (d.log_betas - d.fixed_large_log_variance), acc_dt)
  else:
    half_d_log_ratio = None
  bshape = (N,) + (1,) * (x0.ndim - 1)

  def decoder_term(z_prev, eps, mean, log_var, t):
    # log p(x_0 | z_0) - log q(z_0 | x_0) - (log 2 pi)/2 [the prior's, folded in].
    ll = d.decoder_log_likelihood(z_prev, mean, log_var)
    return _flat_sum(ll + 0.5 * jnp.square(eps), acc_dt) + half_d_log_betas[t]

  def step_term(z_prev, eps, mean, log_var, t):
    # log p(z_{t-1} | z_t) - log q(z_t | z_{t-1}), log 2 pi cancelled.
    r = (z_prev - mean) * jnp.exp(-0.5 * log_var)
    quad = 0.5 * (eps - r) * (eps + r)
    if half_d_log_ratio is not None:
      return _flat_sum(quad, acc_dt) + half_d_log_ratio[t]
    return (_flat_sum(quad - 0.5 * jnp.broadcast_to(log_var, quad.shape), acc_dt)
            + half_d_log_betas[t])

  def one_chunk(ks):
    def step(carry, t):
      z_prev, acc, comp = carry
      eps = _noise(key, ks, t, x0.shape, dt).reshape(x0_flat.shape)
      z_t = sqrt_alphas[t] * z_prev + sqrt_betas[t] * eps
      tb = jnp.full((N,), t, jnp.int32)
      out = d.p_mean_variance(model_fn(params, z_t, tb), z_t, tb, clip_denoised)
      mean = out["mean"].astype(dt)
      log_var = jnp.broadcast_to(out["log_variance"].astype(dt),
                                 jnp.broadcast_shapes(jnp.shape(out["log_variance"]), bshape))
      term = jax.lax.cond(t == 0, decoder_term, step_term, z_prev, eps, mean, log_var, t)
      acc, comp = _neumaier_add(acc, comp, term)
      return (z_t.astype(dt), acc, comp), None

    zeros = jnp.zeros((N,), acc_dt)
    (z_last, acc, comp), _ = jax.lax.scan(step, (x0_flat, zeros, zeros),
                                          jnp.arange(T, dtype=jnp.int32))
    acc, comp = _neumaier_add(acc, comp, _flat_sum(-0.5 * jnp.square(z_last), acc_dt))
    return _neumaier_total(acc, comp).reshape(chunk, B)

  log_w = _run_chunks(one_chunk, num_samples, chunk, B)
  return _summarize(log_w, D, return_log_weights)


# ------------------------------------------------------------------------------- VDM chain

def vdm_iw_bound(denoise_fn: Callable, params, gamma_fn: Callable, gamma_params, x, key,
                 num_levels, T: int, num_samples: int,
                 sample_chunk_size: Optional[int] = DEFAULT_SAMPLE_CHUNK_SIZE,
                 return_log_weights: bool = False):
  """The K-sample importance-weighted bound over forward trajectories of the T-step VDM chain.

  The latents are z_0, z_{1/T}, ..., z_1 (VDM Sec. 3.2, T + 1 of them: the decoder's z_0 is a
  latent too), with gamma_i = gamma_fn(gamma_params, i/T), alpha_i^2 = sigmoid(-gamma_i),
  sigma_i^2 = sigmoid(gamma_i). One trajectory is drawn forward,
    z_0 = alpha_0 x + sigma_0 eps_0,    z_i = (alpha_i / alpha_{i-1}) z_{i-1} + sigma_i sqrt(c_i) eps_i,
  c_i = -expm1(gamma_{i-1} - gamma_i) (so that q(z_i | x) = N(alpha_i x, sigma_i^2)), and
    log w = log N(z_1; 0, I) + sum_{i=1}^T log p(z_{i-1} | z_i) + log p(x | z_0)
            - log q(z_0 | x) - sum_{i=1}^T log q(z_i | z_{i-1}),
  with p(z_s | z_t) the ancestral sampler's Gaussian (`vdm.p_step_mean_std`: mean
  alpha_s/alpha_t (z_t - sigma_t c eps_hat), std sigma_s sqrt(c), eps_hat =
  denoise_fn(params, z_t, gamma_t)) and the decoder p(x | z_0) of `vdm.loss_recon` (K-way
  softmax over the grid, or N(z_0/alpha_0, exp(gamma_0)) when num_levels is None). Per step
  the pair is (log sigma_i - log sigma_{i-1}) + (eps_i^2 - r^2)/2 per dimension (module
  docstring). E[log w] = -(loss_recon + loss_klz + loss_diff) of `vdm_losses` with the same T.

  Args:
    denoise_fn: (params, z_t [N, ...], gamma_t [N]) -> eps_hat [N, ...]; N = chunk * B.
    params: the denoiser's parameters (traced).
    gamma_fn: (gamma_params, t) -> gamma(t), elementwise in t; gamma_params traced.
    x: [B, ...] float data (on the K-level grid when num_levels = K).
    key: a PRNG key.
    num_levels: K (discrete decoder) or None (continuous Gaussian decoder).
    T: the number of steps, >= 1.
    num_samples: K >= 1 trajectories per example (not to be confused with num_levels).
    sample_chunk_size, return_log_weights: as in `ddpm_iw_bound`.
  Returns:
    the dict of `ddpm_iw_bound`: `L_K`, `elbo` (nats per example), `iw_bound_bpd`,
    `elbo_bpd` (bits/dim, NLL sign), `ess`, and `log_weights` [B, K] (nats) on request.
  Cost: K * T denoiser evaluations per example.
  """
  if not callable(denoise_fn):
    raise ValueError(f"denoise_fn must be callable, got {type(denoise_fn).__name__}")
  if not callable(gamma_fn):
    raise ValueError(f"gamma_fn must be callable, got {type(gamma_fn).__name__}")
  num_levels = V.check_num_levels(num_levels)
  T = V.check_num_steps(T, allow_zero=False)
  V.check_data(x, num_levels)
  x = jnp.asarray(x)
  key = _check_key(key)
  num_samples, chunk, return_log_weights = _check_common(num_samples, sample_chunk_size,
                                                         return_log_weights)
  return _vdm_iw_jit(static_fn(denoise_fn), params, static_fn(gamma_fn), gamma_params, x, key,
                     num_levels, T, num_samples, chunk, return_log_weights)


def _vdm_iw_impl(denoise_fn, params, gamma_fn, gamma_params, x, key, num_levels, T,
                 num_samples, chunk, return_log_weights):
  B = x.shape[0]
  dt, acc_dt = x.dtype, _acc_dtype()
  N = chunk * B
  x_flat = jnp.broadcast_to(x, (chunk,) + x.shape).reshape((N,) + x.shape[1:])
  gammas = jnp.asarray(gamma_fn(gamma_params, jnp.arange(T + 1, dtype=dt) / T), dt)
  if gammas.shape != (T + 1,):
    raise ValueError(f"gamma_fn must be elementwise in t: gamma_fn(gamma_params, t [{T + 1}]) "
                     f"returned shape {gammas.shape}")
  log_alpha2 = jax.nn.log_sigmoid(-gammas)               # log alpha_i^2
  alpha_ratio = jnp.exp(0.5 * (log_alpha2[1:] - log_alpha2[:-1]))         # [T]
  std_q = (jnp.exp(0.5 * jax.nn.log_sigmoid(gammas[1:]))
           * jnp.sqrt(-jnp.expm1(gammas[:-1] - gammas[1:])))
  g0 = gammas[0]
  alpha_0, sigma_0 = alpha_sigma_from_gamma(g0)
  # Per-step constants D log sigma_i (per example, in the accumulation dtype; module docstring).
  D = int(np.prod(x.shape[1:]))
  half_d_log_sig2 = 0.5 * D * jax.nn.log_sigmoid(gammas.astype(acc_dt))   # [T + 1]

  def decoder_ll(eps_0):
    z0_rescaled = x_flat + jnp.exp(0.5 * g0) * eps_0     # z_0 / alpha_0, exactly
    if num_levels is None:
      return G.gaussian_log_likelihood(x_flat, z0_rescaled, 0.5 * g0)
    v = jnp.clip(jnp.round((x_flat + 1.0) * (num_levels - 1) / 2.0), 0,
                 num_levels - 1).astype(jnp.int32)
    logp = V.decoder_logits(z0_rescaled, g0, num_levels)
    return jnp.take_along_axis(logp, v[..., None], axis=-1)[..., 0]

  def one_chunk(ks):
    eps_0 = _noise(key, ks, 0, x.shape, dt).reshape(x_flat.shape)
    z_0 = (alpha_0 * x_flat + sigma_0 * eps_0).astype(dt)
    # log p(x | z_0) - log q(z_0 | x) - (log 2 pi)/2 [the prior's] per dimension.
    term0 = _flat_sum(decoder_ll(eps_0) + 0.5 * jnp.square(eps_0), acc_dt) + half_d_log_sig2[0]

    def step(carry, i):                                   # i = 1..T: z_{i-1} -> z_i
      z_s, acc, comp = carry
      eps = _noise(key, ks, i, x.shape, dt).reshape(x_flat.shape)
      z_t = (alpha_ratio[i - 1] * z_s + std_q[i - 1] * eps).astype(dt)
      g_t, g_s = gammas[i], gammas[i - 1]
      eps_hat = denoise_fn(params, z_t, jnp.full((N,), g_t, dt))
      if getattr(eps_hat, "shape", None) != z_t.shape:
        raise ValueError(f"denoise_fn must return eps_hat of the latent's shape {z_t.shape}, "
                         f"got {getattr(eps_hat, 'shape', type(eps_hat))}")
      mean, std_p = V.p_step_mean_std(z_t, eps_hat.astype(dt), g_t, g_s)
      r = (z_s - mean) / std_p
      term = (_flat_sum(0.5 * (eps - r) * (eps + r), acc_dt)
              + (half_d_log_sig2[i] - half_d_log_sig2[i - 1]))
      acc, comp = _neumaier_add(acc, comp, term)
      return (z_t, acc, comp), None

    zeros = jnp.zeros((N,), acc_dt)
    (z_1, acc, comp), _ = jax.lax.scan(step, (z_0, term0, zeros),
                                       jnp.arange(1, T + 1, dtype=jnp.int32))
    acc, comp = _neumaier_add(acc, comp, _flat_sum(-0.5 * jnp.square(z_1), acc_dt))
    return _neumaier_total(acc, comp).reshape(chunk, B)

  log_w = _run_chunks(one_chunk, num_samples, chunk, B)
  return _summarize(log_w, D, return_log_weights)


# -------------------------------------------------------------------- discrete diffusion

def discrete_iw_bound(dd: DiscreteDiffusion, params, x0_index, key, num_samples: int,
                      sample_chunk_size: Optional[int] = None,
                      return_log_weights: bool = False):
  """The K-sample importance-weighted bound for the enumerable discrete diffusion.

  Trajectories x_1, ..., x_T (joint-state indices) are drawn from the forward transition
  matrices, x_t ~ Cat(Q_t[x_{t-1}, :]) (`dd.transition_matrices()`, step t at index t-1), and
    log w = log p(x_T) + sum_{t=1}^T [log p(x_{t-1} | x_t) - log q(x_t | x_{t-1})]
  from the reverse tables of `params` (`oracles.reverse_log_probs`: prior_logits [S],
  reverse_logits [T, S, S]). With the true reverse process (`oracles.true_reverse_params`)
  every w equals p_data(x_0); as K -> inf, L_K -> `oracles.log_marginal_chain`(dd, params)[x_0].

  Args:
    dd: the DiscreteDiffusion (static).
    params: dict prior_logits [S], reverse_logits [T, S, S] (traced).
    x0_index: int joint index of x_0, a scalar or [B], in [0, S).
    key: a PRNG key.
    num_samples: K >= 1.
    sample_chunk_size: trajectories per chunk (None: all K at once).
    return_log_weights: also return `log_weights` [..., K] (nats).
  Returns:
    the dict of `ddpm_iw_bound` with the shape of x0_index ([] or [B]); bits per dimension
    with D = dd.num_vars (one dimension per categorical variable).
  """
  if not isinstance(dd, DiscreteDiffusion):
    raise ValueError(f"dd must be an oracles.DiscreteDiffusion, got {type(dd).__name__}")
  key = _check_key(key)
  idx = np.asarray(x0_index) if not isinstance(x0_index, jax.core.Tracer) else None
  x0_arr = jnp.asarray(x0_index)
  if not jnp.issubdtype(x0_arr.dtype, jnp.integer) or x0_arr.ndim > 1:
    raise ValueError(f"x0_index must be an integer scalar or [B] array of joint state indices, "
                     f"got dtype {x0_arr.dtype} and shape {x0_arr.shape}")
  if idx is not None and idx.size and (idx.min() < 0 or idx.max() >= dd.num_states):
    raise ValueError(f"x0_index must lie in [0, {dd.num_states - 1}] (S = K^D joint states), "
                     f"got values in [{idx.min()}, {idx.max()}]")
  num_samples, chunk, return_log_weights = _check_common(num_samples, sample_chunk_size,
                                                         return_log_weights)
  out = _discrete_iw_jit(dd, params, jnp.atleast_1d(x0_arr).astype(jnp.int32), key,
                         num_samples, chunk, return_log_weights)
  if x0_arr.ndim == 0:
    out = {k: v[0] for k, v in out.items()}
  return out


def _discrete_iw_impl(dd, params, x0_index, key, num_samples, chunk, return_log_weights):
  B, T = x0_index.shape[0], dd.num_steps
  log_prior, log_rev = reverse_log_probs(params)
  acc_dt = log_prior.dtype
  q = dd.transition_matrices()
  log_q = jnp.asarray(np.log(q), acc_dt)                              # [T, S, S]
  # Inverse-CDF sampling: x_t = #{b : CDF_t[x_{t-1}, b] <= u}, u ~ U[0, 1) (clipped at S - 1
  # against rounding of the last CDF entry below 1).
  cdf = jnp.asarray(np.cumsum(q, axis=-1), acc_dt)                    # [T, S, S]
  x0_flat = jnp.tile(x0_index, chunk)                                 # [chunk * B], k slowest

  def one_chunk(ks):
    def step(carry, t):                                   # t = 1..T: x_{t-1} -> x_t
      x_prev, acc, comp = carry
      u = jax.vmap(lambda k: jax.random.uniform(
          jax.random.fold_in(jax.random.fold_in(key, k), t), (B,), acc_dt))(ks).reshape(-1)
      x_t = jnp.sum(cdf[t - 1][x_prev] <= u[:, None], axis=-1)
      x_t = jnp.minimum(x_t, dd.num_states - 1).astype(jnp.int32)
      term = log_rev[t - 1][x_t, x_prev] - log_q[t - 1][x_prev, x_t]
      acc, comp = _neumaier_add(acc, comp, term)
      return (x_t, acc, comp), None

    zeros = jnp.zeros((chunk * B,), acc_dt)
    (x_T, acc, comp), _ = jax.lax.scan(step, (x0_flat, zeros, zeros),
                                       jnp.arange(1, T + 1, dtype=jnp.int32))
    acc, comp = _neumaier_add(acc, comp, log_prior[x_T])
    return _neumaier_total(acc, comp).reshape(chunk, B)

  log_w = _run_chunks(one_chunk, num_samples, chunk, B)
  return _summarize(log_w, dd.num_vars, return_log_weights)


# One compilation per (diffusion configuration / dd, user functions, shapes, K, chunk, flags):
# the diffusion object hashes by its configuration, user functions are wrapped in
# vdm.static_fn.StaticFn (keyed by code and closed-over values); params, gamma_params, the data
# and the key are traced.
_ddpm_iw_jit = jax.jit(_ddpm_iw_impl, static_argnums=(0, 1, 5, 6, 7, 8))
_vdm_iw_jit = jax.jit(_vdm_iw_impl, static_argnums=(0, 2, 6, 7, 8, 9, 10))
_discrete_iw_jit = jax.jit(_discrete_iw_impl, static_argnums=(0, 4, 5, 6))
