"""Exact-likelihood test beds for the diffusion bounds.

(a) Gaussian data x ~ N(mu, diag(s^2)) (continuous vectors). Every diffused marginal is Gaussian,
    the Bayes-optimal denoiser E[x | z] is linear in z, and every term of the DDPM bound
    (Ho et al. 2020, eq. 5) and of the VDM bound (Kingma et al. 2021, eqs. 11, 15, 17) has an
    analytic expectation over the noise: they are quadratic forms in Gaussian variables. The
    closed forms are float64 NumPy and written from the papers' formulas, independently of
    `ddpm.py` and `vdm.py`, so that those code paths can be checked against them. Every bound
    function takes the first two moments of x0 (`x0_mean`, `x0_var`): x0_var = 0 gives the bound
    of one example, x0_mean = mu and x0_var = s^2 its expectation over the data distribution.

(b) Discrete diffusion small enough to enumerate: D categorical variables with K categories,
    T steps of a uniform-transition Markov forward process
      q(x_t | x_{t-1}) = Cat(x_t; (1 - beta_t) onehot(x_{t-1}) + beta_t / K)
    (Sohl-Dickstein et al. 2015; Austin et al. 2021, D3PM), and a reverse process
    p(x_T) prod_t p(x_{t-1} | x_t) given by full tables over the S = K^D joint states (so it can
    represent the true reverse process). Everything is computed exactly from the transition
    matrices; `vdm.elbo` enumerates x_{1:T} for log p(x0), the ELBO and the KL.

Units: nats, per example (summed over the data dimensions); convert at the edge.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from vdm import checks
from vdm.diffusion.schedules import alpha_sigma_from_gamma

LOG_2PI = math.log(2.0 * math.pi)
ORACLE_VAR_TYPES = ("fixed_small", "fixed_large")


# =============================================================================================
# (a) Gaussian data.
# =============================================================================================

def _check_gaussian(mu, s):
  mu = np.asarray(mu, np.float64)
  s = np.asarray(s, np.float64)
  if mu.ndim != 1 or s.shape != mu.shape:
    raise ValueError(f"mu and s must both have shape [D], got {mu.shape} and {s.shape}")
  if not np.all(np.isfinite(mu)) or not np.all(np.isfinite(s) & (s > 0)):
    raise ValueError("mu must be finite and s must be finite and > 0")
  return mu, s


def _moments(x0_mean, x0_var, dim):
  m = np.asarray(x0_mean, np.float64)
  v = np.broadcast_to(np.asarray(x0_var, np.float64), m.shape)
  if m.shape[-1:] != (dim,):
    raise ValueError(f"x0_mean must have shape [..., D] with D = {dim}, got {m.shape}")
  if np.any(v < 0):
    raise ValueError("x0_var must be >= 0")
  return m, v


def gaussian_nll(x, mu, s):
  """Exact -log N(x; mu, diag(s^2)) per example: x [B, D] -> [B] nats (float64 NumPy)."""
  mu, s = _check_gaussian(mu, s)
  x = np.asarray(x, np.float64)
  return np.sum(0.5 * LOG_2PI + np.log(s) + 0.5 * ((x - mu) / s) ** 2, axis=-1)


def gaussian_entropy(s):
  """H(x) = E[-log p(x)] = sum_d 0.5 log(2 pi e s_d^2), nats: the expected exact NLL."""
  s = np.asarray(s, np.float64)
  return float(np.sum(0.5 * (LOG_2PI + 1.0) + np.log(s)))


def optimal_x0(z, alpha, sigma2, mu, s):
  """E[x | z] for z = alpha x + sigma eps, x ~ N(mu, s^2) per dimension (jnp, broadcasting).

  E[x | z] = mu + alpha s^2 / (alpha^2 s^2 + sigma^2) (z - alpha mu)   (Gaussian conditioning).
  """
  s2 = jnp.square(s)
  return mu + alpha * s2 / (jnp.square(alpha) * s2 + sigma2) * (z - alpha * mu)


def ddpm_optimal_model_fn(alphas_cumprod, mu, s, mean_type: str = "eps") -> Callable:
  """Bayes-optimal DDPM predictor model_fn(params, x_t [B, D], t int [B]) for Gaussian data.

  x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps with abar_t = alphas_cumprod[t] (code timestep t);
  returns E[eps | x_t] (mean_type 'eps') or E[x0 | x_t] ('x0'), both linear in x_t. params are
  ignored. The float64 table is cast to x_t's dtype when gathered.
  """
  checks.choice("mean_type", mean_type, ("eps", "x0"))
  mu, s = _check_gaussian(mu, s)
  table = np.asarray(alphas_cumprod, np.float64)

  def model_fn(params, x_t, t):
    del params
    dt = x_t.dtype
    ab = jnp.asarray(table, dt)[t][:, None]
    x0_hat = optimal_x0(x_t, jnp.sqrt(ab), 1.0 - ab, jnp.asarray(mu, dt), jnp.asarray(s, dt))
    if mean_type == "x0":
      return x0_hat
    return (x_t - jnp.sqrt(ab) * x0_hat) / jnp.sqrt(1.0 - ab)

  return model_fn


def vdm_optimal_denoise_fn(mu, s) -> Callable:
  """Bayes-optimal VDM denoiser denoise_fn(params, z [B, D], g [B]) -> E[eps | z] for Gaussian data.

  With alpha^2 = sigmoid(-g), sigma^2 = sigmoid(g): E[eps | z] = (z - alpha E[x | z]) / sigma.
  A function of (z, gamma) only, i.e. of the SNR, as VDM eq. 21 requires.
  """
  mu, s = _check_gaussian(mu, s)

  def denoise_fn(params, z, g):
    del params
    dt = z.dtype
    alpha, sigma = alpha_sigma_from_gamma(jnp.asarray(g, dt)[:, None])
    x_hat = optimal_x0(z, alpha, jnp.square(sigma), jnp.asarray(mu, dt), jnp.asarray(s, dt))
    return (z - alpha * x_hat) / sigma

  return denoise_fn


def _ddpm_tables(betas):
  """The DDPM float64 tables the closed form needs, from betas [T] (Ho et al. eqs. 4, 6, 7)."""
  betas = np.asarray(betas, np.float64)
  if betas.ndim != 1 or betas.size < 2 or not np.all((betas > 0) & (betas <= 1)):
    raise ValueError("betas must be a 1-D array of T >= 2 values in (0, 1]")
  ab = np.cumprod(1.0 - betas)
  ab_prev = np.append(1.0, ab[:-1])
  post_var = betas * (1.0 - ab_prev) / (1.0 - ab)
  coef1 = betas * np.sqrt(ab_prev) / (1.0 - ab)
  return betas, ab, post_var, coef1


def ddpm_gaussian_bound(betas, var_type: str, mu, s, x0_mean, x0_var=0.0):
  """Closed-form DDPM bound with the Bayes-optimal predictor and a continuous Gaussian decoder.

  Code timesteps t = 0..T-1 (DESIGN.md). With x_t ~ q(x_t | x0) = N(sqrt(abar_t) x0, 1 - abar_t)
  and the optimal prediction x0_hat(x_t) = G_t x_t + H_t, the model mean is the posterior mean
  with x0_hat in place of x0, so mean_q - mean_p = coef1_t (x0 - x0_hat) and
    e_t = E_{x_t}[(x0 - x0_hat)^2] = ((1 - G_t sqrt(abar_t)) x0 - H_t)^2 + G_t^2 (1 - abar_t)
  (plus (1 - G_t sqrt(abar_t))^2 x0_var when x0 is itself Gaussian). Per dimension:
    t >= 1: KL = 0.5 (-1 + lv_p - lv_q + exp(lv_q - lv_p) + coef1_t^2 e_t exp(-lv_p))  (eq. 5)
    t = 0:  -log N(x0; x0_hat, exp(lv_p)) = 0.5 (log 2pi + lv_p + e_0 exp(-lv_p))
    prior:  KL(N(sqrt(abar) x0, 1 - abar) || N(0, 1)) at abar = abar_{T-1}.
  lv_q = log of the posterior variance; lv_p: `fixed_small` the posterior variance, its t = 0 entry
  replaced by t = 1's; `fixed_large` beta_t, its t = 0 entry replaced by the posterior variance at
  t = 1 (the reference code's conventions).

  Args:
    betas: [T], T >= 2. var_type: fixed_small | fixed_large. mu, s: [D].
    x0_mean: [..., D]; x0_var: broadcastable to x0_mean (0 for fixed examples).
  Returns:
    dict of float64: `prior` [...], `vb` [..., T] (column t = code timestep t), `total` [...],
    all nats per example (summed over D).
  """
  checks.choice("var_type", var_type, ORACLE_VAR_TYPES)
  mu, s = _check_gaussian(mu, s)
  m0, v0 = _moments(x0_mean, x0_var, mu.shape[0])
  betas, ab, post_var, coef1 = _ddpm_tables(betas)
  if var_type == "fixed_small":
    var_p = np.append(post_var[1], post_var[1:])
  else:
    var_p = np.append(post_var[1], betas[1:])
  lv_p = np.log(var_p)[:, None]                              # [T, 1]
  sab = np.sqrt(ab)[:, None]
  s2 = s**2
  G = sab * s2 / (ab[:, None] * s2 + 1.0 - ab[:, None])      # [T, D]
  H = mu * (1.0 - G * sab)
  a = 1.0 - G * sab
  m0e, v0e = m0[..., None, :], v0[..., None, :]              # [..., 1, D]
  e = (a * m0e - H) ** 2 + a**2 * v0e + G**2 * (1.0 - ab[:, None])   # [..., T, D]
  lv_q = np.log(np.where(post_var > 0, post_var, 1.0))[:, None]
  kl = 0.5 * (-1.0 + lv_p - lv_q + np.exp(lv_q - lv_p) + coef1[:, None] ** 2 * e * np.exp(-lv_p))
  dec = 0.5 * (LOG_2PI + lv_p + e * np.exp(-lv_p))
  per_t = np.concatenate([dec[..., :1, :], kl[..., 1:, :]], axis=-2)
  vb = per_t.sum(-1)
  abT = ab[-1]
  prior = np.sum(0.5 * (-1.0 - np.log1p(-abT) + (1.0 - abT) + abT * (m0**2 + v0)), axis=-1)
  return {"prior": prior, "vb": vb, "total": prior + vb.sum(-1)}


def optimal_decoder_nll(ab1: float, mu, s) -> float:
  """E[-log N(x0; E[x0|x1], v*)] with the optimal per-dimension variance v* = E Var(x0|x1) =
  s^2 (1 - ab1) / (ab1 s^2 + 1 - ab1), x1 = sqrt(ab1) x0 + sqrt(1 - ab1) eps (Gaussian
  conditioning), over x0 ~ N(mu, s^2): sum_d 0.5 (log 2 pi + log v*_d + 1), nats."""
  s2 = np.asarray(s, np.float64) ** 2
  v = s2 * (1.0 - ab1) / (ab1 * s2 + 1.0 - ab1)
  return float(np.sum(0.5 * (math.log(2 * math.pi) + np.log(v) + 1.0)))


def _expm1mx(v: float) -> float:
  """exp(v) - 1 - v for a Python float, without cancellation: sum_{k>=2} v^k / k! for |v| < 1/2."""
  if abs(v) >= 0.5:
    return math.expm1(v) - v
  return sum(v**k / math.factorial(k) for k in range(2, 20))


def _vdm_common(mu, s, gamma_0, gamma_1, x0_mean, x0_var):
  mu, s = _check_gaussian(mu, s)
  m0, v0 = _moments(x0_mean, x0_var, mu.shape[0])
  g0, g1 = float(gamma_0), float(gamma_1)
  if not (np.isfinite(g0) and np.isfinite(g1) and g1 > g0):
    raise ValueError(f"need finite gamma_0 < gamma_1, got {gamma_0!r}, {gamma_1!r}")
  # Continuous Gaussian decoder: z0/alpha0 - x = exp(g0/2) eps, so E[-log p(x|z0)] per dim is
  # 0.5 (log 2pi + g0 + 1), whatever x.
  recon = np.full(m0.shape[:-1], mu.shape[0] * 0.5 * (LOG_2PI + g0 + 1.0))
  # KL(N(alpha1 x, sigma1^2) || N(0, 1)) per dim, E over x: x^2 -> m0^2 + v0.
  # sigma1^2 - 1 - log sigma1^2 = exp(lv) - 1 - lv with lv = log sigmoid(g1) = -log1p(e^-g1),
  # summed as a series for small |lv| (large g1), where the direct form cancels.
  a1sq = 1.0 / (1.0 + math.exp(g1))           # sigmoid(-g1)
  lv1 = -math.log1p(math.exp(-g1)) if g1 > 0 else g1 - math.log1p(math.exp(g1))
  klz = np.sum(0.5 * (_expm1mx(lv1) + a1sq * (m0**2 + v0)), axis=-1)
  c = (m0 - mu) ** 2 + v0                      # E (x - mu)^2
  return mu, s, g0, g1, recon, klz, c


def _mmse(v, c, s2):
  """E||x - E[x|z_v]||^2 per dimension at SNR v, given E(x - mu)^2 = c (VDM eq. 14's x-space MSE).

  x - x_hat = (x - mu) / (1 + v s^2) - v s^2 / (1 + v s^2) v^{-1/2} eps.
  """
  u = 1.0 + v * s2
  return c / u**2 + v * s2**2 / u**2


def vdm_gaussian_bound_continuous(mu, s, gamma_0, gamma_1, x0_mean, x0_var=0.0):
  """Closed-form continuous-time VDM bound (eq. 17) with the optimal denoiser, continuous decoder.

  With SNR v = exp(-gamma), L_inf = 1/2 int_{v_1}^{v_0} E||x - x_hat(z_v)||^2 dv (VDM eq. 17-18)
  and, per dimension with u = 1 + v s^2 and c = E(x - mu)^2,
    int c / u^2 dv = -c / (s^2 u),   int v s^4 / u^2 dv = log u + 1 / u.
  Returns dict of float64 [...] (nats per example): loss_recon, loss_klz, loss_diff, loss.
  """
  mu, s, g0, g1, recon, klz, c = _vdm_common(mu, s, gamma_0, gamma_1, x0_mean, x0_var)
  s2 = s**2
  v0, v1 = math.exp(-g0), math.exp(-g1)
  u0, u1 = 1.0 + v0 * s2, 1.0 + v1 * s2
  anti = lambda u: -c / (s2 * u) + np.log(u) + 1.0 / u
  diff = np.sum(0.5 * (anti(u0) - anti(u1)), axis=-1)
  return {"loss_recon": recon, "loss_klz": klz, "loss_diff": diff, "loss": recon + klz + diff}


def vdm_gaussian_bound_discrete(mu, s, gammas, x0_mean, x0_var=0.0):
  """Closed-form discrete-time VDM bound (eq. 13-15) with the optimal denoiser.

  gammas: float64 [T + 1], gamma(i/T) for i = 0..T (strictly increasing). Each step's KL is
  KL(q(z_s | z_t, x) || p(z_s | z_t)) = 1/2 (SNR(s) - SNR(t)) ||x - x_hat(z_t)||^2 (eq. 14), so
    L_T = 1/2 sum_{i=1}^T (v_{i-1} - v_i) E||x - x_hat(z at SNR v_i)||^2, v_i = exp(-gammas[i]).
  Returns dict of float64 [...]: loss_recon, loss_klz, loss_diff, loss, and `diff_terms` [..., T].
  """
  gammas = np.asarray(gammas, np.float64)
  if gammas.ndim != 1 or gammas.size < 2 or not np.all(np.diff(gammas) > 0):
    raise ValueError("gammas must be a strictly increasing 1-D array [T + 1], T >= 1")
  mu, s, g0, g1, recon, klz, c = _vdm_common(mu, s, gammas[0], gammas[-1], x0_mean, x0_var)
  v = np.exp(-gammas)
  terms = 0.5 * (v[:-1] - v[1:]) * np.sum(
      _mmse(v[1:, None], c[..., None, :], (s**2)), axis=-1)   # [..., T]
  diff = terms.sum(-1)
  return {"loss_recon": recon, "loss_klz": klz, "loss_diff": diff, "loss": recon + klz + diff,
          "diff_terms": terms}


def _sigmoid(v: float) -> float:
  return 0.5 * (1.0 + math.tanh(0.5 * v))


def ddpm_gaussian_chain_log_marginal(betas, var_type: str, mu, s, x0):
  """Exact log p(x0) [B] (nats) of the T-step DDPM reverse chain with the optimal predictor,
  fixed variances and a continuous Gaussian decoder, derived from the definitions (not from
  ddpm.py), for Gaussian data N(mu, diag s^2): the true NLL of that discrete-time model, which
  its importance-weighted bounds approach as K grows (and the ELBO stays below).

  x0_hat(x_t) = E[x0 | x_t] = G_t x_t + H_t (Gaussian conditioning), the reverse mean is the
  posterior mean with x0_hat for x0, mu~ = coef1_t x0_hat + coef2_t x_t = A_t x_t + c_t, so each
  step x_{t-1} = A_t x_t + c_t + sqrt(v_t) n is linear-Gaussian: starting from x_T ~ N(0, 1),
  m <- A m + c and v <- A^2 v + v_t down to the decoder (code t = 0), per dimension."""
  checks.choice("var_type", var_type, ("fixed_small", "fixed_large"))
  mu, s = _check_gaussian(mu, s)
  betas = np.asarray(betas, np.float64)
  ab = np.cumprod(1.0 - betas)
  ab_prev = np.append(1.0, ab[:-1])
  post_var = betas * (1.0 - ab_prev) / (1.0 - ab)
  coef1 = betas * np.sqrt(ab_prev) / (1.0 - ab)
  coef2 = (1.0 - ab_prev) * np.sqrt(1.0 - betas) / (1.0 - ab)
  # The reference code's variances; at t = 0 both use beta~ at t = 1 (beta~_0 = 0).
  var_p = np.append(post_var[1], post_var[1:] if var_type == "fixed_small" else betas[1:])
  m, v = np.zeros_like(mu), np.ones_like(mu)
  for t in range(len(betas) - 1, -1, -1):
    g = np.sqrt(ab[t]) * s**2 / (ab[t] * s**2 + 1.0 - ab[t])
    h = mu * (1.0 - g * np.sqrt(ab[t]))
    a, c = coef1[t] * g + coef2[t], coef1[t] * h
    m, v = a * m + c, a * a * v + var_p[t]
  return np.sum(-0.5 * np.log(2 * np.pi * v) - 0.5 * (x0 - m) ** 2 / v, axis=-1)


def vdm_gaussian_chain_log_marginal(gammas, mu, s, x):
  """Exact log p(x) [B] (nats) of the T-step VDM chain (gammas [T + 1] = gamma(i / T),
  increasing) with the optimal denoiser and continuous decoder, for Gaussian data:
  p(z_s | z_t) = q(z_s | z_t, x = x_hat(z_t)) with x_hat linear in z_t, so each step is
  linear-Gaussian (written from Gaussian conditioning, independently of vdm.py)."""
  mu, s = _check_gaussian(mu, s)
  gammas = np.asarray(gammas, np.float64)
  m, v = np.zeros_like(mu), np.ones_like(mu)
  for i in range(len(gammas) - 1, 0, -1):
    g_t, g_s = gammas[i], gammas[i - 1]
    a_t, s2_t = math.sqrt(_sigmoid(-g_t)), _sigmoid(g_t)
    a_s, s2_s = math.sqrt(_sigmoid(-g_s)), _sigmoid(g_s)
    kx = a_t * s**2 / (a_t**2 * s**2 + s2_t)                  # x_hat = mu + kx (z - a_t mu)
    a_ts = a_t / a_s
    s2_ts = s2_t - a_ts**2 * s2_s
    A, Bx, Vq = a_ts * s2_s / s2_t, a_s * s2_ts / s2_t, s2_ts * s2_s / s2_t
    k, l = A + Bx * kx, Bx * (mu - kx * a_t * mu)
    m, v = k * m + l, k * k * v + Vq
  a0 = math.sqrt(_sigmoid(-gammas[0]))
  m, v = m / a0, v / a0**2 + math.exp(gammas[0])
  return np.sum(-0.5 * np.log(2 * np.pi * v) - 0.5 * (x - m) ** 2 / v, axis=-1)


# =============================================================================================
# (b) Enumerable discrete diffusion.
# =============================================================================================

def uniform_transition_matrices(betas, num_categories: int) -> np.ndarray:
  """Q_t = (1 - beta_t) I + beta_t / K 1 1^T for each beta_t: float64 [T, K, K], rows sum to 1.

  Q_t[a, b] = q(x_t = b | x_{t-1} = a) (D3PM's uniform transition; Sohl-Dickstein et al. 2015).
  """
  k = checks.integer("num_categories", num_categories, minimum=2)
  betas = np.asarray(betas, np.float64)
  if betas.ndim != 1 or betas.size < 1 or not np.all((betas > 0) & (betas <= 1)):
    raise ValueError("betas must be a non-empty 1-D array of values in (0, 1]")
  eye = np.eye(k)
  return (1.0 - betas)[:, None, None] * eye + betas[:, None, None] / k


@dataclasses.dataclass(frozen=True)
class DiscreteDiffusion:
  """An enumerable discrete diffusion on S = K^D joint states with T steps.

  Joint state index of x in {0..K-1}^D: sum_d x_d K^(D-1-d) (most significant first, the order of
  `vdm.elbo.enumerate_states`). Joint transition matrices are Kronecker powers of the per-variable
  ones (the variables are noised independently).
  """
  num_vars: int
  num_categories: int
  betas: tuple

  def __post_init__(self):
    # Normalized to Python ints (a NumPy integer scalar is accepted, as everywhere).
    object.__setattr__(self, "num_vars", checks.integer("num_vars", self.num_vars, minimum=1))
    object.__setattr__(self, "num_categories",
                       checks.integer("num_categories", self.num_categories, minimum=2))
    uniform_transition_matrices(np.asarray(self.betas), self.num_categories)
    if self.num_states > 4096:
      raise ValueError(f"K^D = {self.num_states} joint states is too many for the dense tables "
                       "(at most 4096)")

  @property
  def num_steps(self) -> int:
    return len(self.betas)

  @property
  def num_states(self) -> int:
    return self.num_categories**self.num_vars

  def transition_matrices(self) -> np.ndarray:
    """Joint Q_t, float64 [T, S, S]: Q[t-1][a, b] = q(x_t = b | x_{t-1} = a)."""
    per_var = uniform_transition_matrices(np.asarray(self.betas), self.num_categories)
    out = []
    for q in per_var:
      m = np.ones((1, 1))
      for _ in range(self.num_vars):
        m = np.kron(m, q)
      out.append(m)
    return np.stack(out)

  def cumulative_matrices(self) -> np.ndarray:
    """Qbar_t = Q_1 ... Q_t for t = 0..T (Qbar_0 = I), float64 [T + 1, S, S]:
    Qbar[t][x0, b] = q(x_t = b | x_0)."""
    q = self.transition_matrices()
    out = [np.eye(self.num_states)]
    for t in range(self.num_steps):
      out.append(out[-1] @ q[t])
    return np.stack(out)

  def state_index(self, x):
    """int [..., D] states -> int32 [...] joint indices."""
    powers = self.num_categories ** np.arange(self.num_vars - 1, -1, -1)
    return jnp.sum(jnp.asarray(x, jnp.int32) * jnp.asarray(powers, jnp.int32), axis=-1)

  def states(self):
    """int32 [S, D], every joint state in index order."""
    idx = np.arange(self.num_states)[:, None]
    powers = self.num_categories ** np.arange(self.num_vars - 1, -1, -1)
    return jnp.asarray((idx // powers) % self.num_categories, jnp.int32)


def reverse_log_probs(params):
  """(log p(x_T) [S], log P [T, S, S]) from logits; log P[t-1][b, a] = log p(x_{t-1}=a | x_t=b)."""
  return (jax.nn.log_softmax(params["prior_logits"], axis=-1),
          jax.nn.log_softmax(params["reverse_logits"], axis=-1))


def random_reverse_params(dd: DiscreteDiffusion, seed: int, scale: float = 1.0):
  """A random reverse process: logits ~ N(0, scale^2) drawn with NumPy's generator `seed`.
  dict prior_logits [S], reverse_logits [T, S, S] (jnp, default float dtype)."""
  rng = np.random.default_rng(checks.integer("seed", seed, minimum=0))
  S, T = dd.num_states, dd.num_steps
  return {"prior_logits": jnp.asarray(scale * rng.standard_normal(S)),
          "reverse_logits": jnp.asarray(scale * rng.standard_normal((T, S, S)))}


def true_reverse_params(dd: DiscreteDiffusion, p_data):
  """The true reverse process of q for data distribution p_data [S] (Bayes' rule):
  p(x_T) = q(x_T), p(x_{t-1} = a | x_t = b) = q(x_{t-1} = a) Q_t[a, b] / q(x_t = b).
  With it p(x_{0:T}) = q(x_{0:T}), so log p(x0) = log p_data(x0) and the KL gap is 0."""
  p_data = np.asarray(p_data, np.float64)
  if p_data.shape != (dd.num_states,) or np.any(p_data < 0) or abs(p_data.sum() - 1) > 1e-9:
    raise ValueError(f"p_data must be a probability vector [S] = [{dd.num_states}]")
  q = dd.transition_matrices()
  marg = p_data @ dd.cumulative_matrices()                   # [T + 1, S]: q(x_t)
  with np.errstate(divide="ignore"):
    log_rev = (np.log(marg[:-1])[:, None, :] + np.log(np.transpose(q, (0, 2, 1)))
               - np.log(marg[1:])[:, :, None])               # [T, b, a]
  return {"prior_logits": jnp.asarray(np.log(marg[-1])),
          "reverse_logits": jnp.asarray(log_rev)}


def _joint_path(dd: DiscreteDiffusion, x0, h):
  """Joint indices [T + 1] of (x_0, x_1, ..., x_T) from x0 [D] and h [D T] (x_1 first)."""
  path = jnp.concatenate([jnp.asarray(x0)[None, :], jnp.reshape(h, (dd.num_steps, dd.num_vars))])
  return dd.state_index(path)


def make_log_joint(dd: DiscreteDiffusion, params) -> Callable:
  """log_joint(x0 [D], h [D T]) = log p(x_T) + sum_t log p(x_{t-1} | x_t), for `vdm.elbo`."""
  log_prior, log_rev = reverse_log_probs(params)
  steps = jnp.arange(dd.num_steps)

  def log_joint(x0, h):
    idx = _joint_path(dd, x0, h)
    return log_prior[idx[-1]] + jnp.sum(log_rev[steps, idx[1:], idx[:-1]])

  return log_joint


def make_log_q(dd: DiscreteDiffusion) -> Callable:
  """log_q(x0 [D], h [D T]) = sum_t log q(x_t | x_{t-1}), the forward process, for `vdm.elbo`."""
  log_q_t = jnp.asarray(np.log(dd.transition_matrices()))
  steps = jnp.arange(dd.num_steps)

  def log_q(x0, h):
    idx = _joint_path(dd, x0, h)
    return jnp.sum(log_q_t[steps, idx[:-1], idx[1:]])

  return log_q


def _xlogy_ratio(p, log_p, log_r):
  """sum p (log_p - log_r) over the last axis with 0 log 0 = 0."""
  return jnp.sum(jnp.where(p > 0, p * (jnp.where(p > 0, log_p, 0.0) - log_r), 0.0), axis=-1)


def bound_decomposition(dd: DiscreteDiffusion, params, x0_index):
  """-ELBO = L_T + sum_{t=2}^T L_{t-1} + L_0 (Ho et al. eq. 5), each term an exact expectation
  over q computed from the transition matrices (no enumeration of paths):
    L_T     = KL(q(x_T | x0) || p(x_T)),
    L_{t-1} = E_{q(x_t|x0)} KL(q(x_{t-1} | x_t, x0) || p(x_{t-1} | x_t)),   t = 2..T,
    L_0     = E_{q(x_1|x0)} [-log p(x0 | x_1)],
  with q(x_{t-1} = a | x_t = b, x0) = Qbar_{t-1}[x0, a] Q_t[a, b] / Qbar_t[x0, b] (Bayes).

  Args:
    x0_index: int scalar joint index of x0.
  Returns:
    dict of scalars (nats): `L_T`, `L` [T] (L[0] = L_0, L[k] = L_k for k = 1..T-1, the DESIGN.md
    column convention), `total`.
  """
  log_prior, log_rev = reverse_log_probs(params)
  dt = log_prior.dtype
  q = jnp.asarray(dd.transition_matrices(), dt)
  qbar = jnp.asarray(dd.cumulative_matrices(), dt)
  T = dd.num_steps
  qT = qbar[T][x0_index]
  l_T = _xlogy_ratio(qT, jnp.log(qT), log_prior)
  q1 = qbar[1][x0_index]
  l_0 = -jnp.sum(q1 * log_rev[0][:, x0_index])
  terms = [l_0]
  for t in range(2, T + 1):
    q_prev = qbar[t - 1][x0_index]                            # q(x_{t-1} = a | x0) [S]
    q_t = qbar[t][x0_index]                                   # q(x_t = b | x0) [S]
    post = q_prev[None, :] * q[t - 1].T / q_t[:, None]        # [b, a]
    kl = _xlogy_ratio(post, jnp.log(post), log_rev[t - 1])    # [b]
    terms.append(jnp.sum(q_t * kl))
  L = jnp.stack(terms)
  return {"L_T": l_T, "L": L, "total": l_T + jnp.sum(L)}


def eq9_bound(dd: DiscreteDiffusion, params, x0_index):
  """Ho et al. eq. 9 form, E_q[-log p(x_T) - sum_{t>=1} log p(x_{t-1}|x_t) / q(x_t|x_{t-1})],
  by linearity over the one-step pair marginals q(x_{t-1} = a, x_t = b | x0) =
  Qbar_{t-1}[x0, a] Q_t[a, b] (no enumeration of paths). Returns dict `prior_term`,
  `step_terms` [T] (step t at index t-1), `total` (nats)."""
  log_prior, log_rev = reverse_log_probs(params)
  dt = log_prior.dtype
  q = jnp.asarray(dd.transition_matrices(), dt)
  qbar = jnp.asarray(dd.cumulative_matrices(), dt)
  T = dd.num_steps
  prior_term = -jnp.sum(qbar[T][x0_index] * log_prior)
  steps = []
  for t in range(1, T + 1):
    pair = qbar[t - 1][x0_index][:, None] * q[t - 1]          # [a, b]
    steps.append(jnp.sum(pair * (jnp.log(q[t - 1]) - log_rev[t - 1].T)))
  steps = jnp.stack(steps)
  return {"prior_term": prior_term, "step_terms": steps, "total": prior_term + jnp.sum(steps)}


@functools.partial(jax.jit, static_argnums=0)
def log_marginal_chain(dd: DiscreteDiffusion, params):
  """log p(x0) for every x0 [S] by the backward chain p(x_{t-1}) = sum_b p(x_t = b) P_t[b, .],
  a second algorithm next to enumerating x_{1:T}."""
  log_prior, log_rev = reverse_log_probs(params)
  log_p = log_prior
  for t in range(dd.num_steps, 0, -1):
    log_p = jax.scipy.special.logsumexp(log_p[:, None] + log_rev[t - 1], axis=0)
  return log_p


def expected_neg_elbo(dd: DiscreteDiffusion, params, p_data, states=None):
  """E_{x0 ~ p_data}[-ELBO(x0)] in nats, the ELBO of each x0 by enumerating x_{1:T} with
  `vdm.elbo.elbo` (q = the forward process). Differentiable in params. Scalar."""
  from vdm import elbo as E  # local import: vdm.elbo does not depend on vdm.diffusion
  if states is None:
    states = E.enumerate_states(dd.num_vars * dd.num_steps, dd.num_categories)
  log_joint, log_q = make_log_joint(dd, params), make_log_q(dd)
  elbos = jax.vmap(lambda x0: E.elbo(log_joint, log_q, x0, states))(dd.states())
  return -jnp.sum(jnp.asarray(p_data, elbos.dtype) * elbos)


def fit_reverse_table(dd: DiscreteDiffusion, params, p_data, num_steps: int = 300,
                      learning_rate: float = 0.1):
  """Maximize E_{p_data}[ELBO] (exact, by enumeration) over the reverse tables with Adam.

  One compilation per (dd, num_steps, learning_rate, shapes): params and p_data are traced.
  Returns (params, history float [num_steps + 1] of E[-ELBO] in nats, before each step and
  after the last).
  """
  from vdm import elbo as E
  num_steps = checks.integer("num_steps", num_steps, minimum=1)
  learning_rate = checks.number("learning_rate", learning_rate, low=0.0, low_open=True)
  states = E.enumerate_states(dd.num_vars * dd.num_steps, dd.num_categories)
  return _fit_reverse_table_jit(dd, params, p_data, states, num_steps, learning_rate)


def _fit_reverse_table_impl(dd, params, p_data, states, num_steps, learning_rate):
  import optax  # local import: only this helper trains
  opt = optax.adam(learning_rate)
  loss_fn = lambda p: expected_neg_elbo(dd, p, p_data, states)

  def step(carry, _):
    p, s = carry
    loss, g = jax.value_and_grad(loss_fn)(p)
    upd, s = opt.update(g, s, p)
    return (optax.apply_updates(p, upd), s), loss

  (params, _), hist = jax.lax.scan(step, (params, opt.init(params)), None, length=num_steps)
  return params, jnp.append(hist, loss_fn(params))


_fit_reverse_table_jit = jax.jit(_fit_reverse_table_impl, static_argnums=(0, 4, 5))
