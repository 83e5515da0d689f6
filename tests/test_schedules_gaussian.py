"""Tests of vdm/diffusion/schedules.py and vdm/diffusion/gaussian.py against independent
float64 NumPy / SciPy computations written here."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate, special, stats

from vdm.diffusion import gaussian as G
from vdm.diffusion import schedules as S

# One compilation per call instead of one per primitive (keeps the file fast).
_dgll = jax.jit(G.discretized_gaussian_log_likelihood, static_argnums=(3, 4))

# ------------------------------------------------------------------------------------------------
# Schedules
# ------------------------------------------------------------------------------------------------


def _ref_schedule(name, T, **kw):
  """Each schedule from its formula, element by element with Python floats."""
  out = []
  for i in range(T):
    frac = i / (T - 1) if T > 1 else 0.0
    if name == "linear":
      b0, b1 = kw.get("beta_start", 1e-4), kw.get("beta_end", 0.02)
      out.append(b0 + frac * (b1 - b0))
    elif name == "quad":
      b0, b1 = kw.get("beta_start", 1e-4), kw.get("beta_end", 0.02)
      out.append((math.sqrt(b0) + frac * (math.sqrt(b1) - math.sqrt(b0))) ** 2)
    elif name == "const":
      out.append(kw.get("beta", 0.02))
    elif name == "jsd":
      out.append(1.0 / (T - i))
    elif name == "cosine":
      s = 0.008
      abar = lambda u: math.cos((u + s) / (1 + s) * math.pi / 2) ** 2
      out.append(min(1.0 - abar((i + 1) / T) / abar(i / T), 0.999))
  return np.array(out)


@pytest.mark.parametrize("name", ["linear", "cosine", "quad", "const", "jsd"])
@pytest.mark.parametrize("T", [1, 7, 1000])
def test_schedule_matches_formula(name, T):
  b = S.get_beta_schedule(name, T)
  assert b.dtype == np.float64 and b.shape == (T,)
  # 1 - ratio cancels: one ulp of 1 absolute.
  np.testing.assert_allclose(b, _ref_schedule(name, T), rtol=1e-12, atol=1e-15)
  assert np.all(b > 0) and np.all(b <= 1)


def test_schedule_kwargs():
  b = S.get_beta_schedule("linear", 11, beta_start=1e-3, beta_end=0.05)
  np.testing.assert_allclose(b, _ref_schedule("linear", 11, beta_start=1e-3, beta_end=0.05),
                             rtol=1e-12)
  b = S.get_beta_schedule("const", 5, beta=0.3)
  np.testing.assert_array_equal(b, np.full(5, 0.3))


def test_linear_endpoints_and_cosine_cap():
  b = S.get_beta_schedule("linear", 1000)
  assert b[0] == 1e-4 and abs(b[-1] - 0.02) < 1e-15
  c = S.get_beta_schedule("cosine", 1000)
  # The last beta of the uncapped cosine schedule is 1 (alpha_bar(1) = cos^2(pi/2) ~ 0): capped.
  assert c[-1] == 0.999
  assert np.all(c <= 0.999) and np.sum(c == 0.999) >= 1 and c[0] < 1e-4
  # The cumulative product follows alpha_bar(t/T) of Nichol & Dhariwal eq. 17 where uncapped.
  s = 0.008
  f = lambda u: np.cos((u + s) / (1 + s) * np.pi / 2) ** 2
  abar = np.cumprod(1 - c)
  t = np.arange(1, 1001) / 1000
  np.testing.assert_allclose(abar[:-1], f(t[:-1]) / f(0.0), rtol=1e-9)


def test_unknown_schedule_lists_allowed():
  with pytest.raises(ValueError) as e:
    S.get_beta_schedule("sigmoid", 10)
  for name in ("linear", "cosine", "quad", "const", "jsd"):
    assert name in str(e.value)
  with pytest.raises(ValueError, match="num_timesteps"):
    S.get_beta_schedule("linear", 0)
  with pytest.raises(ValueError, match="num_timesteps"):
    S.get_beta_schedule("linear", 2.5)
  with pytest.raises(ValueError, match="keyword"):
    S.get_beta_schedule("jsd", 10, beta=0.1)


# ------------------------------------------------------------------------------------------------
# normal_kl
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("m1,lv1,m2,lv2", [(0.0, 0.0, 0.0, 0.0), (0.3, -1.0, -0.5, 0.7),
                                           (2.0, 1.5, 1.0, -2.0), (-1.0, -6.0, -1.1, -5.0)])
def test_normal_kl_vs_integration(m1, lv1, m2, lv2):
  s1, s2 = math.exp(0.5 * lv1), math.exp(0.5 * lv2)
  p, q = stats.norm(m1, s1), stats.norm(m2, s2)
  ref, _ = integrate.quad(lambda x: p.pdf(x) * (p.logpdf(x) - q.logpdf(x)),
                          m1 - 40 * s1, m1 + 40 * s1, points=[m1], limit=400, epsabs=1e-13)
  with jax.enable_x64():
    kl = float(G.normal_kl(jnp.float64(m1), jnp.float64(lv1), jnp.float64(m2), jnp.float64(lv2)))
  assert abs(kl - ref) < 1e-9 * max(1.0, abs(ref))


def test_normal_kl_zero_for_equal_and_positive():
  rng = np.random.RandomState(0)
  m, lv = rng.randn(100), 3 * rng.randn(100)
  with jax.enable_x64():
    np.testing.assert_allclose(np.asarray(G.normal_kl(m, lv, m, lv)), 0.0, atol=1e-14)
    kl = np.asarray(G.normal_kl(m, lv, rng.randn(100), 3 * rng.randn(100)))
  assert np.all(kl > 0)


# ------------------------------------------------------------------------------------------------
# Discretized Gaussian decoder
# ------------------------------------------------------------------------------------------------


def _ref_log_interval(a, b):
  """log(Phi(b) - Phi(a)) by quadrature of the density, factored around the point c of [a, b]
  nearest 0 (so tail intervals keep full relative precision):
      log phi(c) + log integral_a^b exp(-(x^2 - c^2) / 2) dx,
  with x = c + u / s, s = max(c, 1), in the tails (the integrand exp(-c u / s - u^2 / (2 s^2))
  then decays on a scale of about 1 in u)."""
  if a <= 0 <= b:
    lo, hi = max(a, -40.0), min(b, 40.0)
    pts = [0.0] if lo < 0 < hi else None
    val, _ = integrate.quad(lambda x: math.exp(-0.5 * x * x), lo, hi, points=pts,
                            epsabs=0, epsrel=1e-13, limit=200)
    return -0.5 * math.log(2 * math.pi) + math.log(val)
  c, hi = (a, b) if a > 0 else (-b, -a)  # mirror the left tail to the right
  s = max(c, 1.0)
  u_hi = min(s * (hi - c), 60.0)  # beyond u = 60 the integrand is below e^-60
  val, _ = integrate.quad(lambda u: math.exp(-c * u / s - 0.5 * (u / s) ** 2), 0.0, u_hi,
                          epsabs=0, epsrel=1e-13, limit=200)
  return -0.5 * c * c - 0.5 * math.log(2 * math.pi) + math.log(val / s)


def _ref_discretized(x, mean, log_scale, K):
  h = 1.0 / (K - 1)
  s = math.exp(log_scale)
  if x < -1 + 0.5 * h:
    return float(special.log_ndtr((x + h - mean) / s))
  if x > 1 - 0.5 * h:
    return float(special.log_ndtr(-(x - h - mean) / s))
  return _ref_log_interval((x - h - mean) / s, (x + h - mean) / s)


def test_discretized_vs_scipy_cdf_difference_moderate():
  # Plain SciPy CDF differences where they are accurate (moderate arguments, not tiny bins).
  rng = np.random.RandomState(1)
  K = 17
  v = rng.randint(0, K, 300)
  x = 2 * v / (K - 1) - 1
  means = rng.uniform(-1.2, 1.2, 300)
  log_scales = rng.uniform(-2.5, 0.5, 300)
  h = 1 / (K - 1)
  s = np.exp(log_scales)
  a, b = (x - h - means) / s, (x + h - means) / s
  # Difference of upper tails when the bin is right of the mean (no cancellation near 1).
  p = np.where(a > 0, stats.norm.sf(a) - stats.norm.sf(b), stats.norm.cdf(b) - stats.norm.cdf(a))
  p = np.where(v == 0, stats.norm.cdf((x + h - means) / s), p)
  p = np.where(v == K - 1, stats.norm.sf((x - h - means) / s), p)
  with jax.enable_x64():
    got = np.asarray(_dgll(x, means, log_scales, K))
  np.testing.assert_allclose(got, np.log(p), rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("K", [2, 17, 256])
def test_discretized_vs_quadrature_all_regimes(K):
  # Tails, narrow bins and wide bins, against the quadrature reference.
  rng = np.random.RandomState(K)
  v = rng.randint(0, K, 120)
  x = 2 * v / (K - 1) - 1
  means = np.concatenate([rng.uniform(-1.5, 1.5, 60), rng.choice([-30.0, -4.0, 3.0, 25.0], 60)])
  log_scales = np.concatenate([rng.uniform(-9, 2, 60), rng.uniform(-3, 1, 60)])
  with jax.enable_x64():
    got = np.asarray(_dgll(x, means, log_scales, K))
  ref = np.array([_ref_discretized(*a, K) for a in zip(x, means, log_scales)])
  assert np.all(np.isfinite(ref))
  assert np.min(ref) < -100  # deep tails are exercised
  np.testing.assert_allclose(got, ref, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("K", [2, 17, 256])
def test_discretized_sums_to_one_over_bins(K):
  grid = 2 * np.arange(K) / (K - 1) - 1
  means = np.array([-1e3, -40.0, -3.0, -1.0, -0.37, 0.0, 0.5, 1.0, 2.0, 40.0, 1e3])
  log_scales = np.array([-15.0, -8.0, -4.0, -1.0, 0.0, 1.0, 3.0, 9.0])
  m, ls = np.meshgrid(means, log_scales, indexing="ij")
  with jax.enable_x64():
    lp = _dgll(grid[None, None, :], m[..., None], ls[..., None], K)
    total = np.asarray(jax.scipy.special.logsumexp(lp, axis=-1))
  np.testing.assert_allclose(total, 0.0, atol=1e-9)


def test_discretized_finite_in_float32_values_and_grads():
  K = 256
  grid = jnp.asarray(2 * np.arange(0, K, 5) / (K - 1) - 1, jnp.float32)
  means = jnp.asarray([-1e6, -1e3, -7.0, -1.0, -0.2, 0.0, 0.3, 1.0, 7.0, 1e3, 1e6], jnp.float32)
  log_scales = jnp.asarray([-40.0, -20.0, -8.0, -3.0, 0.0, 3.0, 20.0, 40.0], jnp.float32)
  x, m, ls = jnp.meshgrid(grid, means, log_scales, indexing="ij")

  def f(m, ls):
    return _dgll(x, m, ls, K)

  val = f(m, ls)
  assert val.dtype == jnp.float32
  assert bool(jnp.all(jnp.isfinite(val))) and bool(jnp.all(val <= 0))
  gm, gls = jax.jit(jax.grad(lambda m, ls: jnp.sum(f(m, ls)), argnums=(0, 1)))(m, ls)
  assert bool(jnp.all(jnp.isfinite(gm))) and bool(jnp.all(jnp.isfinite(gls)))
  # And for a moderate case the float32 value is close to the float64 one.
  with jax.enable_x64():
    v64 = np.asarray(_dgll(np.asarray(x, np.float64), np.asarray(m, np.float64),
                           np.asarray(ls, np.float64), K))
  mod = (np.abs(np.asarray(m)) <= 7) & (np.abs(np.asarray(ls)) <= 3)
  np.testing.assert_allclose(np.asarray(val)[mod], v64[mod], rtol=1e-4, atol=1e-4)


def _ref_tanh_decoder(x, means, log_scales):
  """The DDPM reference code's decoder (K = 256; thresholds +-0.999, tanh CDF, 1e-12 floor)."""
  cdf = lambda z: 0.5 * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (z + 0.044715 * z ** 3)))
  centered = x - means
  inv = np.exp(-log_scales)
  cdf_plus = cdf(inv * (centered + 1.0 / 255))
  cdf_min = cdf(inv * (centered - 1.0 / 255))
  log_cdf_plus = np.log(np.maximum(cdf_plus, 1e-12))
  log_one_minus = np.log(np.maximum(1.0 - cdf_min, 1e-12))
  delta = cdf_plus - cdf_min
  return np.where(x < -0.999, log_cdf_plus,
                  np.where(x > 0.999, log_one_minus, np.log(np.maximum(delta, 1e-12))))


def test_discretized_tanh_matches_reference_formula():
  rng = np.random.RandomState(3)
  x = 2 * rng.randint(0, 256, 500) / 255 - 1
  x[:10], x[10:20] = -1.0, 1.0
  means = rng.uniform(-1.5, 1.5, 500)
  log_scales = rng.uniform(-8, 1, 500)
  with jax.enable_x64():
    got = np.asarray(_dgll(x, means, log_scales, 256, "tanh"))
  ref = _ref_tanh_decoder(x, means, log_scales)
  # Compare probabilities: the tanh CDF difference cancels near 1, so the log of tiny bins is
  # only as accurate as the absolute error (a few ulps of 1) allows.
  np.testing.assert_allclose(np.exp(got), np.exp(ref), rtol=1e-10, atol=1e-14)
  big = ref > -10
  np.testing.assert_allclose(got[big], ref[big], rtol=1e-10)
  assert np.any(ref == np.log(1e-12))  # the floor is exercised
  # The tanh approximation differs from the exact CDF (so the option is not a no-op).
  with jax.enable_x64():
    exact = np.asarray(_dgll(x, means, log_scales, 256))
  assert np.max(np.abs(exact[big] - ref[big])) > 1e-5


def test_discretized_bad_args():
  with pytest.raises(ValueError, match="approx"):
    G.discretized_gaussian_log_likelihood(0.0, 0.0, 0.0, 256, approx="erf")
  with pytest.raises(ValueError, match="num_levels"):
    G.discretized_gaussian_log_likelihood(0.0, 0.0, 0.0, 1)


def test_gaussian_log_likelihood_and_units():
  rng = np.random.RandomState(4)
  x, m, ls = rng.randn(50), rng.randn(50), rng.uniform(-3, 2, 50)
  with jax.enable_x64():
    got = np.asarray(G.gaussian_log_likelihood(x, m, ls))
    a = rng.randn(3, 4, 5)
    mf = np.asarray(G.mean_flat(a))
    sf = np.asarray(G.sum_flat(a))
    bpd = float(G.bits_per_dim(jnp.float64(100.0), 20))
    bits = float(G.nats_to_bits(jnp.float64(3.0)))
  np.testing.assert_allclose(got, stats.norm.logpdf(x, m, np.exp(ls)), rtol=1e-12)
  np.testing.assert_allclose(mf, a.reshape(3, -1).mean(1), rtol=1e-12)
  np.testing.assert_allclose(sf, a.reshape(3, -1).sum(1), rtol=1e-12)
  assert abs(bpd - 100.0 / (20 * np.log(2))) < 1e-12
  assert abs(bits - 3.0 / np.log(2)) < 1e-12
