r"""Exact log-likelihood of the probability-flow ODE (Song et al. 2021, eq. 13 and App. D.2).

Forward processes. Both processes here have Gaussian marginals
    q(x_t | x_0) = N(alpha(t) x_0, sigma(t)^2 I),   t in [0, 1],
described by the log-SNR gamma(t) = log(sigma^2 / alpha^2) (= -log SNR, VDM's gamma). An SDE
dx = f(t) x dt + g(t) dw has these marginals iff (matching d/dt of the mean and the variance)
    f(t) = d log alpha / dt,      g(t)^2 = d sigma^2 / dt - 2 f(t) sigma^2 = sigma^2 dgamma/dt,
which for a variance-preserving process (alpha^2 + sigma^2 = 1) is Song et al.'s VP SDE
(eq. 11): f = -beta(t)/2, g^2 = beta(t) with beta(t) = -d log alpha^2 / dt. With the model's
score s(x, t) = -eps_hat(x, t) / sigma(t), the probability-flow ODE (Song et al. eq. 13)
    dx/dt = f(t) x - 1/2 g(t)^2 s(x, t) = f(t) x + c(t) eps_hat(x, t),  c(t) = g^2 / (2 sigma)
has the same marginals p_t as the model's reverse SDE. Here:
  VDM:   f = -1/2 sigma^2 gamma'(t),  c = 1/2 gamma'(t) sigma(t)   (alpha^2 = sigmoid(-gamma));
  DDPM:  f = -1/2 beta(t),            c = beta(t) / (2 sigma(t)).

Likelihood (Song et al. App. D.2; the instantaneous change of variables of Chen et al. 2018).
Along a solution x(t) of the ODE from x(t0) = x,
    d/dt log p_t(x(t)) = -div_x v(x(t), t),   so
    log p_t0(x) = log p_1(x(1)) + int_t0^1 div_x v(x(t), t) dt.
The solver integrates the augmented state [x(t), delta(t)], delta' = div v, delta(t0) = 0,
from t0 up to t1 = 1 (forward in time), and the prior is p_1 = N(0, I) (or a given density).
The divergence is exact (the trace of the Jacobian, from D vector-Jacobian products; for
small D: 2-D toys, 8x8 digits) or Hutchinson's estimator E_eps[eps^T J eps] (Hutchinson 1989;
Grathwohl et al. 2019) with Rademacher or Gaussian probes, num_probes of them averaged, the
same probes for the whole solve (as score_sde does). Hutchinson's delta is an unbiased
estimate of the exact one along the same trajectory (the x part of the ODE does not see the
probes); log p is therefore estimated without bias as well (up to the solver's error).

The DDPM time mapping (a choice; tests/test_ode.py pins it down). A discrete schedule betas
[T] (code timesteps k = 0..T-1, DESIGN.md: alphas_cumprod[k] = prod_{i<=k} (1 - betas[i])) is
made continuous by interpolating L(t) = log alpha^2(t) through the knots
    t_k = (k + 1) / T  <->  L(t_k) = log alphas_cumprod[k],   and   t = 0 <-> L = 0,
so the continuous process passes exactly through every discrete marginal, t = 1 is the last
timestep T-1 (the prior term's alphas_cumprod[T-1]) and t = 0 is the data. Between knots L is
the not-a-knot cubic spline through them (C^2), or where that spline is not decreasing
(small T) the monotone PCHIP cubic (C^1); `DDPMProcess(interpolation=...)` picks
one, or the piecewise log-linear `linear`. So beta(t) = -dL/dt is continuous (checked >= 0), close to T betas[k] on [k/T, (k+1)/T) (score_sde's continuous beta(t), e.g.
0.1 .. 20 for DDPM's linear schedule), and sigma^2 = 1 - alpha^2 = -expm1(L). (The simplest
exact-at-knots choice, log-linear interpolation, makes beta a staircase with T jumps, which
costs an adaptive solver ~10x more steps; see `DDPMProcess`.) The network sees the
real-valued timestep s = T t - 1 on its training scale: s = k exactly at the knot where
alpha^2 = alphas_cumprod[k]; between knots s is fractional (a U-Net's sinusoidal embedding
takes real timesteps), and for t < 1/T it lies in (-1, 0), just below the trained range (the
default t0 = 1e-5 gives s = 1e-5 T - 1; pass t0 = 1/T to start at s = 0, i.e. at the
likelihood of data noised to the first timestep's level).

Performance. One jitted program runs the whole solve (no host round trip per evaluation, unlike
score_sde's scipy loop; experiments/bench_ode.py measures both). On XLA:CPU (jaxlib 0.10.2) the
input gradients of `lax` convolutions run ~3x slower inside a while loop, as in every ODE
solver, than in a top-level program; build the U-Net with `UNet(conv_impl="matmul")` for ODE
likelihoods on CPU (same parameters and numbers, GEMM convolutions, full speed inside the loop).
--mode=ode_nll does this itself (`vdm.objectives.solver_net`).

Units: nats per example, except keys with `bpd` (bits per dimension, nats / (D ln 2)); the
units rule of `vdm.diffusion`. Entry points take the user function as a static argument
(`vdm.static_fn`) and `params` (and the schedule's `gamma_params`, inside the process) traced:
new parameter values reuse the compiled program.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable, Optional

import diffrax
import jax
import jax.numpy as jnp
import numpy as np

from vdm import checks
from vdm.diffusion.encoding import dequantization_offset_bpd, dequantize
from vdm.static_fn import StaticFn, static_fn

DIVERGENCES = ("exact", "hutchinson")
PROBES = ("rademacher", "gaussian")
SOLVERS = ("tsit5", "dopri5", "heun", "euler")
ADAPTIVE_SOLVERS = ("tsit5", "dopri5", "heun")
DDPM_MEAN_TYPES = ("eps", "x0")
DDPM_VAR_TYPES = ("fixed_small", "fixed_large", "learned", "learned_range")
LOG_2PI = math.log(2.0 * math.pi)
LN2 = math.log(2.0)

# Function evaluations (each one drift + divergence evaluation of the whole state) per solver
# step, and once at the start: the FSAL schemes (Tsit5, Dopri5) reuse their last stage as the
# next step's first, so a step costs 6 new evaluations plus 1 for the very first stage; a
# rejected step costs the same 6. diffrax 0.7 picks the first adaptive step without
# evaluating the drift (its initial-step heuristic is skipped for wrapped terms, dt0 = 0.01);
# tests/test_ode.py counts the evaluations with a host callback to keep this table honest.
_NFE_PER_STEP = {"tsit5": (6, 1), "dopri5": (6, 1), "heun": (2, 0), "euler": (1, 0)}


# =============================================================================================
# Processes.
# =============================================================================================

@dataclasses.dataclass(frozen=True)
class Coefficients:
  """The ODE's coefficients at one time t (scalars in the compute dtype).

  alpha, sigma: the marginal's scale and noise std; f = d log alpha / dt; c = g^2 / (2 sigma),
  so that the drift is f x + c eps_hat; model_time: what the network is conditioned on (the
  real-valued DDPM timestep T t - 1, or VDM's gamma(t)).
  """
  alpha: jax.Array
  sigma: jax.Array
  f: jax.Array
  c: jax.Array
  model_time: jax.Array


DDPM_INTERPOLATIONS = ("auto", "cubic", "pchip", "linear")


def _segment_coefficients(betas: tuple, interpolation: str) -> np.ndarray:
  b = np.asarray(betas, np.float64)
  T = b.size
  knots_t = np.arange(T + 1, dtype=np.float64) / T
  knots_l = np.concatenate([[0.0], np.cumsum(np.log1p(-b))])
  c = np.zeros((4, T))
  if interpolation == "linear" or T == 1:
    c[0], c[1] = knots_l[:-1], np.diff(knots_l) * T
    return c
  from scipy import interpolate  # scipy comes with scikit-learn, a dependency of vdm
  if interpolation == "cubic":
    spline = interpolate.CubicSpline(knots_t, knots_l,
                                     bc_type="not-a-knot" if T >= 3 else "natural")
  else:
    spline = interpolate.PchipInterpolator(knots_t, knots_l)
  c[:] = spline.c[::-1]
  return c


def _max_dlog_alpha2(c: np.ndarray) -> float:
  """max over t of d log alpha^2/dt = c1 + 2 c2 u + 3 c3 u^2, u in [0, 1/T] on every segment
  (both ends and the vertex of the quadratic): exact, not sampled."""
  h = 1.0 / c.shape[1]
  dl = lambda u: c[1] + 2 * c[2] * u + 3 * c[3] * u**2
  with np.errstate(divide="ignore", invalid="ignore"):
    uv = np.where(c[3] != 0, -c[2] / (3 * c[3]), 0.0)
  uv = np.clip(np.nan_to_num(uv), 0.0, h)
  return float(np.max(np.stack([dl(0.0), dl(h), dl(uv)])))


@functools.lru_cache(maxsize=32)
def _log_alpha2_table(betas: tuple, interpolation: str) -> tuple:
  """(c, used): c float64 [4, T] with log alpha^2(t) = sum_j c[j, k] (t - k/T)^j on segment
  k (t in [k/T, (k+1)/T]); `used` the interpolation ('auto' resolves to 'cubic' where the
  spline is decreasing, else 'pchip'). beta(t) = -d log alpha^2/dt must be >= 0 everywhere
  (ValueError otherwise); PCHIP's is > 0 except where its endpoint rule sets it to 0 (t = 0
  for DDPM's linear schedule at small T), so log alpha^2 < 0 and sigma > 0 for every t > 0."""
  if interpolation == "auto":
    c = _segment_coefficients(betas, "cubic")
    if _max_dlog_alpha2(c) <= 0:
      return c, "cubic"
    interpolation = "pchip"
  c = _segment_coefficients(betas, interpolation)
  worst = _max_dlog_alpha2(c)
  if not worst <= 0:
    raise ValueError(f"interpolation={interpolation!r} of log alphas_cumprod is not "
                     f"decreasing for these betas (beta(t) down to {-worst:.3g}); use "
                     "interpolation='auto', 'pchip' (monotone) or 'linear'")
  return c, interpolation


@jax.tree_util.register_pytree_node_class
class DDPMProcess:
  """A discrete DDPM beta schedule as a continuous-time VP process (module docstring).

  Args:
    betas: [T] forward variances in (0, 1) (`get_beta_schedule`; a beta of exactly 1, the last
      one of the `jsd` schedule, makes alpha(1) = 0 and the ODE singular, and is refused).
    mean_type: what the first C output channels of `model_fn(params, x_t, s)` predict: `eps`
      or `x0` (then eps_hat = (x_t - alpha x0_hat) / sigma). `mean` (the posterior mean of one
      discrete step) has no continuous-time meaning and is refused.
    var_type: as in `GaussianDiffusion`; `learned` and `learned_range` models output 2C
      channels, of which the first C are used (the variance plays no part in the ODE).
    interpolation: how log alpha^2(t) runs between the knots t_k = (k+1)/T, where it equals
      log alphas_cumprod[k] exactly (and 0 at t = 0): `cubic` (the not-a-knot C^2 cubic
      spline, so beta(t) = -d log alpha^2/dt is continuous and smooth enough for an adaptive
      solver), `pchip` (monotone cubic, C^1: beta > 0 always), `auto` (default: `cubic` where
      that spline is decreasing, e.g. DDPM's linear and the cosine schedule at T = 1000, else
      `pchip`, e.g. linear at T = 100, whose spline overshoots to beta < 0 near t = 0;
      `interpolation_used` says which), or `linear` (piecewise log-linear:
      beta(t) = -T log(1 - betas[k]) on [k/T, (k+1)/T), a staircase whose T jumps make an
      adaptive solve about 10x dearer: for T = 1000 linear betas and a Gaussian oracle at
      rtol = atol = 1e-5, 757 evaluations against 55 for `cubic`, and less accurate). beta(t)
      must stay >= 0 (checked here, exactly, on every segment).
  The model is called as model_fn(params, x_t [n, ...], s [n]) with the real-valued timestep
  s = T t - 1 (float, the data's dtype). A pytree without leaves: equal schedules share a
  compiled program.
  """

  def __init__(self, betas, mean_type: str = "eps", var_type: str = "fixed_small",
               interpolation: str = "auto"):
    checks.choice("mean_type", mean_type, DDPM_MEAN_TYPES)
    checks.choice("var_type", var_type, DDPM_VAR_TYPES)
    checks.choice("interpolation", interpolation, DDPM_INTERPOLATIONS)
    b = np.asarray(betas, np.float64)
    if b.ndim != 1 or b.size < 1:
      raise ValueError(f"betas must be a non-empty 1-D array [T], got shape {b.shape}")
    if not np.all((b > 0) & (b < 1)):
      raise ValueError("betas must all lie in (0, 1) for the probability-flow ODE (a beta of 1 "
                       f"makes alpha(1) = 0); got values in [{b.min()}, {b.max()}]")
    self.betas = tuple(float(v) for v in b)
    self.mean_type = mean_type
    self.var_type = var_type
    self.interpolation = interpolation
    _log_alpha2_table(self.betas, interpolation)   # checks beta(t) > 0

  @property
  def interpolation_used(self) -> str:
    """'cubic', 'pchip' or 'linear': what `interpolation` (maybe 'auto') resolved to."""
    return _log_alpha2_table(self.betas, self.interpolation)[1]

  @classmethod
  def from_diffusion(cls, diffusion, interpolation: str = "auto") -> "DDPMProcess":
    """The process of a `vdm.diffusion.GaussianDiffusion` (its betas, mean_type, var_type)."""
    return cls(diffusion.betas, diffusion.mean_type, diffusion.var_type, interpolation)

  @property
  def num_timesteps(self) -> int:
    return len(self.betas)

  def coefficients(self, t, dtype) -> Coefficients:
    T = self.num_timesteps
    c = jnp.asarray(_log_alpha2_table(self.betas, self.interpolation)[0], dtype)
    t = jnp.asarray(t, dtype)
    tt = t * T
    k = jnp.clip(jnp.floor(tt).astype(jnp.int32), 0, T - 1)
    u = t - k.astype(dtype) / T
    c0, c1, c2, c3 = c[0, k], c[1, k], c[2, k], c[3, k]
    log_alpha2 = c0 + u * (c1 + u * (c2 + u * c3))
    beta = -(c1 + u * (2.0 * c2 + 3.0 * u * c3))    # beta(t) = -d log alpha^2 / dt > 0
    sigma = jnp.sqrt(-jnp.expm1(log_alpha2))
    return Coefficients(alpha=jnp.exp(0.5 * log_alpha2), sigma=sigma, f=-0.5 * beta,
                        c=0.5 * beta / sigma, model_time=tt - 1.0)

  def eps(self, model_fn, params, x, co: Coefficients):
    n, c = x.shape[0], x.shape[-1]
    out = model_fn(params, x, jnp.full((n,), co.model_time, x.dtype))
    learned = self.var_type in ("learned", "learned_range")
    want = 2 * c if learned else c
    if out.shape != x.shape[:-1] + (want,):
      raise ValueError(f"model_fn must return shape {x.shape[:-1] + (want,)} ({want} channels "
                       f"for var_type {self.var_type!r}, C = {c}), got {out.shape}")
    out = out[..., :c] if learned else out
    if self.mean_type == "x0":
      return (x - co.alpha * out) / co.sigma
    return out

  def tree_flatten(self):
    return (), (self.betas, self.mean_type, self.var_type, self.interpolation)

  @classmethod
  def tree_unflatten(cls, aux, children):
    obj = object.__new__(cls)
    obj.betas, obj.mean_type, obj.var_type, obj.interpolation = aux
    return obj

  def __eq__(self, other):
    return type(other) is type(self) and self.tree_flatten()[1] == other.tree_flatten()[1]

  def __hash__(self):
    return hash(self.tree_flatten()[1])

  def __repr__(self):
    return (f"DDPMProcess(T={self.num_timesteps}, mean_type={self.mean_type!r}, "
            f"var_type={self.var_type!r}, interpolation={self.interpolation_used!r})")


@jax.tree_util.register_pytree_node_class
class VDMProcess:
  """VDM's variance-preserving process with log-SNR schedule gamma(t) (Kingma et al. 2021).

  Args:
    gamma_fn: gamma_fn(gamma_params, t) -> gamma(t), t a scalar (e.g. `FixedLinearGamma().apply`);
      static (keyed by `vdm.static_fn`). gamma'(t) comes from `jax.jvp`.
    gamma_params: the schedule's variables ({} for a fixed schedule): the pytree's leaves,
      traced, so a new learned schedule reuses the compiled program.
  The denoiser is called as denoise_fn(params, z [n, ...], gamma [n]) -> eps_hat.
  """

  def __init__(self, gamma_fn: Callable, gamma_params: Any = None):
    if not callable(gamma_fn):
      raise ValueError(f"gamma_fn must be a function (gamma_params, t) -> gamma(t), got "
                       f"{type(gamma_fn).__name__}")
    self.gamma_fn = static_fn(gamma_fn)
    self.gamma_params = {} if gamma_params is None else gamma_params

  def gamma_and_derivative(self, t, dtype):
    t = jnp.asarray(t, dtype)
    g = lambda u: jnp.asarray(self.gamma_fn(self.gamma_params, u), dtype)
    return jax.jvp(g, (t,), (jnp.ones_like(t),))

  def coefficients(self, t, dtype) -> Coefficients:
    gamma, dgamma = self.gamma_and_derivative(t, dtype)
    sigma2 = jax.nn.sigmoid(gamma)
    alpha = jnp.exp(0.5 * jax.nn.log_sigmoid(-gamma))
    sigma = jnp.exp(0.5 * jax.nn.log_sigmoid(gamma))
    return Coefficients(alpha=alpha, sigma=sigma, f=-0.5 * sigma2 * dgamma,
                        c=0.5 * dgamma * sigma, model_time=gamma)

  def eps(self, denoise_fn, params, x, co: Coefficients):
    out = denoise_fn(params, x, jnp.full((x.shape[0],), co.model_time, x.dtype))
    if out.shape != x.shape:
      raise ValueError(f"denoise_fn must return eps_hat of the input's shape {x.shape}, got "
                       f"{out.shape}")
    return out

  def tree_flatten(self):
    return (self.gamma_params,), self.gamma_fn

  @classmethod
  def tree_unflatten(cls, aux, children):
    obj = object.__new__(cls)
    obj.gamma_fn = aux
    (obj.gamma_params,) = children
    return obj

  def __repr__(self):
    return f"VDMProcess({self.gamma_fn!r})"


PROCESSES = (DDPMProcess, VDMProcess)


def marginal(process, t, dtype=None):
  """(alpha(t), sigma(t)) of q(x_t | x_0) = N(alpha x_0, sigma^2 I) under `process`."""
  co = process.coefficients(t, dtype or jnp.result_type(float))
  return co.alpha, co.sigma


# =============================================================================================
# Drift and divergence.
# =============================================================================================

def _drift_and_div(model_fn, params, process, x, t, tangents, scale):
  """v(x, t) [n, ...] and scale * sum_p <tangent_p, J tangent_p> per example [n].

  tangents [P, n, ...]: Hutchinson probes (scale 1/P) or the D basis vectors, each repeated
  for the n examples (scale 1: the trace, sum_d (e_d^T J)_d). Per example because the model
  treats examples independently, i.e. the Jacobian of the batched drift is block-diagonal.
  """
  co = process.coefficients(t, x.dtype)
  fn = lambda z: co.f * z + co.c * process.eps(model_fn, params, z, co)
  # Reverse mode (eps^T J, as score_sde): it also serves models with custom VJPs and no JVP
  # rule (the U-Net's GroupNorm). The primal runs once; the pullback is vmapped over probes.
  v, pullback = jax.vjp(fn, x)
  tj = jax.vmap(lambda e: pullback(e.astype(v.dtype))[0])(tangents)
  div = scale * jnp.sum(tangents * tj, axis=tuple(range(2, tangents.ndim))).sum(0)
  return v, div.astype(x.dtype)


def _basis(x):
  """The D standard basis vectors of one example, repeated for the n examples: [D, n, ...]."""
  n, shape = x.shape[0], x.shape[1:]
  d = int(np.prod(shape))
  eye = jnp.eye(d, dtype=x.dtype).reshape((d, 1) + shape)
  return jnp.broadcast_to(eye, (d, n) + shape)


def draw_probes(key, x, probe: str, num_probes: int):
  """Hutchinson probes [P, B, ...] in x's dtype, example i's from fold_in(key, i).

  Rademacher: +-1 with probability 1/2 each; gaussian: N(0, 1). E[eps eps^T] = I for both, so
  E[eps^T J eps] = tr J. An example's probes depend only on its index in the batch.
  """
  checks.choice("probe", probe, PROBES)
  shape = (num_probes,) + tuple(x.shape[1:])

  def one(i):
    k = jax.random.fold_in(key, i)
    if probe == "rademacher":
      return jax.random.rademacher(k, shape, x.dtype)
    return jax.random.normal(k, shape, x.dtype)

  return jnp.swapaxes(jax.vmap(one)(jnp.arange(x.shape[0])), 0, 1)


def drift_and_divergence(model_fn: Callable, params, x, t, process, key=None, *,
                         divergence: str = "hutchinson", probe: str = "rademacher",
                         num_probes: int = 1):
  """The probability-flow drift v(x, t) and its divergence (exact or Hutchinson), jitted.

  Args:
    model_fn: the process's network function (see `log_likelihood`).
    params: its parameters (traced).
    x: [B, ...] states on the model scale; t: scalar time in (0, 1].
    process: `DDPMProcess` or `VDMProcess`.
    key: PRNG key of the probes (divergence 'hutchinson'; drawn as in `log_likelihood`).
  Returns:
    (v [B, ...], div [B]) in x's dtype; div is the exact trace of dv/dx per example, or the
    average of eps^T (dv/dx) eps over num_probes probes.
  """
  cfg = _check_divergence(divergence, probe, num_probes, key)
  x = _check_x(x)
  _check_process(process)
  return _drift_and_divergence_jit(static_fn(model_fn), params, x, jnp.asarray(t, x.dtype),
                                   process, key, cfg)


def _drift_and_divergence_impl(model_fn, params, x, t, process, key, cfg):
  divergence, probe, num_probes = cfg
  if divergence == "exact":
    tangents, scale = _basis(x), 1.0
  else:
    tangents, scale = draw_probes(key, x, probe, num_probes), 1.0 / num_probes
  return _drift_and_div(model_fn, params, process, x, t, tangents, scale)


_drift_and_divergence_jit = jax.jit(_drift_and_divergence_impl, static_argnums=(0, 6))


# =============================================================================================
# The likelihood.
# =============================================================================================

@dataclasses.dataclass(frozen=True)
class _Config:
  divergence: str
  probe: str
  num_probes: int
  solver: str
  rtol: float
  atol: float
  num_steps: Optional[int]
  t0: float
  max_steps: int
  per_example: bool
  prior_log_prob_fn: Optional[StaticFn]


def _check_divergence(divergence, probe, num_probes, key):
  checks.choice("divergence", divergence, DIVERGENCES)
  checks.choice("probe", probe, PROBES)
  num_probes = checks.positive_int("num_probes", num_probes)
  if divergence == "hutchinson" and key is None:
    raise ValueError("key must be a PRNG key for divergence='hutchinson' (it draws the probes)")
  return divergence, probe, num_probes


def _check_x(x, name: str = "x"):
  if not hasattr(x, "shape") or not hasattr(x, "dtype"):
    raise ValueError(f"{name} must be an array [B, ...], got {type(x).__name__}")
  x = jnp.asarray(x)
  if x.ndim < 2 or x.shape[0] < 1 or int(np.prod(x.shape[1:])) < 1:
    raise ValueError(f"{name} must have shape [B, ...] with B >= 1 and at least one data "
                     f"dimension, got shape {x.shape}")
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise ValueError(f"{name} must be a float array on the model scale, got dtype {x.dtype}")
  if not isinstance(x, jax.core.Tracer) and not np.all(np.isfinite(np.asarray(x))):
    raise ValueError(f"{name} must be finite")
  return x


def _check_process(process):
  if not isinstance(process, PROCESSES):
    raise ValueError(f"process must be a DDPMProcess or a VDMProcess, got "
                     f"{type(process).__name__}")


def log_likelihood(model_fn: Callable, params, x, key, process, *,
                   divergence: str = "hutchinson", probe: str = "rademacher",
                   num_probes: int = 1, solver: str = "dopri5", rtol: float = 1e-5,
                   atol: float = 1e-5, num_steps: Optional[int] = None, t0: float = 1e-5,
                   max_steps: int = 4096, per_example: bool = True,
                   prior_log_prob_fn: Optional[Callable] = None) -> dict:
  """log p_t0(x) of the probability-flow ODE model, per example, by one jitted diffrax solve.

  The returned `log_likelihood` is the log-DENSITY (nats, continuous, w.r.t. Lebesgue measure
  on the model scale) of the ODE model's marginal at time t0, evaluated at the state x:
  log p_t0(x) = log p_1(x(1)) + int_t0^1 div v dt (module docstring). It is not a discrete
  log-probability and not rescaled by alpha(t0) (|D log alpha(t0)| is tiny for small t0); for
  integer data use `discrete_bpd`.

  Args:
    model_fn: DDPMProcess: model_fn(params, x_t [n, ...], s [n]) -> eps or x0 prediction
      (C channels, or 2C for learned variances), s = T t - 1 real-valued; VDMProcess:
      denoise_fn(params, z [n, ...], gamma [n]) -> eps_hat. Must treat examples independently
      (no batch statistics). A static argument keyed by its code and closure values
      (`vdm.static_fn`): a fresh lambda over the same network reuses the program.
    params: the network's parameters, traced (new values do not recompile).
    x: [B, ...] float data on the model scale (e.g. dequantized pixels in [-1, 1]).
    key: PRNG key of the Hutchinson probes (example i's probes from fold_in(key, i)); may be
      None for divergence='exact'.
    process: `DDPMProcess` or `VDMProcess` (the latter carries the traced gamma_params).
    divergence: 'exact' (trace of the Jacobian from D vector-Jacobian products, vmapped: about
      D times the work of one drift evaluation; for small D) or 'hutchinson' (eps^T J eps
      from one vector-Jacobian product per probe, as score_sde).
    probe: 'rademacher' or 'gaussian' (Hutchinson). num_probes: probes averaged, >= 1; the
      same probes are used for the whole solve.
    solver: 'dopri5' (default: Dormand-Prince 5(4), the tableau of score_sde's RK45; on the
      MLP of experiments/bench_ode.py it took 1081 evaluations against Tsit5's 1465 at
      rtol = atol = 1e-5, about as many on its U-Net), 'tsit5', 'heun' (adaptive, or fixed-step with num_steps) or
      'euler' (fixed-step only).
    rtol, atol: > 0, the PIDController's tolerances (adaptive; checked but unused with
      num_steps). Error norm: RMS over the augmented state [x, delta] of each example (or of the
      whole batch when per_example=False, as score_sde's solve_ivp on the flattened batch).
    num_steps: None (adaptive) or N >= 1 equal steps from t0 to 1: every example and device
      takes the same steps (deterministic cost).
    t0: the start time in (0, 1), score_sde's epsilon (default 1e-5); t1 = 1.
    max_steps: bound on solver steps (accepted + rejected) for adaptive solves.
    per_example: True (default): a vmapped solve with each example's own step sizes, so an
      example's result does not depend on the rest of the batch (the batched loop runs until the
      slowest example is done); False: one solve of the stacked batch state with common step
      sizes (score_sde's scheme).
    prior_log_prob_fn: None for p_1 = N(0, I), or a function x1 [B, ...] -> [B] log-density
      (nats) used instead (static; e.g. the exact marginal in a test).
  Returns:
    dict of per-example arrays [B]:
      `log_likelihood` = `prior_log_prob` + `delta_log_prob` (nats, log p_t0(x));
      `prior_log_prob`: log p_1(x(1)); `delta_log_prob`: int_t0^1 div v dt (Hutchinson: an
        unbiased estimate);
      `bpd`: -log_likelihood / (D ln 2), continuous bits/dim, which CAN BE NEGATIVE (a density
        exceeds 1 wherever the data concentrate: no lower bound; not a code length);
      `nfe` (int32): evaluations of the drift and divergence, per-step stages x steps
        (accepted + rejected) + the first FSAL stage (the same for every example when
        per_example=False or num_steps is set); `num_steps` (int32): solver steps;
      `x1` [B, ...]: the end state x(1); `success` (bool).
  Raises:
    ValueError naming the argument, before any solve, for a bad option or input;
    RuntimeError when (concrete) solves stopped before t = 1 (max_steps reached or a
      non-finite drift).
  """
  if prior_log_prob_fn is not None and not callable(prior_log_prob_fn):
    raise ValueError("prior_log_prob_fn must be None or a function x1 [B, ...] -> [B]")
  cfg = _Config(
      *_check_divergence(divergence, probe, num_probes, key),
      solver=checks.choice("solver", solver, SOLVERS),
      rtol=checks.number("rtol", rtol, low=0.0, low_open=True),
      atol=checks.number("atol", atol, low=0.0, low_open=True),
      num_steps=checks.optional_positive_int("num_steps", num_steps),
      t0=checks.number("t0", t0, low=0.0, high=1.0, low_open=True, high_open=True),
      max_steps=checks.positive_int("max_steps", max_steps),
      per_example=checks.boolean("per_example", per_example),
      prior_log_prob_fn=static_fn(prior_log_prob_fn))
  if cfg.num_steps is None and cfg.solver not in ADAPTIVE_SOLVERS:
    raise ValueError(f"solver {solver!r} has no error estimate: pass num_steps, or use one of "
                     f"{list(ADAPTIVE_SOLVERS)} for an adaptive solve")
  _check_process(process)
  x = _check_x(x)
  if divergence == "exact":
    key = None
  out = _log_likelihood_jit(static_fn(model_fn), params, x, key, process, cfg)
  if not isinstance(out["success"], jax.core.Tracer):
    ok = np.asarray(out["success"])
    if not ok.all():
      bad = np.flatnonzero(~ok)
      raise RuntimeError(
          f"the probability-flow ODE solve stopped before t = 1 for examples {bad[:10].tolist()}"
          f"{' ...' if bad.size > 10 else ''} of {ok.size}: max_steps={cfg.max_steps} reached "
          "or a non-finite drift; raise max_steps, loosen rtol/atol, or pass num_steps")
  return out


def _standard_normal_log_prob(x1):
  d = int(np.prod(x1.shape[1:]))
  return -0.5 * jnp.sum(jnp.square(x1).reshape(x1.shape[0], -1), axis=-1) - 0.5 * d * LOG_2PI


def _solver(name):
  return {"tsit5": diffrax.Tsit5, "dopri5": diffrax.Dopri5, "heun": diffrax.Heun,
          "euler": diffrax.Euler}[name]()


def _solve(model_fn, params, process, x, tangents, scale, cfg):
  """One diffeqsolve of [x, delta] from t0 to 1 for the n examples of x [n, ...]."""
  dt = x.dtype

  def rhs(t, y, args):
    params_, process_, tangents_ = args
    return _drift_and_div(model_fn, params_, process_, y[0], t, tangents_, scale)

  t0, t1 = jnp.asarray(cfg.t0, dt), jnp.asarray(1.0, dt)
  if cfg.num_steps is None:
    controller, dt0 = diffrax.PIDController(rtol=cfg.rtol, atol=cfg.atol), None
    max_steps = cfg.max_steps
  else:
    ts = jnp.linspace(t0, t1, cfg.num_steps + 1, dtype=dt)
    controller, dt0, max_steps = diffrax.StepTo(ts=ts), None, cfg.num_steps
  sol = diffrax.diffeqsolve(
      diffrax.ODETerm(rhs), _solver(cfg.solver), t0, t1, dt0,
      (x, jnp.zeros((x.shape[0],), dt)), args=(params, process, tangents),
      saveat=diffrax.SaveAt(t1=True), stepsize_controller=controller, max_steps=max_steps,
      adjoint=diffrax.ForwardMode(), throw=False)
  per_step, first = _NFE_PER_STEP[cfg.solver]
  steps = jnp.asarray(sol.stats["num_steps"], jnp.int32)
  ok = sol.result == diffrax.RESULTS.successful
  return sol.ys[0][-1], sol.ys[1][-1], steps, per_step * steps + first, ok


def _log_likelihood_impl(model_fn, params, x, key, process, cfg: _Config):
  b = x.shape[0]
  if cfg.divergence == "exact":
    tangents, scale = _basis(x[:1]), 1.0                       # [D, 1, ...]
  else:
    tangents, scale = draw_probes(key, x, cfg.probe, cfg.num_probes), 1.0 / cfg.num_probes
  if cfg.per_example:
    one = lambda xe, te: _solve(model_fn, params, process, xe[None], te[:, None], scale, cfg)
    t_axis = None if cfg.divergence == "exact" else 1
    te = tangents[:, 0] if cfg.divergence == "exact" else tangents
    x1, delta, steps, nfe, ok = jax.vmap(one, in_axes=(0, t_axis))(x, te)
    x1, delta = x1[:, 0], delta[:, 0]
  else:
    if cfg.divergence == "exact":
      tangents = jnp.broadcast_to(tangents, tangents.shape[:1] + x.shape)
    x1, delta, steps, nfe, ok = _solve(model_fn, params, process, x, tangents, scale, cfg)
    steps, nfe, ok = (jnp.broadcast_to(v, (b,)) for v in (steps, nfe, ok))
  prior_fn = cfg.prior_log_prob_fn or _standard_normal_log_prob
  prior = jnp.asarray(prior_fn(x1), x.dtype)
  if prior.shape != (b,):
    raise ValueError(f"prior_log_prob_fn must return shape [B] = {(b,)}, got {prior.shape}")
  ll = prior + delta
  d = int(np.prod(x.shape[1:]))
  return {"log_likelihood": ll, "prior_log_prob": prior, "delta_log_prob": delta,
          "bpd": -ll / (d * LN2), "nfe": nfe, "num_steps": steps, "x1": x1, "success": ok}


_log_likelihood_jit = jax.jit(_log_likelihood_impl, static_argnums=(0, 5))


# =============================================================================================
# Discrete data.
# =============================================================================================

class NegativeBoundError(RuntimeError):
  """A dequantized bits/dim estimate came out negative: a bug or a broken model (see
  `discrete_bpd`)."""


def discrete_bpd(model_fn: Callable, params, v, key, process, num_levels: int, *,
                 num_dequant: int = 1, dtype=None, **options) -> dict:
  r"""An upper bound on the discrete NLL of integer data v, in bits/dim, by uniform dequantization.

  For each of num_dequant draws u ~ U[0, 1)^D, x = dequantize(key, v, K) (x uniform on v's bin
  of half-width 1/(K-1) around 2v/(K-1) - 1, `vdm.diffusion.encoding`) and
      bpd_draw = -log p_t0(x) / (D ln 2) + log2((K-1)/2)
  (`log_likelihood`, plus `dequantization_offset_bpd(K)`); `bpd` is their mean. Theis et al.
  (2016): with P(v) = the model's mass on v's bin (a box of volume (2/(K-1))^D),
      E_u[bpd_draw] = -E_u[log2 (p(x) (2/(K-1))^D)] / D >= -log2 P(v) / D >= 0
  by Jensen's inequality and P(v) <= 1 (the bins are disjoint, the density normalized). So
  `bpd` is an unbiased Monte Carlo estimate (Hutchinson's estimate of log p is unbiased too) of
  an upper bound on the discrete NLL -log2 P(v) / D, and that bound is >= 0.

  Nonnegativity. The EXPECTATION is >= 0 for every v and every normalized density. A single draw
  is negative exactly when p(x) > ((K-1)/2)^D, the inverse bin volume, at the drawn x, which a
  normalized density can do only on part of the bin; an average of draws can then dip below 0
  by chance only for a model whose density nearly fills a bin's mass into a small part of it.
  For the smooth models of this library (density spread over many bins; NLL far above 0) a
  negative average means a bug: data on another scale than the model's, too loose tolerances,
  a wrong process or model adapter. Hence: if any example's averaged `bpd` is < 0 (concrete
  values), NegativeBoundError is raised, naming the examples; the per-draw `bpd_draws` are
  returned as computed.

  Args:
    model_fn, params, key, process: as `log_likelihood`.
    v: integer array [B, ...] of levels in {0, ..., K-1}.
    num_levels: K >= 2.
    num_dequant: dequantization draws averaged, >= 1 (draw j uses fold_in(key, j), split into
      the dequantization key and the probe key); one compiled program serves every draw.
    dtype: float dtype of x (default: JAX's default float; float64 in 64-bit mode).
    **options: passed to `log_likelihood` (divergence, probe, num_probes, solver, rtol, atol,
      num_steps, t0, max_steps, per_example, prior_log_prob_fn).
  Returns:
    dict: `bpd` [B] (the mean over draws: the estimated upper bound on discrete bits/dim, >= 0),
    `bpd_draws` [num_dequant, B], `continuous_bpd` [B] (mean of -log p(x) / (D ln 2), may be
    negative), `offset_bpd` (float, log2((K-1)/2)), `nfe` [num_dequant, B].
  """
  num_levels = checks.num_levels("num_levels", num_levels)
  num_dequant = checks.positive_int("num_dequant", num_dequant)
  if not hasattr(v, "shape") or not hasattr(v, "dtype"):
    raise ValueError(f"v must be an integer array [B, ...], got {type(v).__name__}")
  if not jnp.issubdtype(jnp.asarray(v).dtype, jnp.integer):
    raise ValueError(f"v must be an integer array of levels in 0..{num_levels - 1} (K = "
                     f"num_levels = {num_levels}), got dtype {v.dtype}; pass the levels, not "
                     "the encoded x")
  if jnp.ndim(v) < 2:
    raise ValueError(f"v must have shape [B, ...] with at least one data axis, got {v.shape}")
  if not isinstance(v, jax.core.Tracer):
    vn = np.asarray(v)
    if vn.size and (vn.min() < 0 or vn.max() > num_levels - 1):
      raise ValueError(f"v must lie in 0..{num_levels - 1} (K = num_levels = {num_levels}), "
                       f"got values in [{vn.min()}, {vn.max()}]")
  if key is None:
    raise ValueError("key must be a PRNG key (it draws the dequantization noise)")
  dtype = jnp.result_type(float) if dtype is None else checks.float_dtype("dtype", dtype)
  offset = dequantization_offset_bpd(num_levels)
  draws, cont, nfes = [], [], []
  for j in range(num_dequant):
    k_deq, k_probe = jax.random.split(jax.random.fold_in(key, j))
    x = dequantize(k_deq, jnp.asarray(v), num_levels, dtype)
    out = log_likelihood(model_fn, params, x, k_probe, process, **options)
    cont.append(out["bpd"])
    draws.append(out["bpd"] + offset)
    nfes.append(out["nfe"])
  draws = jnp.stack(draws)
  bpd = draws.mean(0)
  if not isinstance(bpd, jax.core.Tracer):
    neg = np.flatnonzero(np.asarray(bpd) < 0)
    if neg.size:
      raise NegativeBoundError(
          f"dequantized bits/dim < 0 for examples {neg[:10].tolist()} (values "
          f"{np.asarray(bpd)[neg[:5]].tolist()}): an upper bound on a discrete NLL cannot be "
          "negative in expectation; check that the data, the model and the process share one "
          "scale (x = 2v/(K-1) - 1), and the solver tolerances (see discrete_bpd)")
  return {"bpd": bpd, "bpd_draws": draws, "continuous_bpd": jnp.stack(cont).mean(0),
          "offset_bpd": offset, "nfe": jnp.stack(nfes)}
