"""Gaussian building blocks of the diffusion bounds: KL, decoders, units.

All functions are elementwise (broadcasting) and return nats, except `nats_to_bits` (bits) and
`bits_per_dim` (bits per dimension), whose names say so (the units rule of `vdm.diffusion`).
Data live on [-1, 1] with K = num_levels integer levels v -> x = 2v/(K-1) - 1 (DESIGN.md).
"""
from __future__ import annotations

import math

import jax.numpy as jnp
from jax.scipy.special import erf, log_ndtr

from vdm import checks

LOG2 = math.log(2.0)
DECODER_APPROX = (None, "tanh")

# Terms of the asymptotic series that jax.scipy.special.log_ndtr uses below z = -20 (float64)
# or z = -10 (float32). The default, 3, leaves up to 4e-9 absolute error in float64 just below
# z = -20 (log Phi(-20.5): -214.0667289665677 instead of -214.0667289632638); with 10 terms the
# error is at the float64 rounding level (about 1e-13 absolute, 1e-16 relative) for z down to
# -40 and beyond (tests/test_numerics.py checks it against mpmath). The series is asymptotic:
# its terms shrink while k < z^2 / 2, i.e. for k up to 50 at the float32 switch point z = -10.
LOG_NDTR_SERIES_ORDER = 10


def log_normal_cdf(z):
  """log Phi(z), the log of the standard normal CDF, elementwise, in nats; finite for finite z.

  jax.scipy.special.log_ndtr with `LOG_NDTR_SERIES_ORDER` terms of its tail series (see
  there): absolute error about 1e-13 in float64 for every z (checked for z in [-40, 40]).
  """
  return log_ndtr(z, series_order=LOG_NDTR_SERIES_ORDER)


def expm1mx(v):
  """exp(v) - 1 - v elementwise, accurate to a few ulps relative for every v (no cancellation).

  Written as expm1(v) - v where |v| >= 1/2 (relative error there at most 4 ulps of expm1);
  for |v| < 1/2 the Taylor series sum_{k=2}^{17} v^k / k!, whose truncation is below 1e-19
  relative. Both expm1(v) - v (relative error 2 eps / |v|) and exp(v) - 1 - v (2 eps / v^2)
  lose all digits as v -> 0, e.g. in the variance part of a KL between close Gaussians.
  The unselected branch sees a safe input, so gradients stay finite.
  """
  v = jnp.asarray(v)
  small = jnp.abs(v) < 0.5
  vs = jnp.where(small, v, 0.0)
  vl = jnp.where(small, 1.0, v)
  # Horner form of v^2 (1/2! + v (1/3! + v (1/4! + ...))).
  acc = jnp.zeros_like(vs)
  for k in range(17, 1, -1):
    acc = acc * vs + 1.0 / math.factorial(k)
  return jnp.where(small, vs * vs * acc, jnp.expm1(vl) - vl)


def normal_kl(mean1, logvar1, mean2, logvar2):
  """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)) elementwise, in nats.

  Closed form for univariate Gaussians; used for L_{t-1} in Ho et al. (2020), eq. 5:
    0.5 (-1 + logvar2 - logvar1 + exp(logvar1 - logvar2) + (mean1 - mean2)^2 exp(-logvar2)),
  with the variance part -1 - d + exp(d), d = logvar1 - logvar2, evaluated as `expm1mx(d)` so
  that it keeps its relative precision when the two variances are close.
  """
  logvar1 = jnp.asarray(logvar1)
  logvar2 = jnp.asarray(logvar2)
  return 0.5 * (expm1mx(logvar1 - logvar2) + jnp.square(mean1 - mean2) * jnp.exp(-logvar2))


def gaussian_log_likelihood(x, means, log_scales):
  """log N(x; means, exp(log_scales)^2) elementwise, in nats (continuous decoder)."""
  z = (x - means) * jnp.exp(-log_scales)
  return -0.5 * (math.log(2 * math.pi) + jnp.square(z)) - log_scales


def mean_flat(x):
  """Mean over every axis but the first: [B, ...] -> [B]."""
  return jnp.mean(x, axis=tuple(range(1, x.ndim)))


def sum_flat(x):
  """Sum over every axis but the first: [B, ...] -> [B]."""
  return jnp.sum(x, axis=tuple(range(1, x.ndim)))


def nats_to_bits(x):
  """Nats -> bits."""
  return x / LOG2


def bits_per_dim(nats, num_dims: int):
  """Total nats of an example over num_dims dimensions -> bits per dimension."""
  return nats / (num_dims * LOG2)


def _approx_std_normal_cdf(x):
  """The tanh approximation of the standard normal CDF used by the DDPM reference code."""
  return 0.5 * (1.0 + jnp.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def _log1mexp(d):
  """log(1 - exp(d)) for d <= 0, accurate at both ends (Maechler 2012).

  Each branch sees a safe input where it is not selected, so that jnp.where does not leak an
  inf/nan gradient from the other branch (log1p(-exp(d)) has gradient -inf at d = 0).
  """
  near = d > -LOG2
  d_near = jnp.where(near, d, -1.0)
  d_far = jnp.where(near, -1.0, d)
  return jnp.where(near, jnp.log(-jnp.expm1(d_near)), jnp.log1p(-jnp.exp(d_far)))


def _log_normal_interval(m, w):
  """log(Phi(m + w/2) - Phi(m - w/2)) for finite m and w > 0, elementwise; never -inf.

  Taking the midpoint m and width w (not the two ends) keeps narrow intervals accurate in
  float32. Three regimes, each evaluated on inputs made safe where it is not selected (so
  that jnp.where does not leak inf/nan gradients), with a = m - w/2, b = m + w/2:
  - narrow interval (w max(1, |m|) < 0.3): the series
    Phi(b) - Phi(a) = phi(m) w sum_k He_2k(m) (w/2)^2k / (2k+1)!
                    = phi(m) w [1 + (m^2-1) w^2/24 + (m^4 - 6m^2 + 3) w^4/1920
                                + (m^6 - 15m^4 + 45m^2 - 15) w^6/322560 + O(w^8)],
    from integrating phi(m + u) = phi(m) sum_n He_n(m) (-u)^n / n! over |u| <= w/2 (the
    w^8 term is below 1e-10 relative in this regime);
  - interval straddling 0: 0.5 (erf(b/sqrt2) - erf(a/sqrt2)), a sum of two positive terms;
  - both on one side: mirror to the left tail and take
    log Phi(b) + log(1 - exp(log Phi(a) - log Phi(b))).
  """
  a = m - 0.5 * w
  b = m + 0.5 * w
  narrow = w * jnp.maximum(1.0, jnp.abs(m)) < 0.3
  straddle = (a < 0) & (b > 0) & ~narrow
  one_side = ~narrow & ~straddle

  # Narrow: the series in log space.
  wn = jnp.where(narrow, jnp.maximum(w, jnp.finfo(w.dtype).tiny), 0.1)
  mn = jnp.where(narrow, m, 0.0)
  w2, m2 = wn * wn, mn * mn
  m4 = m2 * m2
  series = (w2 * (m2 - 1.0) / 24.0 + w2 * w2 * (m4 - 6.0 * m2 + 3.0) / 1920.0
            + w2 * w2 * w2 * (m4 * m2 - 15.0 * m4 + 45.0 * m2 - 15.0) / 322560.0)
  log_narrow = (jnp.log(wn) - 0.5 * m2 - 0.5 * math.log(2 * math.pi) + jnp.log1p(series))

  # Straddle: erf difference of opposite-signed arguments (no cancellation).
  as_ = jnp.where(straddle, a, -1.0)
  bs = jnp.where(straddle, b, 1.0)
  log_straddle = jnp.log(0.5 * (erf(bs / math.sqrt(2.0)) - erf(as_ / math.sqrt(2.0))))

  # One side: mirror into the left tail (hi <= 0), then a stable log-difference.
  right = a >= 0
  lo = jnp.where(right, -b, a)
  hi = jnp.where(right, -a, b)
  lo = jnp.where(one_side, lo, -2.0)
  hi = jnp.where(one_side, hi, -1.0)
  log_hi = log_normal_cdf(hi)
  log_one_side = log_hi + _log1mexp(jnp.minimum(log_normal_cdf(lo) - log_hi, -1e-30))

  return jnp.where(narrow, log_narrow, jnp.where(straddle, log_straddle, log_one_side))


def discretized_gaussian_log_likelihood(x, means, log_scales, num_levels: int = 256,
                                        approx: str | None = None):
  """log P(x) under a Gaussian N(means, exp(log_scales)^2) discretized to K = num_levels bins.

  The decoder of Ho et al. (2020), eq. 13: the bin of x is [x - h, x + h] with h = 1/(K-1),
  and the two outer bins extend to -inf and +inf, so the K bin probabilities sum to 1.

  Args:
    x: data on the grid {2v/(K-1) - 1}, any shape.
    means, log_scales: broadcastable to x (log_scales is log sigma, i.e. half the log-variance).
    num_levels: K >= 2.
    approx: None for the exact normal CDF in log space (finite for every mean and scale);
      'tanh' for the reference code's tanh CDF approximation with its 1e-12 floor.
  Returns:
    log-probabilities in nats, shape of the broadcast of the inputs.
  """
  num_levels = checks.num_levels("num_levels", num_levels)
  checks.choice("approx", approx, DECODER_APPROX)
  x, means, log_scales = jnp.broadcast_arrays(x, means, log_scales)
  h = 1.0 / (num_levels - 1)
  lowest = x < -1.0 + 0.5 * h
  highest = x > 1.0 - 0.5 * h
  inv_sigma = jnp.exp(-log_scales)
  centered = x - means
  if approx == "tanh":
    cdf_plus = _approx_std_normal_cdf(inv_sigma * (centered + h))
    cdf_min = _approx_std_normal_cdf(inv_sigma * (centered - h))
    floor = 1e-12
    log_cdf_plus = jnp.log(jnp.maximum(cdf_plus, floor))
    log_one_minus_cdf_min = jnp.log(jnp.maximum(1.0 - cdf_min, floor))
    log_delta = jnp.log(jnp.maximum(cdf_plus - cdf_min, floor))
    return jnp.where(lowest, log_cdf_plus, jnp.where(highest, log_one_minus_cdf_min, log_delta))
  # Standardized bin edges, clipped at 1e5 standard deviations (log-probability about -5e9)
  # so that values and gradients stay finite in float32 for every mean and scale.
  big = 1e5
  b = jnp.clip(inv_sigma * (centered + h), -big, big)
  a = jnp.clip(inv_sigma * (centered - h), -big, big)
  interior = ~lowest & ~highest
  mi = jnp.where(interior, jnp.clip(inv_sigma * centered, -big, big), 0.0)
  wi = jnp.where(interior, jnp.clip(2.0 * h * inv_sigma, 0.0, big), 1.0)
  log_interior = _log_normal_interval(mi, wi)
  return jnp.where(lowest, log_normal_cdf(b),
                   jnp.where(highest, log_normal_cdf(-a), log_interior))
