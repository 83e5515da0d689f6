"""The variational bound of Variational Diffusion Models (Kingma et al. 2021), in nats.

Notation (VDM, Sec. 3): data x in [-1, 1] (DESIGN.md encoding x = 2v/(K-1) - 1 for integer
levels v in {0, ..., K-1}), latents z_t = alpha_t x + sigma_t eps for t in [0, 1], with
alpha_t^2 = sigmoid(-gamma(t)), sigma_t^2 = sigmoid(gamma(t)) and gamma = -log SNR strictly
increasing (vdm.diffusion.schedules). The negative ELBO of one example (VDM, eq. 11) is

  -ELBO(x) = loss_recon + loss_klz + loss_diff
           = E_q[-log p(x | z_0)] + KL(q(z_1 | x) || N(0, I)) + L_T(x),

with the diffusion loss L_T for T discrete steps (VDM, eq. 15, s = t - 1/T, t = i/T, i ~ U{1..T})

  L_T(x) = T/2 E_{eps, i}[ expm1(gamma(t) - gamma(s)) ||eps - eps_hat(z_t; gamma(t))||^2 ],

and in continuous time, T -> infinity (VDM, eq. 17),

  L_inf(x) = 1/2 E_{eps, t ~ U(0, 1)}[ gamma'(t) ||eps - eps_hat(z_t; gamma(t))||^2 ].

The denoiser is `denoise_fn(params, z_t, g_t) -> eps_hat` with z_t [B, ...] and g_t [B] (the
model is conditioned on gamma, not on t). Gamma schedules are used through
`gamma_fn(gamma_params, t)` (e.g. `FixedLinearGamma().apply`). All losses are per example, in
nats; convert at the edge with `losses_to_bpd`.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from vdm import checks
from vdm.diffusion.gaussian import LOG2, expm1mx, gaussian_log_likelihood, sum_flat
from vdm.diffusion.schedules import alpha_sigma_from_gamma
from vdm.static_fn import static_fn

LOSS_NAMES = ("loss_recon", "loss_klz", "loss_diff", "loss")


# ------------------------------------------------------------------------------ validation

def check_num_levels(num_levels):
  """None (continuous Gaussian decoder) or an integer K >= 2 -> None or int (`vdm.checks`)."""
  return checks.optional_num_levels("num_levels", num_levels)


def check_num_steps(T, allow_zero: bool = True):
  """An integer T >= 0 (0 = continuous time), or >= 1 when allow_zero is False -> int."""
  return checks.integer("T", T, minimum=0 if allow_zero else 1)


def _is_concrete(x) -> bool:
  return not isinstance(x, jax.core.Tracer)


def check_data(x, num_levels):
  """x: float [B, ...] with B >= 1 and at least one data dimension; when num_levels = K and x
  is concrete (not traced), every value must lie on the grid {2v/(K-1) - 1}."""
  if not hasattr(x, "shape") or len(x.shape) < 2:
    raise ValueError(f"x must have shape [B, ...] with at least one data axis, got "
                     f"{getattr(x, 'shape', type(x))}")
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise ValueError(f"x must be a float array (data encoded in [-1, 1]), got dtype {x.dtype}")
  if num_levels is not None and _is_concrete(x):
    # NumPy, not jnp: under an enclosing jit even a concrete x would be staged into the trace.
    xs = np.asarray(x)
    if np.any(np.abs(xs) > 1.0 + 1e-5):
      raise ValueError(f"x must lie in [-1, 1] when num_levels={num_levels}; got values in "
                       f"[{float(xs.min())}, {float(xs.max())}]")
    v = (xs + 1.0) * (num_levels - 1) / 2.0
    if np.any(np.abs(v - np.round(v)) > 1e-3):
      raise ValueError(f"x must lie on the grid 2v/(K-1) - 1 of K = num_levels = {num_levels} "
                       "levels (DESIGN.md encoding)")


# --------------------------------------------------------------------------------- times

def antithetic_times(key, batch_size: int, dtype=jnp.float32):
  """Low-discrepancy times t_i = mod(u0 + i/B, 1), i = 0..B-1, u0 ~ U[0, 1) (VDM's sampler of t).

  Each t_i is marginally U[0, 1); jointly they hit each stratum [j/B, (j+1)/B) exactly once.
  Returns [B] in dtype.
  """
  u0 = jax.random.uniform(key, (), dtype=dtype)
  return jnp.mod(u0 + jnp.arange(batch_size, dtype=dtype) / batch_size, 1.0)


def iid_times(key, batch_size: int, dtype=jnp.float32):
  """Independent t_i ~ U[0, 1). Returns [B]."""
  return jax.random.uniform(key, (batch_size,), dtype=dtype)


def discretize_times(t, T: int):
  """Map t in [0, 1) to the grid {1/T, ..., 1}: (floor(t T) + 1) / T.

  Uniform t gives i = floor(t T) + 1 uniform on {1, ..., T} (the same law as google-research/vdm's
  ceil(t T)/T, without its t = 0 edge case, whose s = -1/T falls outside [0, 1]).
  """
  return (jnp.minimum(jnp.floor(t * T), T - 1) + 1.0) / T


def _bcast(v, x):
  """[B] -> [B, 1, ..., 1] broadcastable against x [B, ...]."""
  return jnp.reshape(v, v.shape + (1,) * (x.ndim - 1))


# -------------------------------------------------------------------------------- losses

def loss_klz(x, gamma_1):
  """Prior loss KL(q(z_1 | x) || N(0, I)) per example, nats (VDM, eq. 11, second term).

  q(z_1 | x) = N(alpha_1 x, sigma_1^2 I), so per dimension, with lv = log sigma_1^2 =
  log sigmoid(gamma_1),
    KL = 0.5 (sigma_1^2 - 1 - lv + alpha_1^2 x^2) = 0.5 (expm1mx(lv) + alpha_1^2 x^2),
  expm1mx(lv) = exp(lv) - 1 - lv evaluated without cancellation: for large gamma_1 (sigma_1
  near 1, |lv| = softplus(-gamma_1) small) the direct form loses every digit in float32.
  x: [B, ...]; gamma_1: scalar or [B]. Returns [B] nats.
  """
  gamma_1 = jnp.asarray(gamma_1, x.dtype)
  alpha_1, _ = alpha_sigma_from_gamma(gamma_1)
  logvar_1 = jax.nn.log_sigmoid(gamma_1)
  if gamma_1.ndim == 1:
    alpha_1, logvar_1 = _bcast(alpha_1, x), _bcast(logvar_1, x)
  return sum_flat(0.5 * (expm1mx(logvar_1) + jnp.square(alpha_1 * x)))


def decoder_logits(z0_rescaled, gamma_0, num_levels: int):
  """Log-probabilities of the K data values under p(x | z_0) (VDM, Sec. 3.3).

  p(x_k | z_0) is proportional to exp(-(z_0/alpha_0 - x_k)^2 / (2 sigma_0^2 / alpha_0^2)) over the
  K grid values x_k = 2k/(K-1) - 1, with sigma_0^2 / alpha_0^2 = exp(gamma_0).

  Args:
    z0_rescaled: z_0 / alpha_0, [B, ...].
    gamma_0: scalar gamma(0).
    num_levels: K.
  Returns:
    [B, ..., K] normalized log-probabilities (log_softmax over the last axis), nats.
  """
  num_levels = check_num_levels(num_levels)
  if num_levels is None:
    raise ValueError("decoder_logits needs an integer num_levels >= 2, got None")
  x_vals = 2.0 * jnp.arange(num_levels, dtype=z0_rescaled.dtype) / (num_levels - 1) - 1.0
  inv_var = jnp.exp(-jnp.asarray(gamma_0, z0_rescaled.dtype))
  logits = -0.5 * jnp.square(z0_rescaled[..., None] - x_vals) * inv_var
  return jax.nn.log_softmax(logits, axis=-1)


def loss_recon(x, gamma_0, eps_0, num_levels):
  """Reconstruction loss E_q[-log p(x | z_0)] for one draw z_0 = alpha_0 x + sigma_0 eps_0, nats.

  z_0 / alpha_0 = x + exp(gamma_0 / 2) eps_0 exactly (sigma_0 / alpha_0 = exp(gamma_0 / 2)), which
  is how it is computed. Decoder: the K-way softmax of `decoder_logits` when num_levels = K, or
  the Gaussian density N(x; z_0/alpha_0, exp(gamma_0)) per dimension when num_levels is None.

  Args:
    x: [B, ...] data (on the K-level grid when num_levels is an int).
    gamma_0: scalar gamma(0).
    eps_0: [B, ...] standard normal noise.
    num_levels: K or None.
  Returns:
    [B] nats.
  """
  num_levels = check_num_levels(num_levels)
  gamma_0 = jnp.asarray(gamma_0, x.dtype)
  z0_rescaled = x + jnp.exp(0.5 * gamma_0) * eps_0
  if num_levels is None:
    return -sum_flat(gaussian_log_likelihood(x, z0_rescaled, 0.5 * gamma_0))
  v = jnp.clip(jnp.round((x + 1.0) * (num_levels - 1) / 2.0), 0, num_levels - 1).astype(jnp.int32)
  logp = decoder_logits(z0_rescaled, gamma_0, num_levels)
  return -sum_flat(jnp.take_along_axis(logp, v[..., None], axis=-1)[..., 0])


def gamma_and_derivative(gamma_fn, gamma_params, t):
  """(gamma(t), gamma'(t)) by forward-mode differentiation (`jax.jvp`), elementwise in t [B]."""
  return jax.jvp(lambda u: gamma_fn(gamma_params, u), (t,), (jnp.ones_like(t),))


def loss_diff_continuous(gamma_grad_t, eps, eps_hat):
  """Continuous-time diffusion loss at sampled t: 0.5 gamma'(t) ||eps - eps_hat||^2 (VDM, eq. 17).

  gamma_grad_t: [B]; eps, eps_hat: [B, ...]. Returns [B] nats (an unbiased one-sample estimate of
  L_inf(x) when t ~ U(0, 1)).
  """
  return 0.5 * gamma_grad_t * sum_flat(jnp.square(eps - eps_hat))


def loss_diff_discrete(gamma_t, gamma_s, T: int, eps, eps_hat):
  """Discrete-time diffusion loss: T/2 expm1(gamma_t - gamma_s) ||eps - eps_hat||^2 (VDM, eq. 15).

  expm1(gamma_t - gamma_s) = SNR(s)/SNR(t) - 1. gamma_t, gamma_s: [B] at t = i/T, s = t - 1/T;
  eps, eps_hat: [B, ...]. Returns [B] nats (unbiased for L_T(x) when i ~ U{1..T}).
  """
  return 0.5 * T * jnp.expm1(gamma_t - gamma_s) * sum_flat(jnp.square(eps - eps_hat))


def _check_noise(noise, x):
  if noise.shape != x.shape:
    raise ValueError(f"noise must have the data's shape {x.shape}, got {noise.shape}")
  return noise.astype(x.dtype)


def vdm_losses(denoise_fn: Callable, params, gamma_fn: Callable, gamma_params, x, key,
               num_levels, T: int = 0, antithetic: bool = True, t=None, noise=None,
               noise_0=None):
  """Per-example VDM losses in nats (VDM, eq. 11, 15, 17).

  Args:
    denoise_fn: (params, z_t [B, ...], g_t [B]) -> eps_hat [B, ...].
    params: the denoiser's parameters.
    gamma_fn: (gamma_params, t) -> gamma(t), elementwise in t ([B] or scalar).
    gamma_params: the schedule's variables ({} for FixedLinearGamma).
    x: [B, ...] float data in [-1, 1] (on the K-level grid when num_levels = K).
    key: PRNG key (times, eps for z_t, eps_0 for the decoder).
    num_levels: K (discrete decoder over the K values) or None (continuous Gaussian decoder).
    T: number of discrete steps, 0 for continuous time.
    antithetic: low-discrepancy times (`antithetic_times`) instead of iid.
    t: optional [B] times to use instead of sampling them (used as given: for T > 0 they must
      already lie on the grid {1/T, ..., 1}).
    noise, noise_0: optional [B, ...] standard-normal draws for z_t and for z_0 in the decoder
      term (default: drawn from key); the trainer passes per-example draws so that the result
      does not depend on how a batch is split over devices.
  Returns:
    dict of [B] arrays in nats: `loss_recon`, `loss_klz`, `loss_diff` and their sum `loss`
    (a one-sample unbiased estimate of -ELBO(x)).
  """
  num_levels = check_num_levels(num_levels)
  T = check_num_steps(T)
  check_data(x, num_levels)
  batch = x.shape[0]
  dtype = x.dtype
  if key is None:
    if t is None or noise is None or noise_0 is None:
      raise ValueError("vdm_losses needs a key unless t, noise and noise_0 are all given")
    k_t = k_eps = k_eps0 = None
  else:
    k_t, k_eps, k_eps0 = jax.random.split(key, 3)
  if t is None:
    t = antithetic_times(k_t, batch, dtype) if antithetic else iid_times(k_t, batch, dtype)
    if T > 0:
      t = discretize_times(t, T)
  else:
    t = jnp.asarray(t, dtype)
    if t.shape != (batch,):
      raise ValueError(f"t must have shape [B] = {(batch,)}, got {t.shape}")
  gamma = lambda u: jnp.asarray(gamma_fn(gamma_params, u), dtype)

  # Diffusion loss at the sampled times.
  if T == 0:
    g_t, g_t_grad = gamma_and_derivative(lambda p, u: gamma(u), None, t)
  else:
    g_t = gamma(t)
  alpha_t, sigma_t = alpha_sigma_from_gamma(g_t)
  eps = jax.random.normal(k_eps, x.shape, dtype) if noise is None else _check_noise(noise, x)
  z_t = _bcast(alpha_t, x) * x + _bcast(sigma_t, x) * eps
  eps_hat = denoise_fn(params, z_t, g_t)
  if getattr(eps_hat, "shape", None) != x.shape:
    raise ValueError(f"denoise_fn must return eps_hat of the data's shape {x.shape}, got "
                     f"{getattr(eps_hat, 'shape', type(eps_hat))}")
  if T == 0:
    l_diff = loss_diff_continuous(g_t_grad, eps, eps_hat)
  else:
    l_diff = loss_diff_discrete(g_t, gamma(t - 1.0 / T), T, eps, eps_hat)

  # Prior and reconstruction losses at the endpoints.
  g_0 = gamma(jnp.zeros((), dtype))
  g_1 = gamma(jnp.ones((), dtype))
  l_klz = loss_klz(x, g_1)
  eps_0 = (jax.random.normal(k_eps0, x.shape, dtype) if noise_0 is None
           else _check_noise(noise_0, x))
  l_recon = loss_recon(x, g_0, eps_0, num_levels)
  return {"loss_recon": l_recon, "loss_klz": l_klz, "loss_diff": l_diff,
          "loss": l_recon + l_klz + l_diff}


def losses_to_bpd(losses: dict, num_dims: int) -> dict:
  """Convert a dict of per-example nats to bits per dimension: nats / (D ln 2)."""
  num_dims = checks.positive_int("num_dims", num_dims)
  return {k: v / (num_dims * LOG2) for k, v in losses.items()}


# ------------------------------------------------------------------------------- sampling

def p_step_mean_std(z_t, eps_hat, gamma_t, gamma_s):
  """Mean and std of p(z_s | z_t) = q(z_s | z_t, x = x_hat(z_t)) for s < t (VDM's sampler).

  With c = -expm1(gamma_s - gamma_t) = 1 - SNR(t)/SNR(s) in (0, 1):
    mean = alpha_s / alpha_t (z_t - sigma_t c eps_hat),  var = sigma_s^2 c.
  z_t, eps_hat: [B, ...]; gamma_t, gamma_s: scalars (or broadcastable). Returns (mean, std).
  """
  alpha_s, sigma_s = alpha_sigma_from_gamma(gamma_s)
  alpha_t, sigma_t = alpha_sigma_from_gamma(gamma_t)
  c = -jnp.expm1(gamma_s - gamma_t)
  mean = (alpha_s / alpha_t) * (z_t - sigma_t * c * eps_hat)
  return mean, sigma_s * jnp.sqrt(c)


def sample(denoise_fn: Callable, params, gamma_fn: Callable, gamma_params, shape, key, T: int,
           num_levels=None, dtype=jnp.float32):
  """Ancestral sampling z_1 ~ N(0, I) -> z_{(T-1)/T} -> ... -> z_0 -> x (VDM's sampler).

  The T reverse steps run in one `lax.scan`. The last step decodes x ~ p(x | z_0): a categorical
  draw over the K grid values when num_levels = K (returned encoded as 2v/(K-1) - 1), or a draw
  from N(z_0/alpha_0, exp(gamma_0)) when num_levels is None.

  Args:
    shape: (B, ...) of the samples.
    T: number of reverse steps, >= 1.
  Returns:
    [B, ...] samples x in dtype.
  """
  T = check_num_steps(T, allow_zero=False)
  num_levels = check_num_levels(num_levels)
  shape = tuple(shape)
  if len(shape) < 2:
    raise ValueError(f"shape must be (B, ...) with positive sizes and a data axis, got {shape}")
  shape = tuple(checks.positive_int(f"shape[{i}]", d) for i, d in enumerate(shape))
  dtype = jnp.dtype(dtype)
  if not jnp.issubdtype(dtype, jnp.floating):
    raise ValueError(f"dtype must be a float dtype, got {dtype}")
  return _sample_jit(static_fn(denoise_fn), params, static_fn(gamma_fn), gamma_params, shape,
                     key, T, num_levels, dtype)


def _sample_impl(denoise_fn, params, gamma_fn, gamma_params, shape, key, T, num_levels, dtype):
  batch = shape[0]
  gamma = lambda u: jnp.asarray(gamma_fn(gamma_params, jnp.asarray(u, dtype)), dtype)
  k_init, k_loop, k_dec = jax.random.split(key, 3)

  def step(z_t, i):
    t = (T - i).astype(dtype) / T
    s = (T - i - 1).astype(dtype) / T
    g_t, g_s = gamma(t), gamma(s)
    eps_hat = denoise_fn(params, z_t, jnp.full((batch,), g_t, dtype))
    mean, std = p_step_mean_std(z_t, eps_hat, g_t, g_s)
    noise = jax.random.normal(jax.random.fold_in(k_loop, i), shape, dtype)
    return mean + std * noise, None

  z_1 = jax.random.normal(k_init, shape, dtype)
  z_0, _ = jax.lax.scan(step, z_1, jnp.arange(T))
  g_0 = gamma(0.0)
  alpha_0, _ = alpha_sigma_from_gamma(g_0)
  z0_rescaled = z_0 / alpha_0
  if num_levels is None:
    return z0_rescaled + jnp.exp(0.5 * g_0) * jax.random.normal(k_dec, shape, dtype)
  v = jax.random.categorical(k_dec, decoder_logits(z0_rescaled, g_0, num_levels), axis=-1)
  return (2.0 * v / (num_levels - 1) - 1.0).astype(dtype)


# denoise_fn, gamma_fn, shape, T, num_levels and dtype are static; params and gamma_params are
# traced. The functions are wrapped in vdm.static_fn.StaticFn (keyed by code and closed-over
# values), so a fresh lambda over the same network reuses the program: one compilation per
# combination, cached by jax.
_sample_jit = jax.jit(_sample_impl, static_argnums=(0, 2, 4, 6, 7, 8))
