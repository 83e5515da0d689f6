"""Gaussian diffusion (Ho et al. 2020) and its variational bound, term by term.

Timesteps are integers t in {0, ..., T-1} (DESIGN.md): code timestep t is the paper's t + 1, so
x_t here is the paper's x_{t+1}. Column t of the bound is
- t = 0: the decoder term L_0 = -log p(x_0 | x_1) (Ho et al. eq. 13, discretized Gaussian over
  K = num_levels bins; or a Gaussian density when num_levels=None, for continuous data);
- t >= 1: L_t = KL(q(x_t | x_{t+1}, x_0) || p(x_t | x_{t+1})) in the paper's 1-based naming
  (Ho et al. eq. 5);
and the prior term L_T = KL(q(x_T | x_0) || N(0, I)) uses alphas_cumprod[T-1]. Every term is
reported in bits per dimension.

Schedule tables are float64 NumPy arrays; they are cast to the compute dtype (the dtype of the
data) when gathered at t. Arrays are channels-last; a model output for learned variances has 2C
channels (the first C parameterize the mean, the last C the variance).
"""
from __future__ import annotations

from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from vdm import checks
from vdm.diffusion import gaussian as G
from vdm.static_fn import static_fn

MEAN_TYPES = ("eps", "x0", "mean")
VAR_TYPES = ("fixed_small", "fixed_large", "learned", "learned_range")
LOSS_TYPES = ("kl", "mse", "hybrid")

# Tolerance of the check that concrete data lie in [-1, 1] (rounding of 2v/(K-1) - 1).
_X0_RANGE_TOL = 1e-5


def _is_concrete(x) -> bool:
  return not isinstance(x, jax.core.Tracer)


def _float_dtype(x):
  """The compute dtype of array x: its own dtype if floating, else the default float."""
  dt = jnp.asarray(x).dtype
  return dt if jnp.issubdtype(dt, jnp.floating) else jnp.asarray(0.0).dtype


class GaussianDiffusion:
  """The forward process, the reverse process p(x_{t-1} | x_t) and the bound, for T steps.

  Args:
    betas: [T] variances beta of the forward process (e.g. `get_beta_schedule`), in (0, 1].
    mean_type: what the model's first C output channels predict: `eps` (the noise), `x0`
      (the data) or `mean` (the posterior mean mu(x_t, t) directly).
    var_type: the reverse-process variance: `fixed_small` (the posterior variance
      beta~_t, log clipped at t = 0), `fixed_large` (beta_t, with the t = 0 entry replaced by
      beta~ at t = 1), `learned` (the last C channels are the log-variance), `learned_range`
      (the last C channels are v in [-1, 1], log-variance v' log beta_t + (1 - v') log beta~_t
      with v' = (v + 1) / 2; Nichol & Dhariwal 2021, eq. 15).
    loss_type: `kl` (T * L_t, the bound without L_T), `mse` (L_simple), `hybrid`
      (L_simple + hybrid_lambda * T * L_t with a stop-gradient on the mean).
    num_levels: K, the number of data levels of the discretized decoder at t = 0 (256 for
      8-bit images); None for a continuous Gaussian decoder (density; data need not be on a
      grid nor in [-1, 1]).
    decoder_approx: None (exact normal CDF) or 'tanh' (the DDPM reference code's
      approximation; see `discretized_gaussian_log_likelihood`).
    hybrid_lambda: lambda of the hybrid loss (default 0.001, Nichol & Dhariwal Sec. 3.1).
    t_chunk_size: number of timesteps evaluated together by `calc_bpd` (one model call on
      t_chunk_size * B examples); bounds its memory (linear in the chunk, independent of T).
      None = all T at once. Accelerators want large chunks; on a 2-core CPU a 32x32 U-Net is
      fastest per image at small batches (chunk 1-4 for B = 8), while small models gain from
      larger chunks (experiments/bench_bound.py).
  """

  def __init__(self, betas, mean_type: str, var_type: str, loss_type: str,
               num_levels: Optional[int] = 256, decoder_approx: Optional[str] = None,
               hybrid_lambda: float = 0.001, t_chunk_size: Optional[int] = 25):
    checks.choice("mean_type", mean_type, MEAN_TYPES)
    checks.choice("var_type", var_type, VAR_TYPES)
    checks.choice("loss_type", loss_type, LOSS_TYPES)
    checks.choice("decoder_approx", decoder_approx, G.DECODER_APPROX)
    num_levels = checks.optional_num_levels("num_levels", num_levels)
    hybrid_lambda = checks.number("hybrid_lambda", hybrid_lambda, low=0.0)
    t_chunk_size = checks.optional_positive_int("t_chunk_size", t_chunk_size)
    betas = np.asarray(betas, dtype=np.float64)
    if betas.ndim != 1 or betas.size < 1:
      raise ValueError(f"betas must be a non-empty 1-D array [T], got shape {betas.shape}")
    if not np.all((betas > 0) & (betas <= 1)):
      raise ValueError("betas must all lie in (0, 1]")

    self.mean_type = mean_type
    self.var_type = var_type
    self.loss_type = loss_type
    self.num_levels = num_levels
    self.decoder_approx = decoder_approx
    self.hybrid_lambda = float(hybrid_lambda)
    self.num_timesteps = int(betas.shape[0])
    self.t_chunk_size = None if t_chunk_size is None else int(t_chunk_size)

    # float64 tables [T] (Ho et al. eqs. 4, 6, 7).
    self.betas = betas
    alphas = 1.0 - betas
    self.alphas_cumprod = np.cumprod(alphas)
    self.alphas_cumprod_prev = np.append(1.0, self.alphas_cumprod[:-1])
    self.sqrt_alphas_cumprod = np.sqrt(self.alphas_cumprod)
    self.sqrt_one_minus_alphas_cumprod = np.sqrt(1.0 - self.alphas_cumprod)
    self.log_one_minus_alphas_cumprod = np.log1p(-self.alphas_cumprod)
    self.sqrt_recip_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod)
    self.sqrt_recipm1_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod - 1.0)
    # Posterior q(x_{t-1} | x_t, x_0) (eq. 7): beta~_t = beta_t (1 - abar_{t-1}) / (1 - abar_t).
    self.posterior_variance = betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
    # beta~ is 0 at t = 0; as in the DDPM code the log is clipped by using the t = 1 value there
    # (with T = 1 there is no t = 1: beta_0 is used instead).
    first = self.posterior_variance[1] if self.num_timesteps > 1 else betas[0]
    self.posterior_log_variance_clipped = np.log(np.append(first, self.posterior_variance[1:]))
    self.posterior_mean_coef1 = betas * np.sqrt(self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
    self.posterior_mean_coef2 = ((1.0 - self.alphas_cumprod_prev) * np.sqrt(alphas)
                                 / (1.0 - self.alphas_cumprod))
    # fixed_large: beta_t, with beta~_1 at t = 0 (so that the decoder has a sensible variance).
    self.fixed_large_variance = np.append(first, betas[1:])
    self.fixed_large_log_variance = np.log(self.fixed_large_variance)
    self.log_betas = np.log(betas)

  # Equal configurations compare equal, so that the jitted entry points (static on the
  # diffusion object) share their compilations.
  def _config(self):
    return (self.betas.tobytes(), self.mean_type, self.var_type, self.loss_type,
            self.num_levels, self.decoder_approx, self.hybrid_lambda, self.t_chunk_size)

  def __eq__(self, other):
    return type(other) is type(self) and self._config() == other._config()

  def __hash__(self):
    return hash(self._config())

  def __repr__(self):
    return (f"GaussianDiffusion(T={self.num_timesteps}, mean_type={self.mean_type!r}, "
            f"var_type={self.var_type!r}, loss_type={self.loss_type!r}, "
            f"num_levels={self.num_levels}, decoder_approx={self.decoder_approx!r}, "
            f"hybrid_lambda={self.hybrid_lambda}, t_chunk_size={self.t_chunk_size})")

  # ---------------------------------------------------------------------------------------
  # Validation (on concrete values only; shapes are always static).

  def _check_t(self, t, batch: int, name: str = "t"):
    t = jnp.asarray(t)
    if not jnp.issubdtype(t.dtype, jnp.integer):
      raise ValueError(f"{name} must be an integer array, got dtype {t.dtype}")
    if t.shape != (batch,):
      raise ValueError(f"{name} must have shape [B] = ({batch},), got shape {t.shape}")
    if _is_concrete(t):
      tn = np.asarray(t)
      if tn.size and (tn.min() < 0 or tn.max() >= self.num_timesteps):
        raise ValueError(f"{name} must lie in [0, {self.num_timesteps - 1}] (T = "
                         f"{self.num_timesteps}), got values in [{tn.min()}, {tn.max()}]")
    return t

  def _check_x0(self, x0, name: str = "x0"):
    x0 = jnp.asarray(x0)
    if x0.ndim < 2:
      raise ValueError(f"{name} must have shape [B, ..., C], got shape {x0.shape}")
    if not jnp.issubdtype(x0.dtype, jnp.floating):
      raise ValueError(f"{name} must be a float array, got dtype {x0.dtype}")
    if self.num_levels is not None and _is_concrete(x0):
      xn = np.asarray(x0)
      if xn.size and not (np.all(np.isfinite(xn)) and xn.min() >= -1 - _X0_RANGE_TOL
                          and xn.max() <= 1 + _X0_RANGE_TOL):
        raise ValueError(f"{name} must lie in [-1, 1] (data encoded as 2v/(K-1) - 1 with K = "
                         f"num_levels = {self.num_levels}), got values in "
                         f"[{xn.min()}, {xn.max()}]")
    return x0

  def _check_same_shape(self, a, b, name_a, name_b):
    if a.shape != b.shape:
      raise ValueError(f"{name_a} and {name_b} must have the same shape, got {a.shape} and "
                       f"{b.shape}")

  @property
  def learns_variance(self) -> bool:
    return self.var_type in ("learned", "learned_range")

  def _split_output(self, model_output, x_t):
    """[B, ..., C or 2C] -> (mean parameter [B, ..., C], variance parameter or None)."""
    c = x_t.shape[-1]
    want = 2 * c if self.learns_variance else c
    if model_output.shape != x_t.shape[:-1] + (want,):
      raise ValueError(
          f"model_output must have shape {x_t.shape[:-1] + (want,)} ({want} channels: "
          f"{'2C for var_type ' + repr(self.var_type) if self.learns_variance else 'C'}, "
          f"C = {c}), got shape {model_output.shape}")
    if self.learns_variance:
      return model_output[..., :c], model_output[..., c:]
    return model_output, None

  # ---------------------------------------------------------------------------------------
  # Tables.

  def _extract(self, table: np.ndarray, t, like):
    """table[t] as [B, 1, ..., 1] (broadcastable to `like`) in the dtype of `like`."""
    dt = _float_dtype(like)
    vals = jnp.asarray(table, dtype=dt)[t]
    return vals.reshape(t.shape + (1,) * (jnp.ndim(like) - 1))

  # ---------------------------------------------------------------------------------------
  # Forward process.

  def q_mean_variance(self, x0, t):
    """q(x_t | x_0) = N(sqrt(abar_t) x0, (1 - abar_t) I) (Ho et al. eq. 4).

    x0: [B, ...]; t: int [B]. Returns (mean [B, ...], variance, log_variance), the latter two
    broadcastable [B, 1, ..., 1].
    """
    x0 = jnp.asarray(x0)
    t = self._check_t(t, x0.shape[0])
    mean = self._extract(self.sqrt_alphas_cumprod, t, x0) * x0
    variance = self._extract(1.0 - self.alphas_cumprod, t, x0)
    log_variance = self._extract(self.log_one_minus_alphas_cumprod, t, x0)
    return mean, variance, log_variance

  def q_sample(self, x0, t, noise):
    """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise, a draw from q(x_t | x_0).

    x0, noise: [B, ...] (noise standard normal); t: int [B]. Returns [B, ...].
    """
    x0 = jnp.asarray(x0)
    noise = jnp.asarray(noise)
    self._check_same_shape(x0, noise, "x0", "noise")
    t = self._check_t(t, x0.shape[0])
    return (self._extract(self.sqrt_alphas_cumprod, t, x0) * x0
            + self._extract(self.sqrt_one_minus_alphas_cumprod, t, x0) * noise)

  def q_posterior_mean_variance(self, x0, x_t, t):
    """q(x_{t-1} | x_t, x_0) = N(mu~, beta~ I) (Ho et al. eqs. 6-7), code timestep t.

    x0, x_t: [B, ...]; t: int [B]. Returns (mean [B, ...], variance [B, 1, ..., 1],
    log_variance [B, 1, ..., 1]); the log-variance is clipped at t = 0 (the t = 1 value) and the
    variance there is the true beta~ = 0.
    """
    x0, x_t = jnp.asarray(x0), jnp.asarray(x_t)
    self._check_same_shape(x0, x_t, "x0", "x_t")
    t = self._check_t(t, x0.shape[0])
    mean = (self._extract(self.posterior_mean_coef1, t, x_t) * x0
            + self._extract(self.posterior_mean_coef2, t, x_t) * x_t)
    variance = self._extract(self.posterior_variance, t, x_t)
    log_variance = self._extract(self.posterior_log_variance_clipped, t, x_t)
    return mean, variance, log_variance

  def predict_x0_from_eps(self, x_t, t, eps):
    """x0 = x_t / sqrt(abar_t) - sqrt(1/abar_t - 1) eps (inverting eq. 4). [B, ...]."""
    return (self._extract(self.sqrt_recip_alphas_cumprod, t, x_t) * x_t
            - self._extract(self.sqrt_recipm1_alphas_cumprod, t, x_t) * eps)

  def predict_eps_from_x0(self, x_t, t, x0):
    """eps = (x_t / sqrt(abar_t) - x0) / sqrt(1/abar_t - 1). [B, ...]."""
    return ((self._extract(self.sqrt_recip_alphas_cumprod, t, x_t) * x_t - x0)
            / self._extract(self.sqrt_recipm1_alphas_cumprod, t, x_t))

  def predict_x0_from_mean(self, x_t, t, mean):
    """x0 from the posterior mean mu~ = coef1 x0 + coef2 x_t. [B, ...]."""
    return ((mean - self._extract(self.posterior_mean_coef2, t, x_t) * x_t)
            / self._extract(self.posterior_mean_coef1, t, x_t))

  # ---------------------------------------------------------------------------------------
  # Reverse process.

  def p_mean_variance(self, model_output, x_t, t, clip_denoised: bool = False):
    """p(x_{t-1} | x_t) from the model output, code timestep t.

    Args:
      model_output: [B, ..., C] or [B, ..., 2C] for learned variances.
      x_t: [B, ..., C]; t: int [B].
      clip_denoised: clip pred_x0 to [-1, 1] before forming the mean (eps and x0 types; with
        mean_type 'mean' the mean is the model output and only pred_x0 is clipped).
    Returns:
      dict `mean` [B, ..., C], `variance` and `log_variance` (broadcastable to [B, ..., C];
      variance == exp(log_variance), so for fixed_small at t = 0 it is the clipped value
      beta~_1 used by the decoder), `pred_x0` [B, ..., C].
    """
    model_output, x_t = jnp.asarray(model_output), jnp.asarray(x_t)
    t = self._check_t(t, x_t.shape[0])
    mean_param, var_param = self._split_output(model_output, x_t)
    dt = _float_dtype(x_t)
    mean_param = mean_param.astype(dt)

    if self.var_type == "learned":
      log_variance = var_param.astype(dt)
    elif self.var_type == "learned_range":
      # Nichol & Dhariwal eq. 15: Sigma = exp(v log beta_t + (1 - v) log beta~_t), v in [0, 1].
      frac = (var_param.astype(dt) + 1.0) / 2.0
      min_log = self._extract(self.posterior_log_variance_clipped, t, x_t)
      max_log = self._extract(self.log_betas, t, x_t)
      log_variance = frac * max_log + (1.0 - frac) * min_log
    elif self.var_type == "fixed_small":
      log_variance = self._extract(self.posterior_log_variance_clipped, t, x_t)
    else:  # fixed_large
      log_variance = self._extract(self.fixed_large_log_variance, t, x_t)
    variance = jnp.exp(log_variance)

    process = (lambda x: jnp.clip(x, -1.0, 1.0)) if clip_denoised else (lambda x: x)
    if self.mean_type == "mean":
      pred_x0 = process(self.predict_x0_from_mean(x_t, t, mean_param))
      mean = mean_param
    else:
      if self.mean_type == "eps":
        pred_x0 = process(self.predict_x0_from_eps(x_t, t, mean_param))
      else:
        pred_x0 = process(mean_param)
      mean, _, _ = self.q_posterior_mean_variance(pred_x0, x_t, t)
    return {"mean": mean, "variance": variance, "log_variance": log_variance,
            "pred_x0": pred_x0}

  # ---------------------------------------------------------------------------------------
  # The bound.

  def decoder_log_likelihood(self, x0, mean, log_variance):
    """log p(x0 | x_1) elementwise, nats: the discretized Gaussian over num_levels bins (Ho et
    al. eq. 13, with decoder_approx), or a Gaussian density when num_levels is None."""
    log_scales = 0.5 * jnp.broadcast_to(log_variance, mean.shape)
    if self.num_levels is None:
      return G.gaussian_log_likelihood(x0, mean, log_scales)
    return G.discretized_gaussian_log_likelihood(x0, mean, log_scales, self.num_levels,
                                                 self.decoder_approx)

  def _decoder_nll_bpd(self, x0, mean, log_variance):
    """-log p(x0 | x_1) in bits/dim [B]."""
    return -G.mean_flat(self.decoder_log_likelihood(x0, mean, log_variance)) / G.LOG2

  def _vb_terms(self, model_output, x0, x_t, t, clip_denoised):
    """The bound term at t [B] (bits/dim) and pred_x0 [B, ...]; no value checks on x0."""
    true_mean, _, true_log_variance = self.q_posterior_mean_variance(x0, x_t, t)
    out = self.p_mean_variance(model_output, x_t, t, clip_denoised)
    kl = G.normal_kl(true_mean, true_log_variance, out["mean"], out["log_variance"])
    kl = G.mean_flat(kl) / G.LOG2
    nll = self._decoder_nll_bpd(x0, out["mean"], out["log_variance"])
    return jnp.where(t == 0, nll, kl), out["pred_x0"]

  def vb_terms_bpd(self, model_output, x0, x_t, t, clip_denoised: bool = False):
    """The bound term at code timestep t, in bits/dim: [B].

    t == 0: the decoder NLL -log p(x0 | x_t) (Ho et al. eq. 13); t >= 1: the KL
    KL(q(x_{t-1} | x_t, x0) || p(x_{t-1} | x_t)) (eq. 5), both averaged over the D data
    dimensions and divided by ln 2.

    model_output: [B, ..., C or 2C]; x0, x_t: [B, ..., C]; t: int [B].
    """
    x0 = self._check_x0(x0)
    x_t = jnp.asarray(x_t)
    self._check_same_shape(x0, x_t, "x0", "x_t")
    t = self._check_t(t, x0.shape[0])
    self._split_output(jnp.asarray(model_output), x_t)  # channel check before compiling
    clip_denoised = checks.boolean("clip_denoised", clip_denoised)
    return _vb_terms_jit(self, model_output, x0, x_t, t, clip_denoised)[0]

  def prior_bpd(self, x0):
    """L_T = KL(q(x_T | x0) || N(0, I)) in bits/dim [B], with alphas_cumprod[T-1]."""
    x0 = self._check_x0(x0)
    t = jnp.full((x0.shape[0],), self.num_timesteps - 1, jnp.int32)
    mean, _, log_variance = self.q_mean_variance(x0, t)
    kl = G.normal_kl(mean, log_variance, 0.0, 0.0)
    return G.mean_flat(kl) / G.LOG2

  def calc_bpd(self, model_fn: Callable, params, x0, key, clip_denoised: bool = False):
    """Every term of the bound for a batch, in one jitted computation.

    For each t the noise is eps_t = normal(fold_in(key, t), x0.shape) (so the result does not
    depend on t_chunk_size), x_t = q_sample(x0, t, eps_t) and the model is called once per
    chunk of t_chunk_size timesteps on the [t_chunk_size * B] stacked inputs; chunks are
    visited sequentially with lax.map, so memory is bounded by the chunk size.

    Args:
      model_fn: model_fn(params, x_t [N, ..., C], t int32 [N]) -> [N, ..., C or 2C].
      params: the model parameters (any pytree).
      x0: [B, ..., C] data (in [-1, 1] for the discretized decoder).
      key: a PRNG key.
    Returns:
      dict, all in float of x0's dtype:
        `total_bpd` [B] = prior_bpd + vb.sum(1) (bits/dim),
        `prior_bpd` [B] (L_T, bits/dim),
        `vb` [B, T] (column t = the term at code timestep t, bits/dim),
        `xstart_mse` [B, T] (mean-flat squared error of pred_x0 against x0),
        `mse` [B, T] (mean-flat squared error of the implied eps against the true noise).
    """
    x0 = self._check_x0(x0)
    clip_denoised = checks.boolean("clip_denoised", clip_denoised)
    return _calc_bpd_jit(self, static_fn(model_fn), params, x0, key, clip_denoised)

  def _calc_bpd_impl(self, model_fn, params, x0, key, clip_denoised):
    T, B = self.num_timesteps, x0.shape[0]
    chunk = T if self.t_chunk_size is None else min(self.t_chunk_size, T)
    num_chunks = -(-T // chunk)
    # Pad the timesteps to whole chunks with repeats of T - 1; the padding is dropped below.
    ts = jnp.minimum(jnp.arange(num_chunks * chunk, dtype=jnp.int32), T - 1)
    ts = ts.reshape(num_chunks, chunk)

    def one_chunk(tc):  # tc: [chunk] timesteps -> dict of [chunk, B]
      noise = jax.vmap(lambda s: jax.random.normal(jax.random.fold_in(key, s), x0.shape,
                                                   x0.dtype))(tc)          # [chunk, B, ...]
      t_flat = jnp.repeat(tc, B)                                           # [chunk * B]
      x0_flat = jnp.broadcast_to(x0, (chunk,) + x0.shape).reshape((chunk * B,) + x0.shape[1:])
      noise_flat = noise.reshape(x0_flat.shape)
      x_t = self.q_sample(x0_flat, t_flat, noise_flat)
      out = model_fn(params, x_t, t_flat)
      vb, pred_x0 = self._vb_terms(out, x0_flat, x_t, t_flat, clip_denoised)
      eps = self.predict_eps_from_x0(x_t, t_flat, pred_x0)
      res = {"vb": vb,
             "xstart_mse": G.mean_flat(jnp.square(pred_x0 - x0_flat)),
             "mse": G.mean_flat(jnp.square(eps - noise_flat))}
      return {k: v.reshape(chunk, B) for k, v in res.items()}

    per_t = jax.lax.map(one_chunk, ts)                       # dict of [num_chunks, chunk, B]
    per_t = {k: v.reshape(num_chunks * chunk, B)[:T].T for k, v in per_t.items()}  # [B, T]
    prior = self.prior_bpd(x0)
    total = prior + jnp.sum(per_t["vb"], axis=1)
    return {"total_bpd": total, "prior_bpd": prior, **per_t}

  # ---------------------------------------------------------------------------------------
  # Training.

  def training_losses(self, model_fn: Callable, params, x0, key, t=None, weights=None,
                      noise=None):
    """Per-example training loss at one timestep per example.

    noise ~ N(0, I) and (if t is None) t ~ Uniform{0..T-1} are drawn from `key`;
    x_t = q_sample(x0, t, noise); out = model_fn(params, x_t, t).

    loss_type
      `kl`:     loss = weights * T * L_t (bits/dim). With t uniform (weights = 1) its
                expectation over t is sum_t L_t, the bound without L_T; with t and weights from
                an importance sampler (weights = 1 / (T p_t)) it stays unbiased.
      `mse`:    loss = weights * (L_simple + [L_t if the variance is learned]), L_simple =
                mean-flat squared error of the first C channels against the target of the mean
                type (eps: the noise; x0: x0; mean: the posterior mean mu~(x_t, x0)). As in
                improved-diffusion, with a learned variance the term L_t (bits/dim, with a
                stop-gradient on the mean channels) trains the variance channels.
      `hybrid`: loss = weights * (L_simple + hybrid_lambda * T * L_t) with a stop-gradient on
                the mean channels in L_t (Nichol & Dhariwal Sec. 3.1). With a fixed variance the
                L_t part has no gradient (it only shifts the value).

    Args:
      model_fn: model_fn(params, x_t [B, ..., C], t int32 [B]) -> [B, ..., C or 2C].
      x0: [B, ..., C]; key: PRNG key; t: optional int [B]; weights: optional float [B]
        (default 1); noise: optional [B, ..., C] (default drawn from key; the trainer passes
        per-example draws so that results do not depend on the device count).
    Returns:
      dict of [B] arrays: `loss`, `mse` (L_simple, reported for every loss type), `vb` (L_t in
      bits/dim at t; for mse/hybrid computed with the stop-gradient on the mean), `t` (int32),
      `weights`. To feed an importance sampler use `vb` (unweighted).
    """
    x0 = self._check_x0(x0)
    B = x0.shape[0]
    if key is None and (t is None or noise is None):
      raise ValueError("training_losses needs a key unless both t and noise are given")
    t_key, noise_key = jax.random.split(key) if key is not None else (None, None)
    if t is None:
      t = jax.random.randint(t_key, (B,), 0, self.num_timesteps, dtype=jnp.int32)
    t = self._check_t(t, B).astype(jnp.int32)
    dt = x0.dtype
    if weights is None:
      weights = jnp.ones((B,), dt)
    weights = jnp.asarray(weights, dt)
    if weights.shape != (B,):
      raise ValueError(f"weights must have shape [B] = ({B},), got shape {weights.shape}")

    if noise is None:
      noise = jax.random.normal(noise_key, x0.shape, dt)
    else:
      noise = jnp.asarray(noise, dt)
      if noise.shape != x0.shape:
        raise ValueError(f"noise must have the shape of x0 {x0.shape}, got {noise.shape}")
    x_t = self.q_sample(x0, t, noise)
    out = model_fn(params, x_t, t)
    mean_param, var_param = self._split_output(jnp.asarray(out), x_t)

    if self.mean_type == "eps":
      target = noise
    elif self.mean_type == "x0":
      target = x0
    else:
      target = self.q_posterior_mean_variance(x0, x_t, t)[0]
    mse = G.mean_flat(jnp.square(target - mean_param))

    T = self.num_timesteps
    if self.loss_type == "kl":
      vb = self._vb_terms(out, x0, x_t, t, False)[0]
      loss = T * vb
    else:
      # The vb part trains only the variance channels: stop the gradient into the mean.
      frozen = jax.lax.stop_gradient(mean_param)
      frozen_out = frozen if var_param is None else jnp.concatenate([frozen, var_param], -1)
      vb = self._vb_terms(frozen_out, x0, x_t, t, False)[0]
      if self.loss_type == "hybrid":
        loss = mse + self.hybrid_lambda * T * vb
      elif self.learns_variance:
        loss = mse + vb
      else:
        loss = mse
        vb = jax.lax.stop_gradient(vb)
    return {"loss": weights * loss, "mse": mse, "vb": vb, "t": t, "weights": weights}

  # ---------------------------------------------------------------------------------------
  # Sampling.

  def p_sample_loop(self, model_fn: Callable, params, shape, key, clip_denoised: bool = True,
                    return_trajectory: bool = False, dtype=None):
    """Ancestral sampling (Ho et al. Algorithm 2) as one lax.scan over t = T-1, ..., 0.

    x_T ~ N(0, I); x_{t-1} = mean(x_t, t) + [t > 0] exp(log_variance / 2) z, z ~ N(0, I) (no
    noise at t = 0, so the result is the decoder mean).

    Args:
      shape: [B, ..., C] of the samples; dtype: float dtype (default: the default float).
    Returns:
      samples [B, ..., C]; with return_trajectory, (samples, dict `x` [T + 1, B, ..., C]
      (x_T first, the samples last) and `pred_x0` [T, B, ..., C] (the prediction at each step,
      from t = T-1 down)).
    """
    shape = tuple(shape)
    if len(shape) < 2:
      raise ValueError(f"shape must be [B, ..., C] with positive sizes, got {shape}")
    shape = tuple(checks.positive_int(f"shape[{i}]", s) for i, s in enumerate(shape))
    dtype = jnp.asarray(0.0).dtype if dtype is None else jnp.dtype(dtype)
    if not jnp.issubdtype(dtype, jnp.floating):
      raise ValueError(f"dtype must be a float dtype, got {dtype}")
    return _p_sample_loop_jit(self, static_fn(model_fn), params, shape, key,
                              checks.boolean("clip_denoised", clip_denoised),
                              checks.boolean("return_trajectory", return_trajectory), dtype)

  def _p_sample_loop_impl(self, model_fn, params, shape, key, clip_denoised,
                          return_trajectory, dtype):
    B = shape[0]
    x_T = jax.random.normal(jax.random.fold_in(key, self.num_timesteps), shape, dtype)

    def step(x, t):
      tb = jnp.full((B,), t, jnp.int32)
      out = self.p_mean_variance(model_fn(params, x, tb), x, tb, clip_denoised)
      z = jax.random.normal(jax.random.fold_in(key, t), shape, dtype)
      nonzero = (t > 0).astype(dtype)
      x_prev = out["mean"] + nonzero * jnp.exp(0.5 * out["log_variance"]) * z
      x_prev = x_prev.astype(dtype)
      return x_prev, ((x_prev, out["pred_x0"].astype(dtype)) if return_trajectory else None)

    ts = jnp.arange(self.num_timesteps - 1, -1, -1, dtype=jnp.int32)
    x0, traj = jax.lax.scan(step, x_T, ts)
    if not return_trajectory:
      return x0
    xs, pred_x0 = traj
    return x0, {"x": jnp.concatenate([x_T[None], xs], axis=0), "pred_x0": pred_x0}


# jit with the diffusion object (hashed by its configuration), model_fn (wrapped in
# vdm.static_fn.StaticFn: keyed by its code and the values it closes over, so a fresh lambda
# over the same network reuses the program) and the flags static; params are traced. One
# compilation per (configuration, model function, shapes), cached by jax.
_calc_bpd_jit = jax.jit(GaussianDiffusion._calc_bpd_impl, static_argnums=(0, 1, 5))
_vb_terms_jit = jax.jit(GaussianDiffusion._vb_terms, static_argnums=(0, 5))
_p_sample_loop_jit = jax.jit(GaussianDiffusion._p_sample_loop_impl,
                             static_argnums=(0, 1, 3, 5, 6, 7))


# -------------------------------------------------------------------------------------------
# Post-processing.

def rate_distortion(bpd_dict, num_levels: int = 256):
  """Rate and distortion of progressive decoding along the reverse process (DDPM Table 4, Fig. 5).

  The receiver first gets x_T (rate L_T), then the latents of code timesteps T-2, ..., 0, the
  latent of timestep t costing column t+1 of vb. At reverse step s = 1, ..., T (DDPM's "reverse
  process time") it holds the latent of code timestep t = T - s, has paid
      rate[s-1] = L_T + sum_{t' > t} vb[:, t']      (bits/dim, batch mean),
  and its estimate of x0 is pred_x0 from that latent, with
      distortion[s-1] = sqrt(mean over batch and dims of xstart_mse[:, t]) * (K - 1) / 2,
  the RMSE on the 0..K-1 pixel scale (0-255 for K = 256). The decoder term (column 0) is not
  in any rate: sending x0 itself losslessly at the end brings the rate to total_bpd.

  Args:
    bpd_dict: the output of `calc_bpd` (uses `prior_bpd` [B], `vb` [B, T], `xstart_mse` [B, T]);
      arrays from several batches may be concatenated along the batch axis first.
    num_levels: K, for the pixel scale of the distortion.
  Returns:
    dict of NumPy arrays [T] over the reverse steps: `reverse_step` (1..T), `t` (code timestep
    of the latent held: T-1..0), `rate` (float64 bits/dim), `distortion` (float64 RMSE on the
    0..K-1 scale).
  """
  num_levels = checks.num_levels("num_levels", num_levels)
  prior = np.asarray(bpd_dict["prior_bpd"], np.float64)
  vb = np.asarray(bpd_dict["vb"], np.float64)
  xmse = np.asarray(bpd_dict["xstart_mse"], np.float64)
  if vb.ndim != 2 or xmse.shape != vb.shape or prior.shape != vb.shape[:1]:
    raise ValueError(f"bpd_dict must hold prior_bpd [B], vb [B, T] and xstart_mse [B, T]; got "
                     f"{prior.shape}, {vb.shape}, {xmse.shape}")
  T = vb.shape[1]
  t = np.arange(T - 1, -1, -1)
  # Terms sent before holding the latent of timestep t: columns t+1..T-1.
  vb_rev = vb[:, ::-1]                                           # columns T-1, ..., 0
  sent = np.concatenate([np.zeros((vb.shape[0], 1)), np.cumsum(vb_rev[:, :-1], axis=1)], axis=1)
  rate = np.mean(prior[:, None] + sent, axis=0)
  distortion = np.sqrt(np.mean(xmse[:, ::-1], axis=0)) * (num_levels - 1) / 2.0
  return {"reverse_step": np.arange(1, T + 1), "t": t, "rate": rate, "distortion": distortion}
