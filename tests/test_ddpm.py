"""Tests of vdm/diffusion/ddpm.py against independent float64 NumPy / SciPy computations.

Tiny T (6) and tiny data ([B, 2, 2, 2], K = 17 levels) keep the file fast.
"""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate, stats

from vdm.diffusion import GaussianDiffusion, get_beta_schedule, rate_distortion

T = 6
K = 17
BETAS = np.linspace(0.05, 0.45, T)  # large betas: every term is far from 0
SHAPE = (3, 2, 2, 2)
MEAN_TYPES = ("eps", "x0", "mean")
VAR_TYPES = ("fixed_small", "fixed_large", "learned", "learned_range")
LN2 = math.log(2.0)


def make(mean_type="eps", var_type="fixed_small", loss_type="kl", **kw):
  return GaussianDiffusion(BETAS, mean_type, var_type, loss_type, num_levels=kw.pop("num_levels", K),
                           **kw)


def data(seed=0, shape=SHAPE, levels=K):
  v = np.random.RandomState(seed).randint(0, levels, shape)
  return 2.0 * v / (levels - 1) - 1.0


# ------------------------------------------------------------------------------------------------
# Independent float64 NumPy references (the paper's formulas, written out here)
# ------------------------------------------------------------------------------------------------


def tables(betas=BETAS):
  ab = np.cumprod(1.0 - betas)
  abp = np.concatenate([[1.0], ab[:-1]])
  pv = betas * (1.0 - abp) / (1.0 - ab)  # Ho et al. eq. 7
  return dict(b=betas, ab=ab, abp=abp, pv=pv, logpv_c=np.log(np.concatenate([[pv[1]], pv[1:]])),
              c1=np.sqrt(abp) * betas / (1.0 - ab), c2=np.sqrt(1.0 - betas) * (1.0 - abp) / (1.0 - ab))


def bt(arr, t, ndim):
  return np.asarray(arr)[np.asarray(t)].reshape((-1,) + (1,) * (ndim - 1))


def ref_p_mean_var(mean_type, var_type, out, x_t, t, clip=False):
  tb = tables()
  c = x_t.shape[-1]
  nd = x_t.ndim
  learned = var_type in ("learned", "learned_range")
  mp, vp = (out[..., :c], out[..., c:]) if learned else (out, None)
  if var_type == "learned":
    logv = vp
  elif var_type == "learned_range":
    frac = (vp + 1) / 2
    logv = frac * bt(np.log(tb["b"]), t, nd) + (1 - frac) * bt(tb["logpv_c"], t, nd)
  elif var_type == "fixed_small":
    logv = bt(tb["logpv_c"], t, nd) + 0 * x_t
  else:
    logv = bt(np.log(np.concatenate([[tb["pv"][1]], tb["b"][1:]])), t, nd) + 0 * x_t
  ab = bt(tb["ab"], t, nd)
  if mean_type == "eps":
    x0p = (x_t - np.sqrt(1 - ab) * mp) / np.sqrt(ab)
  elif mean_type == "x0":
    x0p = mp
  else:
    x0p = (mp - bt(tb["c2"], t, nd) * x_t) / bt(tb["c1"], t, nd)
  if clip:
    x0p = np.clip(x0p, -1, 1)
  mean = mp if mean_type == "mean" else bt(tb["c1"], t, nd) * x0p + bt(tb["c2"], t, nd) * x_t
  return mean, logv, x0p


def ref_kl(m1, lv1, m2, lv2):
  return 0.5 * (lv2 - lv1 + (np.exp(lv1) + (m1 - m2) ** 2) / np.exp(lv2) - 1.0)


def ref_decoder_logp(x0, mean, logv, levels):
  """log P(x0) of the discretized Gaussian by SciPy CDF differences (None: Gaussian density)."""
  s = np.exp(0.5 * logv)
  if levels is None:
    return stats.norm.logpdf(x0, mean, s)
  h = 1.0 / (levels - 1)
  a, b = (x0 - h - mean) / s, (x0 + h - mean) / s
  p = np.where(a > 0, stats.norm.sf(a) - stats.norm.sf(b), stats.norm.cdf(b) - stats.norm.cdf(a))
  p = np.where(x0 < -1 + h / 2, stats.norm.cdf(b), p)
  p = np.where(x0 > 1 - h / 2, stats.norm.sf(a), p)
  return np.log(p)


def ref_vb_bpd(mean_type, var_type, out, x0, x_t, t, levels=K):
  tb = tables()
  nd = x0.ndim
  true_mean = bt(tb["c1"], t, nd) * x0 + bt(tb["c2"], t, nd) * x_t
  true_logv = bt(tb["logpv_c"], t, nd)
  mean, logv, _ = ref_p_mean_var(mean_type, var_type, out, x_t, t)
  kl = ref_kl(true_mean, true_logv, mean, logv).reshape(len(t), -1).mean(1) / LN2
  nll = -ref_decoder_logp(x0, mean, logv, levels).reshape(len(t), -1).mean(1) / LN2
  return np.where(np.asarray(t) == 0, nll, kl)


def rand_output(var_type, x_t, seed):
  rng = np.random.RandomState(seed)
  mp = 0.5 * rng.randn(*x_t.shape)
  if var_type == "learned":
    return np.concatenate([mp, rng.uniform(-5, -1, x_t.shape)], -1)
  if var_type == "learned_range":
    return np.concatenate([mp, rng.uniform(-1, 1, x_t.shape)], -1)
  return mp


# Models for the code paths that call model_fn (module level: one jit compilation each).
def model_fixed(params, x, t):
  return params["a"] * x + 0.1 * jnp.sin(t.astype(x.dtype) + 1.0).reshape((-1,) + (1,) * (x.ndim - 1))


def model_learned(params, x, t):
  mp = params["a"] * x + 0.1 * jnp.cos(t.astype(x.dtype)).reshape((-1,) + (1,) * (x.ndim - 1))
  vp = jnp.tanh(params["b"] * x + 0.05 * t.astype(x.dtype).reshape((-1,) + (1,) * (x.ndim - 1)))
  return jnp.concatenate([mp, vp], axis=-1)


PARAMS = {"a": 0.7, "b": 0.4}

# Shared instances: calc_bpd compiles once per (instance, model_fn, shapes).
CHUNKED = {c: make("x0", "learned_range", t_chunk_size=c) for c in (1, 4, None)}

# ------------------------------------------------------------------------------------------------
# Forward process
# ------------------------------------------------------------------------------------------------


def test_tables_float64_and_clipped_log_variance():
  g = make()
  tb = tables()
  for name in ("alphas_cumprod", "alphas_cumprod_prev", "posterior_variance",
               "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2"):
    assert getattr(g, name).dtype == np.float64 and getattr(g, name).shape == (T,)
  np.testing.assert_allclose(g.alphas_cumprod, tb["ab"], rtol=1e-14)
  np.testing.assert_allclose(g.posterior_variance, tb["pv"], rtol=1e-13)
  assert g.posterior_variance[0] == 0.0
  assert g.posterior_log_variance_clipped[0] == g.posterior_log_variance_clipped[1]
  np.testing.assert_allclose(g.posterior_log_variance_clipped[1:], np.log(tb["pv"][1:]), rtol=1e-13)


def test_q_sample_exact_and_moments():
  g = make()
  tb = tables()
  rng = np.random.RandomState(1)
  n = 40000
  x0 = np.full((n, 1), 0.6)
  noise = rng.randn(n, 1)
  t = np.full(n, 3, np.int32)
  with jax.enable_x64():
    xt = np.asarray(g.q_sample(x0, t, noise))
    mean, var, logvar = map(np.asarray, g.q_mean_variance(x0, t))
  np.testing.assert_allclose(xt, np.sqrt(tb["ab"][3]) * x0 + np.sqrt(1 - tb["ab"][3]) * noise,
                             rtol=1e-13)
  se = math.sqrt((1 - tb["ab"][3]) / n)
  assert abs(xt.mean() - math.sqrt(tb["ab"][3]) * 0.6) < 5 * se
  assert abs(xt.var() / (1 - tb["ab"][3]) - 1) < 5 * math.sqrt(2 / n)
  np.testing.assert_allclose(mean[:1], np.sqrt(tb["ab"][3]) * 0.6, rtol=1e-13)
  np.testing.assert_allclose(var[:1].ravel(), 1 - tb["ab"][3], rtol=1e-13)
  np.testing.assert_allclose(logvar[:1].ravel(), np.log(1 - tb["ab"][3]), rtol=1e-13)


@pytest.mark.parametrize("t", range(1, T))
def test_q_posterior_vs_bayes_rule_on_a_grid(t):
  """q(x_{t-1} | x_t, x0) proportional to q(x_t | x_{t-1}) q(x_{t-1} | x0), normalized on a grid.

  Code timestep t: x_t here has alpha_bar[t], x_{t-1} has alpha_bar[t-1], the step beta[t]."""
  g = make()
  ab_prev = np.cumprod(1 - BETAS)[t - 1]
  beta = BETAS[t]
  for x0, xt in [(0.3, -0.8), (-1.0, 1.7), (0.9, 0.2)]:
    m_prior, s_prior = math.sqrt(ab_prev) * x0, math.sqrt(1 - ab_prev)
    grid = np.linspace(m_prior - 14 * s_prior, m_prior + 14 * s_prior, 40001)
    dens = (stats.norm.pdf(xt, math.sqrt(1 - beta) * grid, math.sqrt(beta))
            * stats.norm.pdf(grid, m_prior, s_prior))
    z = integrate.trapezoid(dens, grid)
    mean = integrate.trapezoid(grid * dens, grid) / z
    var = integrate.trapezoid((grid - mean) ** 2 * dens, grid) / z
    with jax.enable_x64():
      m, v, lv = g.q_posterior_mean_variance(np.array([[x0]]), np.array([[xt]]), np.array([t]))
    assert abs(float(m[0, 0]) - mean) < 1e-9
    assert abs(float(v[0, 0]) - var) < 1e-9 * var
    assert abs(float(lv[0, 0]) - math.log(var)) < 1e-9


def test_q_posterior_at_t0_is_point_mass_with_clipped_log():
  g = make()
  x0, xt = data(1), data(2)
  with jax.enable_x64():
    m, v, lv = map(np.asarray, g.q_posterior_mean_variance(x0, xt, np.zeros(3, np.int32)))
  np.testing.assert_allclose(m, x0, atol=1e-15)
  assert np.all(v == 0)
  np.testing.assert_allclose(lv.ravel(), np.log(tables()["pv"][1]), rtol=1e-14)


# ------------------------------------------------------------------------------------------------
# Reverse process
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("var_type", VAR_TYPES)
@pytest.mark.parametrize("mean_type", MEAN_TYPES)
def test_mean_parameterization_recovers_true_posterior_mean(mean_type, var_type):
  g = make(mean_type, var_type)
  tb = tables()
  rng = np.random.RandomState(3)
  x0, eps = data(3), rng.randn(*SHAPE)
  t = np.array([0, 2, 5], np.int32)
  with jax.enable_x64():
    xt = np.asarray(g.q_sample(x0, t, eps))
    true_mean = bt(tb["c1"], t, 4) * x0 + bt(tb["c2"], t, 4) * xt
    target = {"eps": eps, "x0": x0, "mean": true_mean}[mean_type]
    out = rand_output(var_type, xt, 4)
    out[..., :SHAPE[-1]] = target
    res = g.p_mean_variance(out, xt, t)
  np.testing.assert_allclose(np.asarray(res["mean"]), true_mean, rtol=1e-9, atol=1e-12)
  np.testing.assert_allclose(np.asarray(res["pred_x0"]), x0, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("var_type", VAR_TYPES)
@pytest.mark.parametrize("mean_type", MEAN_TYPES)
@pytest.mark.parametrize("clip", [False, True])
def test_p_mean_variance_vs_reference(mean_type, var_type, clip):
  g = make(mean_type, var_type)
  xt = 1.5 * np.random.RandomState(5).randn(*SHAPE)
  t = np.array([0, 1, 5], np.int32)
  out = rand_output(var_type, xt, 6)
  out[..., :SHAPE[-1]] *= 4  # pred_x0 outside [-1, 1] somewhere, so clipping matters
  with jax.enable_x64():
    res = {k: np.asarray(v) for k, v in g.p_mean_variance(out, xt, t, clip_denoised=clip).items()}
  mean, logv, x0p = ref_p_mean_var(mean_type, var_type, out, xt, t, clip)
  np.testing.assert_allclose(res["mean"], mean, rtol=1e-10, atol=1e-12)
  np.testing.assert_allclose(np.broadcast_to(res["log_variance"], SHAPE), logv, rtol=1e-12)
  np.testing.assert_allclose(np.broadcast_to(res["variance"], SHAPE), np.exp(logv), rtol=1e-12)
  np.testing.assert_allclose(res["pred_x0"], x0p, rtol=1e-10, atol=1e-12)
  if clip:
    assert res["pred_x0"].max() <= 1 and res["pred_x0"].min() >= -1


def test_documented_variances():
  tb = tables()
  xt = np.zeros((T, 1))
  t = np.arange(T, dtype=np.int32)
  with jax.enable_x64():
    small = np.asarray(make("eps", "fixed_small").p_mean_variance(xt, xt, t)["variance"]).ravel()
    large = np.asarray(make("eps", "fixed_large").p_mean_variance(xt, xt, t)["variance"]).ravel()
    lo = np.asarray(make("eps", "learned_range").p_mean_variance(
        np.concatenate([xt, -np.ones_like(xt)], -1), xt, t)["variance"]).ravel()
    hi = np.asarray(make("eps", "learned_range").p_mean_variance(
        np.concatenate([xt, np.ones_like(xt)], -1), xt, t)["variance"]).ravel()
    lv = np.asarray(make("eps", "learned").p_mean_variance(
        np.concatenate([xt, np.full_like(xt, -2.5)], -1), xt, t)["log_variance"]).ravel()
  # fixed_small: beta~_t for t >= 1, beta~ at t = 1 for t = 0 (clipped).
  np.testing.assert_allclose(small[1:], tb["pv"][1:], rtol=1e-12)
  np.testing.assert_allclose(small[0], tb["pv"][1], rtol=1e-12)
  # fixed_large: beta_t for t >= 1, beta~ at t = 1 for t = 0.
  np.testing.assert_allclose(large[1:], BETAS[1:], rtol=1e-12)
  np.testing.assert_allclose(large[0], tb["pv"][1], rtol=1e-12)
  # learned_range: v = -1 gives fixed_small, v = +1 gives beta_t (fixed_large but at t = 0).
  np.testing.assert_allclose(lo, small, rtol=1e-12)
  np.testing.assert_allclose(hi, BETAS, rtol=1e-12)
  np.testing.assert_allclose(lv, -2.5, rtol=1e-15)


# ------------------------------------------------------------------------------------------------
# Bound terms
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mean_type,var_type", [("eps", "fixed_small"), ("eps", "fixed_large"),
                                                ("x0", "learned"), ("mean", "learned_range"),
                                                ("eps", "learned_range")])
@pytest.mark.parametrize("levels", [K, None])
def test_vb_terms_bpd_vs_reference(mean_type, var_type, levels):
  g = make(mean_type, var_type, num_levels=levels)
  rng = np.random.RandomState(7)
  x0 = data(7, (T, 2, 2, 2))
  t = np.arange(T, dtype=np.int32)
  with jax.enable_x64():
    xt = np.asarray(g.q_sample(x0, t, rng.randn(*x0.shape)))
    out = rand_output(var_type, xt, 8)
    got = np.asarray(g.vb_terms_bpd(out, x0, xt, t))
  ref = ref_vb_bpd(mean_type, var_type, out, x0, xt, t, levels)
  assert got.shape == (T,)
  np.testing.assert_allclose(got, ref, rtol=1e-9, atol=1e-12)
  assert np.all(got[1:] > 0)


def test_tanh_decoder_option_passes_through():
  x0 = data(9, (2, 2, 2, 2), 256)
  xt = x0 + 0.01
  t = np.zeros(2, np.int32)
  out = 0.02 * np.random.RandomState(9).randn(*x0.shape)
  with jax.enable_x64():
    exact = GaussianDiffusion(BETAS, "x0", "fixed_small", "kl", 256)
    approx = GaussianDiffusion(BETAS, "x0", "fixed_small", "kl", 256, decoder_approx="tanh")
    e = np.asarray(exact.vb_terms_bpd(out, x0, xt, t))
    a = np.asarray(approx.vb_terms_bpd(out, x0, xt, t))
  s = np.exp(0.5 * tables()["logpv_c"][0])
  cdf = lambda z: 0.5 * (1 + np.tanh(np.sqrt(2 / np.pi) * (z + 0.044715 * z ** 3)))
  h = 1 / 255
  lp = np.where(x0 < -0.999, np.log(np.maximum(cdf((x0 + h - out) / s), 1e-12)),
                np.where(x0 > 0.999, np.log(np.maximum(1 - cdf((x0 - h - out) / s), 1e-12)),
                         np.log(np.maximum(cdf((x0 + h - out) / s) - cdf((x0 - h - out) / s), 1e-12))))
  np.testing.assert_allclose(a, -lp.reshape(2, -1).mean(1) / LN2, rtol=1e-9)
  np.testing.assert_allclose(e, -ref_decoder_logp(x0, out, 2 * np.log(s), 256).reshape(2, -1).mean(1)
                             / LN2, rtol=1e-9)
  assert np.all(np.abs(a - e) > 1e-6)


def test_prior_bpd_vs_reference():
  g = make()
  x0 = data(10)
  ab = tables()["ab"][-1]
  ref = ref_kl(np.sqrt(ab) * x0, np.log(1 - ab), 0.0, 0.0).reshape(3, -1).mean(1) / LN2
  with jax.enable_x64():
    got = np.asarray(g.prior_bpd(x0))
  np.testing.assert_allclose(got, ref, rtol=1e-12)


def test_calc_bpd_columns_equal_per_timestep_terms():
  # (Each calc_bpd compilation takes seconds in 64-bit mode, mostly the float64 normal sampler;
  # the parameterizations themselves are covered by the vb_terms_bpd tests above.)
  mean_type, var_type, model = "x0", "learned_range", model_learned
  g = CHUNKED[4]
  x0 = data(11)
  key = jax.random.PRNGKey(3)
  with jax.enable_x64():
    res = {k: np.asarray(v) for k, v in g.calc_bpd(model, PARAMS, x0, key).items()}
    assert res["vb"].shape == (3, T) and res["mse"].shape == (3, T)
    assert res["xstart_mse"].shape == (3, T) and res["total_bpd"].shape == (3,)
    for t in range(T):
      tt = np.full(3, t, np.int32)
      noise = np.asarray(jax.random.normal(jax.random.fold_in(key, t), x0.shape, jnp.float64))
      xt = np.asarray(g.q_sample(x0, tt, noise))
      out = np.asarray(model(PARAMS, jnp.asarray(xt), jnp.asarray(tt)))
      np.testing.assert_allclose(res["vb"][:, t], np.asarray(g.vb_terms_bpd(out, x0, xt, tt)),
                                 rtol=1e-12)
      np.testing.assert_allclose(res["vb"][:, t], ref_vb_bpd(mean_type, var_type, out, x0, xt, tt),
                                 rtol=1e-9)
      _, _, x0p = ref_p_mean_var(mean_type, var_type, out, xt, tt)
      np.testing.assert_allclose(res["xstart_mse"][:, t], ((x0p - x0) ** 2).reshape(3, -1).mean(1),
                                 rtol=1e-10)
      ab = tables()["ab"][t]
      eps_hat = (xt - np.sqrt(ab) * x0p) / np.sqrt(1 - ab)
      np.testing.assert_allclose(res["mse"][:, t], ((eps_hat - noise) ** 2).reshape(3, -1).mean(1),
                                 rtol=1e-9)
    np.testing.assert_allclose(res["prior_bpd"], np.asarray(g.prior_bpd(x0)), rtol=1e-14)
  # total == prior + sum of the columns (to the last bit, up to summation order).
  np.testing.assert_allclose(res["total_bpd"], res["prior_bpd"] + res["vb"].sum(1), rtol=1e-14,
                             atol=0)


def test_calc_bpd_chunk_sizes_agree_and_jit():
  x0 = data(12)
  key = jax.random.PRNGKey(5)
  with jax.enable_x64():
    outs = []
    for chunk in (1, 4, None):
      g = CHUNKED[chunk]
      outs.append({k: np.asarray(v) for k, v in g.calc_bpd(model_learned, PARAMS, x0, key).items()})
    traced = jax.jit(lambda x: g.calc_bpd(model_learned, PARAMS, x, key))(x0)
  for o in outs[1:]:
    for k in o:
      np.testing.assert_allclose(o[k], outs[0][k], rtol=1e-13, atol=1e-15)
  for k in traced:
    np.testing.assert_allclose(np.asarray(traced[k]), outs[-1][k], rtol=1e-13, atol=1e-15)
  # A different key gives a different estimate.
  with jax.enable_x64():
    other = np.asarray(g.calc_bpd(model_learned, PARAMS, x0, jax.random.PRNGKey(6))["total_bpd"])
  assert np.all(other != outs[-1]["total_bpd"])


def test_rate_distortion_vs_loop():
  rng = np.random.RandomState(13)
  B = 4
  d = {"prior_bpd": rng.rand(B), "vb": rng.rand(B, T), "xstart_mse": rng.rand(B, T) * 0.1}
  rd = rate_distortion(d, num_levels=256)
  for s in range(1, T + 1):  # reverse step s holds the latent of code timestep T - s
    t = T - s
    rate = np.mean([d["prior_bpd"][b] + sum(d["vb"][b, k] for k in range(t + 1, T))
                    for b in range(B)])
    dist = math.sqrt(np.mean(d["xstart_mse"][:, t])) * 127.5
    assert rd["reverse_step"][s - 1] == s and rd["t"][s - 1] == t
    assert abs(rd["rate"][s - 1] - rate) < 1e-12
    assert abs(rd["distortion"][s - 1] - dist) < 1e-10
  # The last point plus the decoder term is the total.
  np.testing.assert_allclose(rd["rate"][-1] + d["vb"][:, 0].mean(),
                             np.mean(d["prior_bpd"] + d["vb"].sum(1)), rtol=1e-13)


# ------------------------------------------------------------------------------------------------
# Training losses
# ------------------------------------------------------------------------------------------------


def _recording(model):
  seen = []

  def fn(params, x, t):
    seen.append(np.asarray(x))
    return model(params, x, t)

  return fn, seen


@pytest.mark.parametrize("loss_type", ["kl", "mse", "hybrid"])
@pytest.mark.parametrize("mean_type,var_type", [("eps", "fixed_small"), ("x0", "learned"),
                                                ("mean", "learned_range"), ("eps", "learned_range")])
def test_training_losses_vs_reference(loss_type, mean_type, var_type):
  g = make(mean_type, var_type, loss_type, hybrid_lambda=0.01)
  learned = var_type != "fixed_small"
  model = model_learned if learned else model_fixed
  x0 = data(14)
  t = np.array([0, 3, 5], np.int32)
  w = np.array([0.5, 1.0, 2.0])
  fn, seen = _recording(model)
  with jax.enable_x64():
    res = {k: np.asarray(v) for k, v in
           g.training_losses(fn, PARAMS, x0, jax.random.PRNGKey(2), t=t, weights=w).items()}
    out = np.asarray(model(PARAMS, jnp.asarray(seen[0]), jnp.asarray(t)))
  xt = seen[0]
  tb = tables()
  ab = bt(tb["ab"], t, 4)
  noise = (xt - np.sqrt(ab) * x0) / np.sqrt(1 - ab)  # the noise the loss drew
  true_mean = bt(tb["c1"], t, 4) * x0 + bt(tb["c2"], t, 4) * xt
  target = {"eps": noise, "x0": x0, "mean": true_mean}[mean_type]
  mse = ((out[..., :2] - target) ** 2).reshape(3, -1).mean(1)
  vb = ref_vb_bpd(mean_type, var_type, out, x0, xt, t)
  if loss_type == "kl":
    loss = w * T * vb
  elif loss_type == "hybrid":
    loss = w * (mse + 0.01 * T * vb)
  else:
    loss = w * (mse + vb) if learned else w * mse
  np.testing.assert_allclose(res["mse"], mse, rtol=1e-10)
  np.testing.assert_allclose(res["vb"], vb, rtol=1e-9)
  np.testing.assert_allclose(res["loss"], loss, rtol=1e-9)
  np.testing.assert_array_equal(res["t"], t)


def test_hybrid_stop_gradient_on_the_mean():
  g = make("eps", "learned_range", "hybrid", hybrid_lambda=0.01)
  x0 = data(15)
  t = np.array([1, 2, 4], np.int32)
  key = jax.random.PRNGKey(8)
  with jax.enable_x64():
    params = {"a": jnp.float64(0.7), "b": jnp.float64(0.4)}
    fn, seen = _recording(model_learned)
    g.training_losses(fn, params, x0, key, t=t)
    xt = seen[0]
    grads = jax.jit(jax.grad(
        lambda p: jnp.sum(g.training_losses(model_learned, p, x0, key, t=t)["loss"])))(params)
  tb = tables()
  ab = bt(tb["ab"], t, 4)
  noise = (xt - np.sqrt(ab) * x0) / np.sqrt(1 - ab)
  tt = t.astype(np.float64).reshape(-1, 1, 1, 1)
  # d/da of sum_b mean((noise - (a x_t + 0.1 cos t))^2): the vb part contributes nothing.
  resid = noise - (0.7 * xt + 0.1 * np.cos(tt))
  da = np.sum((-2 * xt * resid).reshape(3, -1).mean(1))
  np.testing.assert_allclose(float(grads["a"]), da, rtol=1e-9)

  # d/db: only the vb part, by central differences of the NumPy reference.
  def vb_of_b(b):
    out = np.concatenate([0.7 * xt + 0.1 * np.cos(tt), np.tanh(b * xt + 0.05 * tt)], -1)
    return np.sum(0.01 * T * ref_vb_bpd("eps", "learned_range", out, x0, xt, t))

  db = (vb_of_b(0.4 + 1e-6) - vb_of_b(0.4 - 1e-6)) / 2e-6
  np.testing.assert_allclose(float(grads["b"]), db, rtol=1e-6)
  assert abs(db) > 1e-4


def test_training_losses_uniform_t_and_jit():
  g = make("eps", "fixed_small", "kl")
  x0 = jnp.asarray(data(16, (64, 2, 2, 2)), jnp.float32)
  f = jax.jit(lambda k: g.training_losses(model_fixed, PARAMS, x0, k))
  r1, r2 = f(jax.random.PRNGKey(0)), f(jax.random.PRNGKey(1))
  t1 = np.asarray(r1["t"])
  assert t1.dtype == np.int32 and t1.min() >= 0 and t1.max() < T and len(set(t1)) > 1
  assert np.any(t1 != np.asarray(r2["t"]))
  np.testing.assert_allclose(np.asarray(r1["loss"]), T * np.asarray(r1["vb"]), rtol=1e-6)
  assert np.all(np.asarray(r1["weights"]) == 1)


# ------------------------------------------------------------------------------------------------
# Sampling
# ------------------------------------------------------------------------------------------------


def test_p_sample_loop_shape_and_determinism():
  g = make("eps", "learned_range")
  s1 = g.p_sample_loop(model_learned, PARAMS, (2, 2, 2, 2), jax.random.PRNGKey(0))
  s2 = g.p_sample_loop(model_learned, PARAMS, (2, 2, 2, 2), jax.random.PRNGKey(0))
  s3 = g.p_sample_loop(model_learned, PARAMS, (2, 2, 2, 2), jax.random.PRNGKey(1))
  assert s1.shape == (2, 2, 2, 2) and s1.dtype == jnp.float32
  np.testing.assert_array_equal(np.asarray(s1), np.asarray(s2))
  assert np.all(np.asarray(s1) != np.asarray(s3))
  assert np.asarray(s1).max() <= 1 and np.asarray(s1).min() >= -1  # clipped x0 model mean at t=0


def test_p_sample_loop_perfect_model_on_point_mass():
  """Data = a point mass at x*; the x0-model predicts x*. Each step is then the exact posterior
  x_{t-1} = c1_t x* + c2_t x_t + sqrt(beta~_t) z (no noise at t = 0), a linear Gaussian chain
  whose marginal moments follow m <- c1 x* + c2 m, v <- c2^2 v + beta~_t from m = 0, v = 1;
  the samples land at x* exactly."""
  g = make("x0", "fixed_small")
  n = 4000
  x_star = jnp.asarray([-0.75, 0.25, 1.0], jnp.float32)
  model = lambda p, x, t: jnp.broadcast_to(x_star, x.shape)
  samples, traj = g.p_sample_loop(model, None, (n, 3), jax.random.PRNGKey(4),
                                  return_trajectory=True)
  np.testing.assert_allclose(np.asarray(samples), np.broadcast_to(x_star, (n, 3)), atol=1e-6)
  xs = np.asarray(traj["x"], np.float64)  # [T + 1, n, 3]: x_T, then after steps t = T-1 .. 0
  assert xs.shape == (T + 1, n, 3) and traj["pred_x0"].shape == (T, n, 3)
  np.testing.assert_array_equal(np.asarray(traj["x"][-1]), np.asarray(samples))
  tb = tables()
  m, v = np.zeros(3), 1.0
  for j in range(T):
    if j > 0:
      t = T - j  # xs[j] is the output of the step at code timestep t
      m = tb["c1"][t] * np.asarray(x_star, np.float64) + tb["c2"][t] * m
      v = tb["c2"][t] ** 2 * v + tb["pv"][t]
    assert np.all(np.abs(xs[j].mean(0) - m) < 5 * math.sqrt(v / n)), (j, xs[j].mean(0), m)
    assert np.all(np.abs(xs[j].var(0) / v - 1) < 5 * math.sqrt(2 / n)), (j, xs[j].var(0), v)


# ------------------------------------------------------------------------------------------------
# Bad input
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("field,kw", [("mean_type", dict(mean_type="v")),
                                      ("var_type", dict(var_type="fixed")),
                                      ("loss_type", dict(loss_type="l1"))])
def test_unknown_type_names_list_allowed(field, kw):
  args = dict(mean_type="eps", var_type="fixed_small", loss_type="kl")
  args.update(kw)
  with pytest.raises(ValueError) as e:
    GaussianDiffusion(BETAS, **args)
  msg = str(e.value)
  assert field in msg
  allowed = {"mean_type": MEAN_TYPES, "var_type": VAR_TYPES, "loss_type": ("kl", "mse", "hybrid")}
  for name in allowed[field]:
    assert name in msg


def test_bad_constructor_args():
  with pytest.raises(ValueError, match="betas"):
    GaussianDiffusion(np.array([0.1, 0.0]), "eps", "fixed_small", "kl")
  with pytest.raises(ValueError, match="num_levels"):
    GaussianDiffusion(BETAS, "eps", "fixed_small", "kl", num_levels=1)
  with pytest.raises(ValueError, match="decoder_approx"):
    GaussianDiffusion(BETAS, "eps", "fixed_small", "kl", decoder_approx="erf")
  with pytest.raises(ValueError, match="t_chunk_size"):
    GaussianDiffusion(BETAS, "eps", "fixed_small", "kl", t_chunk_size=0)


def test_bad_inputs_are_clear_errors():
  g = make("eps", "learned")
  x0 = data(17)
  xt = x0 * 0.5
  good_out = np.zeros(SHAPE[:-1] + (4,))
  with pytest.raises(ValueError, match=r"t must lie in \[0, 5\]"):
    g.q_sample(x0, np.array([0, 1, 6]), x0)
  with pytest.raises(ValueError, match=r"t must lie"):
    g.vb_terms_bpd(good_out, x0, xt, np.array([-1, 1, 2]))
  with pytest.raises(ValueError, match=r"t must have shape"):
    g.vb_terms_bpd(good_out, x0, xt, np.array([1, 2]))
  with pytest.raises(ValueError, match=r"t must be an integer"):
    g.q_sample(x0, np.array([0.0, 1.0, 2.0]), x0)
  with pytest.raises(ValueError, match=r"model_output .*4 channels"):
    g.p_mean_variance(np.zeros(SHAPE), xt, np.array([0, 1, 2]))
  with pytest.raises(ValueError, match=r"x0 must lie in \[-1, 1\]"):
    g.vb_terms_bpd(good_out, x0 * 1.5, xt, np.array([0, 1, 2]))
  with pytest.raises(ValueError, match=r"x0 must lie in \[-1, 1\]"):
    g.calc_bpd(model_learned, PARAMS, x0 + 0.1, jax.random.PRNGKey(0))
  with pytest.raises(ValueError, match=r"x0 must lie in \[-1, 1\]"):
    g.training_losses(model_learned, PARAMS, x0 - 0.1, jax.random.PRNGKey(0))
  with pytest.raises(ValueError, match=r"model_output"):
    g.calc_bpd(model_fixed, PARAMS, x0, jax.random.PRNGKey(0))
  with pytest.raises(ValueError, match=r"weights must have shape"):
    g.training_losses(model_learned, PARAMS, x0, jax.random.PRNGKey(0), weights=np.ones(2))
  with pytest.raises(ValueError, match=r"noise"):
    g.q_sample(x0, np.array([0, 1, 2]), x0[:2])
  # Tiny rounding outside [-1, 1] is tolerated; the continuous decoder takes any real data.
  g.prior_bpd(x0 * (1 + 1e-7))
  gc = make("eps", "fixed_small", num_levels=None)
  assert np.all(np.isfinite(np.asarray(gc.prior_bpd(3.0 * x0))))


def test_linear_schedule_t1000_bound_is_sane():
  """With the DDPM schedule at T = 1000, L_T is tiny and every KL term is >= 0 (a smoke check
  of calc_bpd at full size with a trivial model in float32)."""
  g = GaussianDiffusion(get_beta_schedule("linear", 1000), "eps", "fixed_large", "kl",
                        t_chunk_size=250)
  x0 = jnp.asarray(data(18, (2, 2, 2, 1), 256), jnp.float32)
  res = g.calc_bpd(lambda p, x, t: jnp.zeros_like(x), None, x0, jax.random.PRNGKey(0))
  vb = np.asarray(res["vb"])
  assert vb.shape == (2, 1000) and np.all(np.isfinite(vb)) and np.all(vb[:, 1:] >= -1e-6)
  assert np.all(np.asarray(res["prior_bpd"]) < 1e-4)


def test_vector_data_with_continuous_decoder():
  """[B, D] data (2-D toys, the Gaussian oracle) with num_levels=None: data outside [-1, 1] is
  fine and every column of calc_bpd is the per-timestep term, t = 0 a Gaussian density."""
  g = make("eps", "fixed_small", num_levels=None, t_chunk_size=4)
  x0 = 3.0 * np.random.RandomState(19).randn(5, 2)
  key = jax.random.PRNGKey(7)
  model = lambda p, x, t: 0.3 * x
  with jax.enable_x64():
    res = {k: np.asarray(v) for k, v in g.calc_bpd(model, None, x0, key).items()}
    for t in (0, 1, T - 1):
      tt = np.full(5, t, np.int32)
      noise = np.asarray(jax.random.normal(jax.random.fold_in(key, t), x0.shape, jnp.float64))
      xt = np.asarray(g.q_sample(x0, tt, noise))
      ref = ref_vb_bpd("eps", "fixed_small", 0.3 * xt, x0, xt, tt, levels=None)
      np.testing.assert_allclose(res["vb"][:, t], ref, rtol=1e-9)
  assert res["vb"].shape == (5, T)
  np.testing.assert_allclose(res["total_bpd"], res["prior_bpd"] + res["vb"].sum(1), rtol=1e-14)


def test_equal_configurations_compare_equal():
  a, b = make("eps", "learned", t_chunk_size=3), make("eps", "learned", t_chunk_size=3)
  assert a == b and hash(a) == hash(b)
  assert a != make("eps", "learned", t_chunk_size=2)
  assert a != GaussianDiffusion(BETAS * 0.5, "eps", "learned", "kl", num_levels=K, t_chunk_size=3)
