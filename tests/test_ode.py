"""vdm.diffusion.ode: the probability-flow ODE likelihood against exact Gaussian oracles.

Gaussian data N(mu, diag s^2) diffused by q(x_t | x_0) = N(alpha x_0, sigma^2 I) has Gaussian
marginals N(alpha mu, alpha^2 s^2 + sigma^2) at every t, and with the Bayes-optimal denoiser the
ODE transports the marginal at t0 exactly onto the marginal at 1. So with the exact prior
mismatch at t = 1 corrected (or the exact marginal passed as the prior), the ODE's
log-likelihood must equal the exact log-density of the t0 marginal to solver tolerance. A flow
integrated in the wrong direction, a missing 1/2 in the drift or the network's timestep off by
one all move the result by far more than the tolerance (checked by mutation while writing).
The oracles below are written from the closed form, independently of vdm.diffusion.ode: the
DDPM one maps the network's real timestep s back to alpha^2 by jnp.interp over the knots
t_k = (k + 1) / T of alphas_cumprod (the documented time mapping).
"""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import io_callback
from scipy.interpolate import CubicSpline

from vdm.diffusion import ode, oracles
from vdm.diffusion.ddpm import GaussianDiffusion
from vdm.diffusion.schedules import FixedLinearGamma, LearnedLinearGamma, get_beta_schedule
from vdm.models.unet import UNet

MU = np.array([0.3, -0.2])
S = np.array([0.5, 0.2])


def _log_normal(x, mean, var):
  return jnp.sum(-0.5 * jnp.log(2 * jnp.pi * var) - 0.5 * (x - mean) ** 2 / var, axis=-1)


def _x0_hat(params, z, a, sig2):
  s2 = params["s"] ** 2
  return params["mu"] + a * s2 / (a**2 * s2 + sig2) * (z - a * params["mu"])


def _ddpm_eps_oracle(betas, mean_type="eps", extra_channels=False):
  """model_fn(params, x, s) with s = T t - 1 real: E[eps | x_t] (or E[x0 | x_t]) at the
  alpha^2 that the documented mapping gives for s: scipy's not-a-knot cubic spline of
  log alphas_cumprod over the knots t_k = (k + 1) / T (and 0 at t = 0), its pieces looked up
  with searchsorted; params = {'mu', 's'}."""
  T = len(betas)
  knots = np.arange(T + 1) / T
  spline = CubicSpline(knots, np.concatenate([[0.0], np.cumsum(np.log1p(-np.asarray(betas)))]))

  def model_fn(params, x, s):
    t = (s + 1.0) / T
    c = jnp.asarray(spline.c, x.dtype)                  # [4, T], highest power first
    k = jnp.clip(jnp.searchsorted(jnp.asarray(knots, x.dtype), t, side="right") - 1, 0, T - 1)
    u = t - jnp.asarray(knots, x.dtype)[k]
    ab = jnp.exp(((c[0, k] * u + c[1, k]) * u + c[2, k]) * u + c[3, k])
    a, sig2 = jnp.sqrt(ab)[:, None], (1.0 - ab)[:, None]
    x0 = _x0_hat(params, x, a, sig2)
    out = x0 if mean_type == "x0" else (x - a * x0) / jnp.sqrt(sig2)
    return jnp.concatenate([out, jnp.zeros_like(out) + 7.0], -1) if extra_channels else out

  return model_fn


def _vdm_eps_oracle(params, z, g):
  a, sig = jnp.sqrt(jax.nn.sigmoid(-g))[:, None], jnp.sqrt(jax.nn.sigmoid(g))[:, None]
  return (z - a * _x0_hat(params, z, a, sig**2)) / sig


def _marginal_log_prob(process, x, t, mu, s):
  a, sig = ode.marginal(process, t, jnp.float64)
  return _log_normal(jnp.asarray(x), a * mu, a**2 * s**2 + sig**2)


def _data(n=5, seed=0, mu=MU, s=S):
  return jnp.asarray(np.random.default_rng(seed).normal(mu, s, (n, mu.size)))


# ------------------------------------------------------------------------------ (a) oracles

def test_ddpm_time_mapping_at_the_knots():
  with jax.enable_x64():
    betas = get_beta_schedule("linear", 1000)
    ab = np.cumprod(1.0 - betas)
    for interpolation in ode.DDPM_INTERPOLATIONS:
      proc = ode.DDPMProcess(betas, interpolation=interpolation)
      for k in (0, 1, 499, 998, 999):
        a, sig = ode.marginal(proc, (k + 1) / 1000)
        np.testing.assert_allclose([a**2, sig**2], [ab[k], 1 - ab[k]], rtol=1e-11)
        co = proc.coefficients(jnp.float64((k + 0.5) / 1000), jnp.float64)
        assert abs(float(co.model_time) - (k - 0.5)) < 1e-9
        # beta(t) = -d log alpha^2/dt ~ T betas (score_sde's continuous beta), f = -beta/2.
        assert abs(-2 * float(co.f) / (1000 * betas[k]) - 1) < 0.02
        h = 1e-7
        fd = (math.log(ode.marginal(proc, (k + 0.5) / 1000 + h)[0] ** 2)
              - math.log(ode.marginal(proc, (k + 0.5) / 1000 - h)[0] ** 2)) / (2 * h)
        assert abs(fd - 2 * float(co.f)) < 1e-5 * abs(fd)
        # c = g^2 / (2 sigma) with g^2 = beta.
        assert abs(float(co.c) * 2 * float(co.sigma) + 2 * float(co.f)) < 1e-12
      assert float(ode.marginal(proc, 1e-12)[0]) == pytest.approx(1.0)
    assert ode.DDPMProcess(betas).interpolation_used == "cubic"
    # At T = 100 the linear schedule's cubic spline overshoots to beta < 0 near t = 0:
    # refused, and 'auto' takes the monotone PCHIP cubic.
    with pytest.raises(ValueError, match="not decreasing"):
      ode.DDPMProcess(get_beta_schedule("linear", 100), interpolation="cubic")
    assert ode.DDPMProcess(get_beta_schedule("linear", 100)).interpolation_used == "pchip"
    lin = ode.DDPMProcess(betas, interpolation="linear").coefficients(jnp.float64(0.1005),
                                                                     jnp.float64)
    assert float(lin.f) == pytest.approx(0.5 * 1000 * math.log1p(-betas[100]), rel=1e-12)
    # At integer timesteps the continuous oracle is the discrete one of vdm.diffusion.oracles.
    proc = ode.DDPMProcess(betas)
    params = {"mu": jnp.asarray(MU), "s": jnp.asarray(S)}
    x, k = _data(4), jnp.array([0, 3, 500, 999])
    np.testing.assert_allclose(
        _ddpm_eps_oracle(betas)(params, x, k.astype(jnp.float64)),
        oracles.ddpm_optimal_model_fn(ab, MU, S)(None, x, k), rtol=1e-9, atol=1e-12)
    # eps and x0 (2C channels, learned variance) adapters give the same drift.
    proc_x0 = ode.DDPMProcess.from_diffusion(
        GaussianDiffusion(betas, "x0", "learned_range", "kl"))
    v1, d1 = ode.drift_and_divergence(_ddpm_eps_oracle(betas), params, x, 0.3, proc,
                                      divergence="exact")
    v2, d2 = ode.drift_and_divergence(_ddpm_eps_oracle(betas, "x0", True), params, x, 0.3,
                                      proc_x0, divergence="exact")
    np.testing.assert_allclose(v1, v2, rtol=1e-10)
    np.testing.assert_allclose(d1, d2, rtol=1e-10)


def test_ddpm_ode_likelihood_equals_exact_gaussian():
  """Per-example adaptive Tsit5, T = 1000 cosine schedule, N(0, I) prior corrected exactly."""
  with jax.enable_x64():
    betas = get_beta_schedule("cosine", 1000)
    proc = ode.DDPMProcess(betas)
    params = {"mu": jnp.asarray(MU), "s": jnp.asarray(S)}
    x = _data(5)
    t0 = 1e-4
    out = ode.log_likelihood(_ddpm_eps_oracle(betas), params, x, None, proc,
                             divergence="exact", rtol=1e-9, atol=1e-9, t0=t0)
    corr = (_marginal_log_prob(proc, out["x1"], 1.0, MU, S)
            - _log_normal(out["x1"], 0.0, 1.0))
    np.testing.assert_allclose(out["prior_log_prob"], _log_normal(out["x1"], 0.0, 1.0),
                               rtol=1e-12)
    exact = _marginal_log_prob(proc, x, t0, MU, S)
    np.testing.assert_allclose(out["log_likelihood"] + corr, exact, atol=2e-6)
    # t0 small: the t0 marginal is the data density to ~sigma(t0)^2 / s^2.
    np.testing.assert_allclose(exact, -oracles.gaussian_nll(x, MU, S), atol=2e-3)
    np.testing.assert_allclose(out["bpd"], -out["log_likelihood"] / (2 * math.log(2)))
    assert out["nfe"].dtype == jnp.int32 and np.all(out["nfe"] > 0)
    assert bool(out["success"].all())


def test_vdm_ode_likelihood_exact_prior_and_traced_params_do_not_recompile():
  """Batch-coupled Dopri5, a learned gamma schedule, the N(0, I) prior corrected exactly at
  t = 1. A second call with new model params and new gamma_params runs the same program and is
  exact for the new values."""
  with jax.enable_x64():
    sched = LearnedLinearGamma(gamma_min=-10.0, gamma_max=6.0, param_dtype=jnp.float64)
    gamma_fn = sched.apply
    x = _data(4, seed=1)

    def run(mu, s, gamma_params):
      proc = ode.VDMProcess(gamma_fn, gamma_params)
      params = {"mu": jnp.asarray(mu), "s": jnp.asarray(s)}
      out = ode.log_likelihood(lambda p, z, g: _vdm_eps_oracle(p, z, g), params, x, None,
                               proc, divergence="exact", solver="dopri5", rtol=1e-9,
                               atol=1e-9, per_example=False, t0=1e-3)
      corr = (_marginal_log_prob(proc, out["x1"], 1.0, mu, s)
              - _log_normal(out["x1"], 0.0, 1.0))
      np.testing.assert_allclose(out["log_likelihood"] + corr,
                                 _marginal_log_prob(proc, x, 1e-3, mu, s), atol=2e-6)
      assert len(set(np.asarray(out["nfe"]).tolist())) == 1  # one solve for the batch
      return out

    gp1 = sched.init(jax.random.PRNGKey(0), jnp.zeros(()))
    run(MU, S, gp1)
    size = ode._log_likelihood_jit._cache_size()
    gp2 = jax.tree_util.tree_map(lambda v: v * 0.8, gp1)
    run(MU + 0.1, S * 1.5, gp2)
    assert ode._log_likelihood_jit._cache_size() == size


class _Prior:
  """The exact t = 1 marginal of Gaussian data as a prior (a fixed, hashable callable: the
  prior is a static argument, so its values are compared, not traced)."""

  def __init__(self, gamma_fn, gamma_params, mu, s):
    g1 = float(gamma_fn(gamma_params, jnp.float64(1.0)))
    self.key = (g1, tuple(np.asarray(mu).tolist()), tuple(np.asarray(s).tolist()))

  def __call__(self, x1):
    g1, mu, s = self.key
    a2, sig2 = 1.0 / (1.0 + math.exp(g1)), 1.0 / (1.0 + math.exp(-g1))
    return _log_normal(x1, math.sqrt(a2) * np.asarray(mu), a2 * np.asarray(s) ** 2 + sig2)

  def __hash__(self):
    return hash(self.key)

  def __eq__(self, other):
    return isinstance(other, _Prior) and self.key == other.key


def test_exact_divergence_of_a_unet_is_the_jacobian_trace():
  """The repository's U-Net (its GroupNorm has a custom VJP and no JVP rule) through the DDPM
  adapter: the exact divergence equals the trace of jax.jacrev of the drift."""
  net = UNet(ch=4, ch_mult=(1,), num_res_blocks=0, attn_resolutions=(), dropout=0.0,
             num_groups=2)
  x = jax.random.uniform(jax.random.PRNGKey(0), (2, 4, 4, 1), minval=-1.0, maxval=1.0)
  # Random parameters of the right shapes (eval_shape: no compilation of net.init).
  shapes = jax.eval_shape(net.init, jax.random.PRNGKey(1), x[:1], jnp.zeros((1,)))["params"]
  rng = np.random.default_rng(1)
  params = jax.tree_util.tree_map(
      lambda a: jnp.asarray(0.5 * rng.standard_normal(a.shape), a.dtype), shapes)
  fn = lambda p, z, s: net.apply({"params": p}, z, s)
  proc = ode.DDPMProcess(get_beta_schedule("linear", 100))
  v, div = ode.drift_and_divergence(fn, params, x, 0.37, proc, divergence="exact")
  co = proc.coefficients(jnp.float32(0.37), jnp.float32)

  @jax.jit
  def reference(z):                     # one example z [16] -> (drift [16], trace)
    drift = lambda u: (co.f * u.reshape(1, 4, 4, 1) + co.c * fn(
        params, u.reshape(1, 4, 4, 1), co.model_time[None])).ravel()
    return drift(z), jnp.trace(jax.jacrev(drift)(z))

  ref_v, ref_div = jax.vmap(reference)(x.reshape(2, -1))
  np.testing.assert_allclose(v.reshape(2, -1), ref_v, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(div, ref_div, rtol=1e-4)


# --------------------------------------------------------------------- (b) Hutchinson, (c)

def _mlp(dim=3):
  """A small nonlinear denoiser with a dense Jacobian, smooth in gamma (a randomly initialized
  network's sinusoidal time embedding oscillates ~100 times over t in [0, 1], which makes an
  adaptive solve take thousands of steps; a trained one is smooth)."""
  k1, k2, k3 = jax.random.split(jax.random.PRNGKey(0), 3)
  params = {"w": jax.random.normal(k1, (dim, dim)), "b": jax.random.normal(k2, (dim,)),
            "v": jax.random.normal(k3, (dim,))}

  def fn(p, z, g):
    h = jnp.tanh(z @ p["w"] + p["b"] + 0.1 * g[:, None] * p["v"])
    return h + 0.5 * z * jax.nn.sigmoid(g / 4.0)[:, None]

  return fn, params


@pytest.mark.parametrize("probe", ["rademacher", "gaussian"])
def test_hutchinson_divergence_is_unbiased(probe):
  fn, params = _mlp()
  proc = ode.VDMProcess(FixedLinearGamma().apply)
  x = jax.random.normal(jax.random.PRNGKey(1), (2, 3))
  _, exact = ode.drift_and_divergence(fn, params, x, 0.4, proc, divergence="exact")
  keys = jax.random.split(jax.random.PRNGKey(2), 2000)
  est = jax.vmap(lambda k: ode.drift_and_divergence(fn, params, x, 0.4, proc, k, probe=probe,
                                                    num_probes=1)[1])(keys)   # [N, B]
  mean, se = est.mean(0), est.std(0) / math.sqrt(est.shape[0])
  assert np.all(np.asarray(se) > 0)
  assert np.all(np.abs(mean - exact) < 4 * se), (mean, exact, se)
  # Several probes average: the mean of num_probes=4 estimates has a quarter of the variance.
  est4 = jax.vmap(lambda k: ode.drift_and_divergence(fn, params, x, 0.4, proc, k, probe=probe,
                                                     num_probes=4)[1])(keys[:500])
  assert np.all(est4.var(0) < 0.5 * est.var(0))


def test_fixed_step_and_adaptive_agree_and_hutchinson_solve_is_unbiased():
  """With fixed steps the trajectory is the same for every probe and delta is linear in
  eps eps^T, so the mean of Hutchinson solves is the exact-divergence solve's delta."""
  fn, params = _mlp()
  proc = ode.VDMProcess(FixedLinearGamma().apply)
  x = jax.random.normal(jax.random.PRNGKey(3), (3, 3))
  common = dict(t0=1e-3, solver="tsit5")
  adaptive = ode.log_likelihood(fn, params, x, None, proc, divergence="exact", rtol=1e-6,
                                atol=1e-6, **common)
  fixed = ode.log_likelihood(fn, params, x, None, proc, divergence="exact", num_steps=60,
                             per_example=False, **common)
  np.testing.assert_allclose(fixed["log_likelihood"], adaptive["log_likelihood"], atol=2e-4)
  np.testing.assert_allclose(fixed["x1"], adaptive["x1"], atol=2e-5)
  assert np.all(fixed["nfe"] == 6 * 60 + 1) and np.all(fixed["num_steps"] == 60)
  assert np.all(adaptive["nfe"] > 0) and np.all(adaptive["nfe"] == 6 * adaptive["num_steps"] + 1)
  keys = jax.random.split(jax.random.PRNGKey(4), 300)
  deltas = jax.vmap(lambda k: ode.log_likelihood(
      fn, params, x, k, proc, divergence="hutchinson", probe="gaussian", num_probes=2,
      num_steps=60, per_example=False, **common)["delta_log_prob"])(keys)
  mean, se = deltas.mean(0), deltas.std(0) / math.sqrt(keys.shape[0])
  assert np.all(np.abs(mean - fixed["delta_log_prob"]) < 4 * se), (mean, fixed, se)


@pytest.mark.parametrize("solver,num_steps", [("dopri5", None), ("tsit5", None),
                                              ("heun", None), ("euler", 7)])
def test_nfe_counts_every_drift_evaluation(solver, num_steps):
  count = []

  def counted(params, z, g):
    tick = io_callback(lambda v: (count.append(1), np.zeros((), np.float32))[1],
                       jax.ShapeDtypeStruct((), jnp.float32), g[0], ordered=True)
    return params * z + tick

  proc = ode.VDMProcess(FixedLinearGamma().apply)
  x = jnp.ones((1, 2), jnp.float32)
  out = ode.log_likelihood(counted, jnp.float32(0.3), x, None, proc, divergence="exact",
                           per_example=False, rtol=1e-3, atol=1e-3, solver=solver,
                           num_steps=num_steps)
  assert int(out["nfe"][0]) == len(count) > 0
  if num_steps:
    assert int(out["num_steps"][0]) == num_steps


# ----------------------------------------------------------------------------- (e) inputs

def test_bad_inputs_name_the_argument():
  fn, params = _mlp()
  proc = ode.VDMProcess(FixedLinearGamma().apply)
  x, key = jnp.zeros((2, 3)), jax.random.PRNGKey(0)
  call = lambda **kw: ode.log_likelihood(fn, params, kw.pop("x", x), kw.pop("key", key),
                                         kw.pop("process", proc), **kw)
  for kw, word in [(dict(rtol=0.0), "rtol"), (dict(atol=-1e-3), "atol"),
                   (dict(rtol=float("nan")), "rtol"),
                   (dict(divergence="trace"), "divergence"), (dict(probe="sphere"), "probe"),
                   (dict(solver="rk45"), "solver"), (dict(num_probes=0), "num_probes"),
                   (dict(num_probes=2.0), "num_probes"), (dict(t0=0.0), "t0"),
                   (dict(t0=1.0), "t0"), (dict(t0=-0.1), "t0"), (dict(num_steps=0), "num_steps"),
                   (dict(solver="euler"), "num_steps"), (dict(key=None), "key"),
                   (dict(x=jnp.zeros(3)), "x"), (dict(x=jnp.zeros((2, 3), jnp.int32)), "x"),
                   (dict(x=jnp.full((2, 3), jnp.nan)), "x"), (dict(process="vdm"), "process"),
                   (dict(max_steps=0), "max_steps"), (dict(per_example=1), "per_example"),
                   (dict(prior_log_prob_fn=3.0), "prior_log_prob_fn")]:
    with pytest.raises(ValueError, match=word):
      call(**kw)
  with pytest.raises(ValueError, match="mean_type"):
    ode.DDPMProcess(get_beta_schedule("linear", 10), mean_type="mean")
  with pytest.raises(ValueError, match="betas"):
    ode.DDPMProcess(get_beta_schedule("jsd", 10))
  v = jnp.zeros((2, 3), jnp.int32)
  for kw, word in [(dict(v=v + 17), "0..16"), (dict(v=v - 1), "0..16"),
                   (dict(v=v.astype(jnp.float32)), "integer"), (dict(num_levels=1), "num_levels"),
                   (dict(num_dequant=0), "num_dequant"), (dict(key=None), "key"),
                   (dict(dtype=jnp.int32), "dtype must be a floating dtype"),
                   (dict(dtype=jnp.float64), "dtype=float64 needs JAX's 64-bit mode")]:
    args = dict(v=v, key=key, num_levels=17)
    args.update(kw)
    with pytest.raises(ValueError, match=word), jax.enable_x64(False):
      ode.discrete_bpd(fn, params, args.pop("v"), args.pop("key"), proc, **args)
  with pytest.raises(RuntimeError, match="max_steps"):
    ode.log_likelihood(fn, params, x, key, proc, max_steps=2, per_example=False)


# ------------------------------------------------------------------------- (f) discrete data

def test_discrete_bpd_bounds_the_exact_discrete_nll():
  """K = 17 levels, Gaussian data in 2-D; the model (optimal flow with the exact prior) has the
  density of the t0 marginal, so P(v) is a product of normal CDF differences over v's bin, and
  the mean dequantized bound must lie above -log2 P(v) / D (Jensen) and above 0."""
  with jax.enable_x64():
    K, mu, s = 17, np.array([0.1, -0.3]), np.array([0.35, 0.25])
    gamma_fn = FixedLinearGamma().apply
    proc = ode.VDMProcess(gamma_fn)
    v = jnp.asarray([[8, 6], [3, 9], [12, 1]])
    params = {"mu": jnp.asarray(mu), "s": jnp.asarray(s)}
    n = 48
    out = ode.discrete_bpd(lambda p, z, g: _vdm_eps_oracle(p, z, g), params, v,
                           jax.random.PRNGKey(0), proc, K, num_dequant=n, divergence="exact",
                           rtol=1e-7, atol=1e-7, t0=1e-3,
                           prior_log_prob_fn=_Prior(gamma_fn, {}, mu, s))
    assert out["offset_bpd"] == pytest.approx(math.log2(8.0))
    assert out["bpd_draws"].shape == (n, 3) and out["nfe"].shape == (n, 3)
    a, sig = ode.marginal(proc, 1e-3, jnp.float64)
    sd = np.sqrt(a**2 * s**2 + sig**2)
    x = 2 * np.asarray(v) / (K - 1) - 1
    from scipy.stats import norm
    p = norm.cdf((x + 1 / (K - 1) - a * mu) / sd) - norm.cdf((x - 1 / (K - 1) - a * mu) / sd)
    exact_bpd = -np.log2(p).sum(-1) / 2
    se = np.asarray(out["bpd_draws"]).std(0) / math.sqrt(n)
    assert np.all(exact_bpd > 0) and np.all(np.asarray(out["bpd"]) > 0)
    assert np.all(np.asarray(out["bpd"]) > exact_bpd - 4 * se), (out["bpd"], exact_bpd, se)
    # The Jensen gap is small for a density this smooth on the bins.
    assert np.all(np.asarray(out["bpd"]) < exact_bpd + 0.2)
    np.testing.assert_allclose(out["bpd"], out["continuous_bpd"] + math.log2(8.0))


def test_discrete_bpd_refuses_a_negative_bound():
  """An unnormalized prior (log p + 50) makes the bound negative: raised, not returned."""
  fn, params = _mlp(2)
  proc = ode.VDMProcess(FixedLinearGamma().apply)
  with pytest.raises(ode.NegativeBoundError, match="cannot be negative"):
    ode.discrete_bpd(fn, params, jnp.full((2, 2), 8), jax.random.PRNGKey(0), proc, 17,
                     num_steps=4, divergence="exact", per_example=False,
                     prior_log_prob_fn=_shifted_prior)


def _shifted_prior(x1):
  return -0.5 * jnp.sum(x1**2, -1) - x1.shape[-1] * 0.5 * math.log(2 * math.pi) + 50.0


def test_solver_net_is_the_same_unet_with_gemm_convolutions_on_cpu():
  """--mode=ode_nll solves a lax-convolution U-Net as its conv_impl='matmul' clone on CPU
  (objectives.solver_net): the same parameters give the same outputs and the same input
  gradients (the vector-Jacobian products of the Hutchinson divergence); other networks are used as they are."""
  from vdm.models.mlp import MLPDenoiser
  from vdm.objectives import solver_net
  net = UNet(ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(), dropout=0.0,
             num_groups=4)
  assert net.conv_impl == "lax"
  fast = solver_net(net)
  assert jax.default_backend() != "cpu" or fast.conv_impl == "matmul"
  mlp = MLPDenoiser(hidden=8, num_blocks=1)
  assert solver_net(mlp) is mlp
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 8, 8, 1))
  v = jax.random.normal(jax.random.PRNGKey(3), x.shape)
  t = jnp.array([3, 700], jnp.int32)
  params = jax.jit(net.init)(jax.random.PRNGKey(1), x, t)["params"]
  # Non-zero last convolutions so that every layer matters.
  params = jax.tree_util.tree_map(lambda p: p + 0.05 * jnp.ones_like(p), params)

  @jax.jit
  def value_and_vjp(p):
    outs = []
    for n in (net, fast):
      out, pull = jax.vjp(lambda z: n.apply({"params": p}, z, t), x)
      outs.append((out, pull(v)[0]))
    return outs

  (out, tangent), (out_fast, tangent_fast) = value_and_vjp(params)
  assert float(jnp.std(out)) > 1e-2 and float(jnp.std(tangent)) > 1e-2
  np.testing.assert_allclose(np.asarray(out_fast), np.asarray(out), rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(np.asarray(tangent_fast), np.asarray(tangent), rtol=1e-4,
                             atol=1e-4)
