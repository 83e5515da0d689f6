"""Noise schedules as float64 NumPy tables.

A beta schedule is the variance sequence beta_1..beta_T of the forward process
q(x_t | x_{t-1}) = N(sqrt(1 - beta_t) x_{t-1}, beta_t I) (Ho et al. 2020, eq. 2). Tables are
built in float64 on the host and cast to the compute dtype only when gathered (DESIGN.md,
"Precision"). Index t = 0..T-1 of the returned array is the paper's beta_{t+1}.
"""
from __future__ import annotations

import math

import numpy as np

from vdm import checks

BETA_SCHEDULES = ("linear", "cosine", "quad", "const", "jsd")


def linear_betas(num_timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> np.ndarray:
  """DDPM's schedule (Ho et al. 2020, Sec. 4): betas linear from 1e-4 to 0.02. float64 [T]."""
  return np.linspace(beta_start, beta_end, num_timesteps, dtype=np.float64)


def quad_betas(num_timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> np.ndarray:
  """sqrt(beta) linear between sqrt(beta_start) and sqrt(beta_end). float64 [T]."""
  return np.linspace(beta_start**0.5, beta_end**0.5, num_timesteps, dtype=np.float64) ** 2


def const_betas(num_timesteps: int, beta: float = 0.02) -> np.ndarray:
  """A constant beta. float64 [T]."""
  return np.full(num_timesteps, beta, dtype=np.float64)


def jsd_betas(num_timesteps: int) -> np.ndarray:
  """beta_t = 1 / (T - t + 1) for t = 1..T: 1/T, 1/(T-1), ..., 1 (Sohl-Dickstein et al. 2015)."""
  return 1.0 / np.linspace(num_timesteps, 1, num_timesteps, dtype=np.float64)


def cosine_alphas_cumprod(t: np.ndarray, s: float = 0.008) -> np.ndarray:
  """alpha_bar(t) = f(t) / f(0), f(t) = cos^2(((t + s) / (1 + s)) pi / 2) for t in [0, 1].

  Nichol & Dhariwal (2021), eq. 17. float64, same shape as t.
  """
  f = lambda u: np.cos((u + s) / (1.0 + s) * math.pi / 2) ** 2
  return f(np.asarray(t, np.float64)) / f(0.0)


def cosine_betas(num_timesteps: int, s: float = 0.008, max_beta: float = 0.999) -> np.ndarray:
  """beta_t = min(1 - alpha_bar(t/T) / alpha_bar((t-1)/T), max_beta) (Nichol & Dhariwal, eq. 17)."""
  grid = np.arange(num_timesteps + 1, dtype=np.float64) / num_timesteps
  ab = cosine_alphas_cumprod(grid, s)
  return np.minimum(1.0 - ab[1:] / ab[:-1], max_beta)


def vp_alphas_cumprod(T: int, beta_min: float = 0.1, beta_max: float = 20.0) -> np.ndarray:
  """alpha_bar(i/T), i = 1..T, of the VP process with beta(t) = beta_min + (beta_max -
  beta_min) t (Song et al. 2021): alpha_bar(t) = exp(-(beta_min t + (beta_max - beta_min) t^2
  / 2)). At T = 1000 its betas are DDPM's linear 1e-4..0.02 to first order. float64 [T]."""
  t = np.arange(1, T + 1, dtype=np.float64) / T
  return np.exp(-(beta_min * t + 0.5 * (beta_max - beta_min) * t * t))


def betas_from_alphas_cumprod(ab: np.ndarray) -> np.ndarray:
  """beta_i = 1 - alpha_bar_i / alpha_bar_{i-1} (alpha_bar_0 = 1). float64 [T]."""
  ab = np.asarray(ab, np.float64)
  return -np.expm1(np.log(ab) - np.log(np.append(1.0, ab[:-1])))


_BUILDERS = {
    "linear": linear_betas,
    "cosine": cosine_betas,
    "quad": quad_betas,
    "const": const_betas,
    "jsd": jsd_betas,
}


def get_beta_schedule(name: str, num_timesteps: int, **kwargs) -> np.ndarray:
  """The named beta schedule as a float64 array [num_timesteps], every value in (0, 1].

  Args:
    name: one of `linear` (DDPM: 1e-4 to 0.02; kwargs beta_start, beta_end), `cosine`
      (Nichol & Dhariwal: s = 0.008, betas capped at max_beta = 0.999), `quad` (kwargs
      beta_start, beta_end), `const` (kwarg beta, default 0.02), `jsd` (1/T, ..., 1).
    num_timesteps: T >= 1.
  """
  checks.choice("beta schedule name", name, BETA_SCHEDULES)
  num_timesteps = checks.positive_int("num_timesteps", num_timesteps)
  try:
    betas = _BUILDERS[name](num_timesteps, **kwargs)
  except TypeError as e:
    raise ValueError(f"bad keyword arguments {sorted(kwargs)} for beta schedule {name!r}: {e}") from e
  if not (np.all(betas > 0) and np.all(betas <= 1)):
    raise ValueError(f"beta schedule {name!r} with {kwargs} has betas outside (0, 1]")
  return betas


# ---------------------------------------------------------------------------------------------
# Log-SNR schedules for Variational Diffusion Models (Kingma et al. 2021).
#
# gamma(t) = -log SNR(t) for continuous time t in [0, 1], strictly increasing, with the
# variance-preserving marginals q(z_t | x) = N(alpha_t x, sigma_t^2 I),
#   alpha_t^2 = sigmoid(-gamma(t)),  sigma_t^2 = sigmoid(gamma(t))   (VDM, Sec. 3),
# so SNR(t) = alpha_t^2 / sigma_t^2 = exp(-gamma(t)). Every schedule is a flax linen module
# whose call maps t (a scalar or [B] float array) to gamma(t) of the same shape; use it through
# `gamma_fn = module.apply`, i.e. `gamma_fn(gamma_params, t)`.
# ---------------------------------------------------------------------------------------------
import flax.linen as nn  # noqa: E402  (the log-SNR section needs flax; the beta part does not)
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

GAMMA_SCHEDULES = ("fixed_linear", "learned_linear", "learned_net")
GAMMA_MIN_DEFAULT = -13.3  # VDM paper's initial endpoints: SNR(0) = e^13.3, SNR(1) = e^-5.
GAMMA_MAX_DEFAULT = 5.0


def snr_from_gamma(gamma):
  """SNR = exp(-gamma), elementwise (VDM, eq. 4)."""
  return jnp.exp(-gamma)


def alpha_sigma_from_gamma(gamma):
  """(alpha, sigma) with alpha^2 = sigmoid(-gamma), sigma^2 = sigmoid(gamma); elementwise.

  Computed as exp(0.5 * log_sigmoid(.)) so that neither underflows for |gamma| up to ~1e3.
  """
  return jnp.exp(0.5 * jax.nn.log_sigmoid(-gamma)), jnp.exp(0.5 * jax.nn.log_sigmoid(gamma))


def cosine_gamma(ends, t):
  """gamma(t) = g0 + (g1 - g0) (c(t) - c(0)) / (c(1) - c(0)), c(t) = 2 log tan(a + (b - a) t)
  with tan(a) = exp(g0 / 2), tan(b) = exp(g1 / 2): the log-SNR of alpha = cos, sigma = sin
  (the continuous cosine schedule of Nichol & Dhariwal eq. 17, its angle range set by the
  endpoints instead of the offset s), exact at both endpoints. ends = [gamma(0), gamma(1)] (a traced array); t: [] or [B] -> same shape."""
  g0, g1 = ends[0], ends[1]
  a, b = jnp.arctan(jnp.exp(0.5 * g0)), jnp.arctan(jnp.exp(0.5 * g1))
  c = lambda u: 2.0 * jnp.log(jnp.tan(a + (b - a) * u))
  return g0 + (g1 - g0) * (c(t) - c(0.0)) / (c(1.0) - c(0.0))


def quadratic_gamma(ends, t):
  """gamma(t) = g0 + (g1 - g0) t^2: strictly increasing on (0, 1], ends = [gamma(0), gamma(1)]."""
  return ends[0] + (ends[1] - ends[0]) * t * t


def _check_endpoints(gamma_min, gamma_max):
  if not (math.isfinite(gamma_min) and math.isfinite(gamma_max) and gamma_max > gamma_min):
    raise ValueError("gamma schedule needs finite gamma_min < gamma_max, got "
                     f"gamma_min={gamma_min!r}, gamma_max={gamma_max!r}")


def _as_time(t):
  """t as a float array of shape [] or [B]; integer input is cast to the default float dtype."""
  t = jnp.asarray(t)
  if t.ndim > 1:
    raise ValueError(f"t must be a scalar or have shape [B], got shape {t.shape}")
  if not jnp.issubdtype(t.dtype, jnp.floating):
    t = t.astype(jnp.result_type(float))
  return t


class FixedLinearGamma(nn.Module):
  """gamma(t) = gamma_min + (gamma_max - gamma_min) t, no parameters (VDM, Sec. 5 baseline)."""
  gamma_min: float = GAMMA_MIN_DEFAULT
  gamma_max: float = GAMMA_MAX_DEFAULT

  def __call__(self, t):
    """t: [] or [B] in [0, 1] -> gamma(t), same shape (nats of log-SNR, negated)."""
    _check_endpoints(self.gamma_min, self.gamma_max)
    t = _as_time(t)
    return self.gamma_min + (self.gamma_max - self.gamma_min) * t


class LearnedLinearGamma(nn.Module):
  """gamma(t) = b + |w| t with learnable scalars b = gamma(0), |w| = gamma(1) - gamma(0).

  Initialized at b = gamma_min, w = gamma_max - gamma_min (google-research/vdm's
  NoiseSchedule_Scalar). Non-decreasing for every parameter value; strictly increasing when
  w != 0.
  """
  gamma_min: float = GAMMA_MIN_DEFAULT
  gamma_max: float = GAMMA_MAX_DEFAULT
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, t):
    """t: [] or [B] in [0, 1] -> gamma(t), same shape."""
    _check_endpoints(self.gamma_min, self.gamma_max)
    t = _as_time(t)
    b = self.param("b", nn.initializers.constant(self.gamma_min), (), self.param_dtype)
    w = self.param("w", nn.initializers.constant(self.gamma_max - self.gamma_min), (),
                   self.param_dtype)
    return b + jnp.abs(w) * t


class LearnedMonotoneGamma(nn.Module):
  """The VDM monotone network for gamma(t) (Kingma et al. 2021, Appendix H; google-research/vdm
  NoiseSchedule_NNet), normalized to learnable endpoints.

  Unnormalized:  g~(t) = (|k1| + min_slope) t + l3(phi(l2(2t - 1))) / n_features, with
  phi(h) = 2 (sigmoid(h) - 1/2), l2 a dense layer (|kernel| in R^{1 x F}, bias) and l3 a dense
  layer with |kernel| in R^{F x 1} and no bias: every weight enters through its absolute value
  and phi is increasing, so g~ is strictly increasing in t (slope >= min_slope > 0).
  Normalized (VDM, Appendix H):
    gamma(t) = b + |w| (g~(t) - g~(0)) / (g~(1) - g~(0)),
  so gamma(0) = b and gamma(1) = b + |w| are learnable endpoints (initialized at gamma_min and
  gamma_max) and gamma is strictly increasing whenever w != 0. At initialization the nonlinear
  path is small (kernels ~ N(0, init_scale^2)) and gamma is close to linear.
  """
  gamma_min: float = GAMMA_MIN_DEFAULT
  gamma_max: float = GAMMA_MAX_DEFAULT
  n_features: int = 1024
  min_slope: float = 1e-3
  init_scale: float = 1e-2
  param_dtype: jnp.dtype = jnp.float32

  def _unnormalized(self, t):
    """t: [N, 1] -> g~(t): [N, 1]."""
    normal = nn.initializers.normal(self.init_scale)
    k1 = self.param("k1", nn.initializers.ones, (), self.param_dtype)
    k2 = self.param("k2", normal, (1, self.n_features), self.param_dtype)
    b2 = self.param("b2", nn.initializers.zeros, (self.n_features,), self.param_dtype)
    k3 = self.param("k3", normal, (self.n_features, 1), self.param_dtype)
    linear = (jnp.abs(k1) + self.min_slope) * t
    h = (2.0 * t - 1.0) @ jnp.abs(k2) + b2  # input scaled to [-1, 1]
    h = 2.0 * (jax.nn.sigmoid(h) - 0.5)  # increasing, bounded (more stable than tanh)
    return linear + (h @ jnp.abs(k3)) / self.n_features

  @nn.compact
  def __call__(self, t):
    """t: [] or [B] in [0, 1] -> gamma(t), same shape."""
    _check_endpoints(self.gamma_min, self.gamma_max)
    checks.positive_int("n_features", self.n_features)
    checks.number("min_slope", self.min_slope, low=0.0, low_open=True)
    t = _as_time(t)
    b = self.param("b", nn.initializers.constant(self.gamma_min), (), self.param_dtype)
    w = self.param("w", nn.initializers.constant(self.gamma_max - self.gamma_min), (),
                   self.param_dtype)
    ends = jnp.asarray([0.0, 1.0], t.dtype)
    g = self._unnormalized(jnp.concatenate([t.reshape(-1), ends])[:, None])[:, 0]
    g_t, g_0, g_1 = g[:-2], g[-2], g[-1]
    gamma = b + jnp.abs(w) * (g_t - g_0) / (g_1 - g_0)
    return gamma.reshape(t.shape)


def get_gamma_schedule(name: str, **kwargs) -> nn.Module:
  """The named log-SNR schedule module: `fixed_linear`, `learned_linear` or `learned_net`.

  kwargs are the module's fields (gamma_min, gamma_max, and for `learned_net` n_features,
  min_slope, init_scale; param_dtype for the learned ones).
  """
  builders = {"fixed_linear": FixedLinearGamma, "learned_linear": LearnedLinearGamma,
              "learned_net": LearnedMonotoneGamma}
  checks.choice("gamma schedule name", name, GAMMA_SCHEDULES)
  try:
    return builders[name](**kwargs)
  except TypeError as e:
    raise ValueError(f"bad keyword arguments {sorted(kwargs)} for gamma schedule {name!r}: {e}") \
        from e
