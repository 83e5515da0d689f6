"""Tests of the log-SNR schedules and the VDM bound (vdm/diffusion/schedules.py, vdm.py)."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate, special, stats

from vdm.diffusion import schedules as S
from vdm.diffusion import vdm as V


def _perturbed_params(module, key, scale=1.0):
  """Init the module, then replace every network weight by N(0, scale^2) draws so that the
  monotone network is far from linear (the endpoints b, w keep their init values)."""
  params = module.init(jax.random.PRNGKey(0), jnp.zeros(3))
  flat, tree = jax.tree_util.tree_flatten_with_path(params)
  keys = jax.random.split(key, len(flat))
  new = []
  for (path, leaf), k in zip(flat, keys):
    name = str(path[-1].key) if hasattr(path[-1], "key") else ""
    if name in ("k1", "k2", "b2", "k3"):
      # A small linear slope k1 lets the sigmoid path dominate.
      leaf = (0.05 if name == "k1" else scale) * jax.random.normal(k, leaf.shape, leaf.dtype)
    new.append(leaf)
  return jax.tree_util.tree_unflatten(tree, new)


SCHEDULES = [
    (S.FixedLinearGamma(-10.0, 6.0), False),
    (S.LearnedLinearGamma(-10.0, 6.0, param_dtype=jnp.float64), False),
    (S.LearnedMonotoneGamma(-10.0, 6.0, n_features=64, param_dtype=jnp.float64), True),
]


# ------------------------------------------------------------------------------ schedules

@pytest.mark.parametrize("module,perturb", SCHEDULES)
def test_gamma_monotone_endpoints_and_snr_range(module, perturb):
  with jax.enable_x64():
    params = module.init(jax.random.PRNGKey(0), jnp.zeros(3))
    if perturb:
      params = _perturbed_params(module, jax.random.PRNGKey(1), scale=3.0)
    f = lambda t: module.apply(params, t)
    grid = jnp.linspace(0.0, 1.0, 2001)
    g = np.asarray(jax.jit(f)(grid))
    assert g.shape == (2001,)
    assert np.all(np.diff(g) > 0)
    # Endpoints are the (init) learnable endpoints.
    assert abs(float(f(0.0)) - (-10.0)) < 1e-12
    assert abs(float(f(1.0)) - 6.0) < 1e-12
    # Derivative sign by autodiff, pointwise.
    dg = jax.jit(jax.vmap(jax.grad(lambda t: f(t))))(grid)
    assert np.all(np.asarray(dg) > 0)
    # t -> SNR covers exactly [SNR(1), SNR(0)] = [e^-6, e^10], monotonically decreasing.
    snr = np.asarray(S.snr_from_gamma(jnp.asarray(g)))
    assert np.all(np.diff(snr) < 0)
    np.testing.assert_allclose([snr[0], snr[-1]], [math.exp(10.0), math.exp(-6.0)], rtol=1e-12)
    # Scalar in, scalar out.
    assert f(0.3).shape == ()


def test_monotone_net_is_nonlinear_after_perturbation():
  """The monotone test above is not vacuous: the perturbed network is far from linear."""
  with jax.enable_x64():
    m = SCHEDULES[2][0]
    params = _perturbed_params(m, jax.random.PRNGKey(1), scale=3.0)
    g = np.asarray(m.apply(params, jnp.linspace(0.0, 1.0, 101)))
    linear = np.linspace(-10.0, 6.0, 101)
    assert np.max(np.abs(g - linear)) > 0.5


def test_learned_endpoints_move_with_params():
  m = S.LearnedLinearGamma(-13.3, 5.0)
  params = m.init(jax.random.PRNGKey(0), 0.5)
  params = jax.tree_util.tree_map(lambda p: p, params)
  params["params"]["b"] = jnp.asarray(-8.0)
  params["params"]["w"] = jnp.asarray(-4.0)   # |w| is used
  np.testing.assert_allclose(m.apply(params, jnp.asarray([0.0, 1.0])), [-8.0, -4.0], rtol=1e-6)


def test_alpha_sigma_variance_preserving():
  with jax.enable_x64():
    g = jnp.linspace(-30.0, 30.0, 61)
    a, s = S.alpha_sigma_from_gamma(g)
    np.testing.assert_allclose(np.asarray(a**2 + s**2), 1.0, atol=1e-14)
    np.testing.assert_allclose(np.asarray(a**2 / s**2), np.exp(-np.asarray(g)), rtol=1e-10)
    np.testing.assert_allclose(np.asarray(a**2), special.expit(-np.asarray(g)), rtol=1e-12)


def test_gamma_jvp_matches_finite_differences():
  with jax.enable_x64():
    m = SCHEDULES[2][0]
    params = _perturbed_params(m, jax.random.PRNGKey(2), scale=2.0)
    t = jnp.linspace(0.05, 0.95, 19)
    g, dg = V.gamma_and_derivative(m.apply, params, t)
    h = 1e-5
    fd = (m.apply(params, t + h) - m.apply(params, t - h)) / (2 * h)
    np.testing.assert_allclose(np.asarray(g), np.asarray(m.apply(params, t)), rtol=1e-14)
    np.testing.assert_allclose(np.asarray(dg), np.asarray(fd), rtol=1e-7)


def test_schedule_validation():
  with pytest.raises(ValueError, match="gamma_min < gamma_max"):
    S.FixedLinearGamma(5.0, -5.0).apply({}, 0.5)
  with pytest.raises(ValueError, match="fixed_linear"):
    S.get_gamma_schedule("cosine")
  with pytest.raises(ValueError, match=r"shape \[B\]"):
    S.FixedLinearGamma().apply({}, jnp.zeros((2, 2)))
  assert isinstance(S.get_gamma_schedule("learned_net", n_features=8), S.LearnedMonotoneGamma)


# ---------------------------------------------------------------------------------- times

def test_antithetic_times_stratified_and_uniform():
  B = 8
  keys = jax.random.split(jax.random.PRNGKey(0), 2000)
  ts = np.asarray(jax.vmap(lambda k: V.antithetic_times(k, B))(keys))
  assert ts.shape == (2000, B)
  assert np.all((ts >= 0) & (ts < 1))
  # Stratified: every stratum [j/B, (j+1)/B) holds exactly one time of each draw.
  strata = np.sort(np.floor(ts * B).astype(int), axis=1)
  np.testing.assert_array_equal(strata, np.tile(np.arange(B), (2000, 1)))
  # Uniform marginals (Kolmogorov-Smirnov against U[0, 1)).
  for i in (0, 3, B - 1):
    assert stats.kstest(ts[:, i], "uniform").pvalue > 1e-3
  # iid times are not stratified (the check above can fail).
  iid = np.asarray(V.iid_times(jax.random.PRNGKey(1), 4000)).reshape(500, B)
  assert not np.all(np.sort(np.floor(iid * B), axis=1) == np.arange(B))


def test_discretize_times_uniform_on_grid():
  T = 5
  t = V.discretize_times(jnp.linspace(0.0, 1.0, 1000, endpoint=False), T)
  vals, counts = np.unique(np.round(np.asarray(t) * T).astype(int), return_counts=True)
  np.testing.assert_array_equal(vals, np.arange(1, T + 1))
  np.testing.assert_array_equal(counts, np.full(T, 200))


# --------------------------------------------------------------------------------- losses

def test_loss_klz_against_quadrature():
  with jax.enable_x64():
    x = jnp.asarray([[-1.0, 0.3, 0.9], [0.5, -0.2, 0.0]])
    g1 = 2.5
    got = np.asarray(V.loss_klz(x, g1))
    a1, s1 = math.sqrt(special.expit(-g1)), math.sqrt(special.expit(g1))
    want = []
    for row in np.asarray(x):
      kl = 0.0
      for xi in row:
        q = stats.norm(a1 * xi, s1)
        f = lambda z: q.pdf(z) * (q.logpdf(z) - stats.norm.logpdf(z))
        kl += integrate.quad(f, a1 * xi - 12 * s1, a1 * xi + 12 * s1, epsabs=1e-13)[0]
      want.append(kl)
    np.testing.assert_allclose(got, want, rtol=1e-9)


@pytest.mark.parametrize("num_levels", [2, 5, 256])
def test_loss_recon_discrete_against_scipy(num_levels):
  with jax.enable_x64():
    rng = np.random.default_rng(0)
    v = rng.integers(0, num_levels, size=(3, 4, 2))
    x = 2.0 * v / (num_levels - 1) - 1.0
    eps0 = rng.standard_normal(x.shape)
    g0 = -3.0
    got = np.asarray(V.loss_recon(jnp.asarray(x), g0, jnp.asarray(eps0), num_levels))
    # Independent: z_0 = alpha_0 x + sigma_0 eps_0; p(v | z_0) proportional to
    # N(z_0 / alpha_0; x_k, sigma_0^2 / alpha_0^2) over the grid values x_k.
    a0, s0 = math.sqrt(special.expit(-g0)), math.sqrt(special.expit(g0))
    z0 = a0 * x + s0 * eps0
    grid = 2.0 * np.arange(num_levels) / (num_levels - 1) - 1.0
    logits = stats.norm.logpdf(z0[..., None] / a0, loc=grid, scale=s0 / a0)
    logp = logits - special.logsumexp(logits, axis=-1, keepdims=True)
    picked = np.take_along_axis(logp, v[..., None], axis=-1)[..., 0]
    np.testing.assert_allclose(got, -picked.reshape(3, -1).sum(1), rtol=1e-9, atol=1e-12)


def test_loss_recon_continuous_against_scipy():
  with jax.enable_x64():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(4, 3))
    eps0 = rng.standard_normal(x.shape)
    g0 = -5.0
    got = np.asarray(V.loss_recon(jnp.asarray(x), g0, jnp.asarray(eps0), None))
    a0, s0 = math.sqrt(special.expit(-g0)), math.sqrt(special.expit(g0))
    z0 = a0 * x + s0 * eps0
    want = -stats.norm.logpdf(x, loc=z0 / a0, scale=s0 / a0).sum(1)
    np.testing.assert_allclose(got, want, rtol=1e-10)


def test_decoder_probabilities_sum_to_one_and_peak_at_x():
  with jax.enable_x64():
    x = jnp.asarray([[-1.0, 1.0 / 3.0, 1.0]])
    lp = V.decoder_logits(x, -12.0, 4)
    np.testing.assert_allclose(np.exp(np.asarray(lp)).sum(-1), 1.0, atol=1e-12)
    np.testing.assert_array_equal(np.argmax(np.asarray(lp), -1), [[0, 2, 3]])


def _fixed_denoiser(params, z, g):
  """A deterministic eps predictor depending on (z, gamma) only (not the optimal one)."""
  return jnp.tanh(params * z) * jax.nn.sigmoid(g)[:, None] + 0.1 * jnp.sin(z + g[:, None])


def _expected_diff_over_t(gamma_fn, gparams, x_row, n_eps, t_nodes, T, key):
  """Per node t: the batch mean of loss_diff over n_eps noise draws (common random numbers:
  the same key, hence the same eps, at every node)."""
  x = jnp.broadcast_to(x_row, (n_eps,) + x_row.shape)
  f = lambda t: jnp.mean(V.vdm_losses(_fixed_denoiser, 0.7, gamma_fn, gparams, x, key, None,
                                      T=T, t=jnp.full((n_eps,), t))["loss_diff"])
  return jax.jit(jax.vmap(f))(t_nodes)


def _composite_gl(a, b, pieces, n):
  """Nodes and weights of composite Gauss-Legendre quadrature on [a, b]."""
  u, w = np.polynomial.legendre.leggauss(n)
  edges = np.linspace(a, b, pieces + 1)
  half = 0.5 * np.diff(edges)[:, None]
  mid = 0.5 * (edges[1:] + edges[:-1])[:, None]
  return (mid + half * u).ravel(), (half * w).ravel()


def test_continuous_loss_invariant_to_schedule_between_endpoints():
  """VDM eq. 21: E_t[0.5 gamma'(t) h(gamma(t))] = 0.5 int_{gamma_min}^{gamma_max} h(g) dg for
  any schedule with those endpoints, when the denoiser depends on (z, gamma) only."""
  with jax.enable_x64():
    key = jax.random.PRNGKey(3)
    x_row = jnp.asarray([0.4, -0.7, 0.1])
    n_eps = 64
    lin = S.FixedLinearGamma(-10.0, 6.0)
    net = S.LearnedMonotoneGamma(-10.0, 6.0, n_features=32, param_dtype=jnp.float64)
    net_params = _perturbed_params(net, jax.random.PRNGKey(5), scale=2.0)
    # Time integrals (composite Gauss-Legendre over t in [0, 1]) through vdm_losses.
    nodes, w = _composite_gl(0.0, 1.0, 4, 20)
    results = []
    for mod, p in ((lin, {}), (net, net_params)):
      vals = _expected_diff_over_t(mod.apply, p, x_row, n_eps, jnp.asarray(nodes), 0, key)
      results.append(float(np.sum(w * np.asarray(vals))))
    # The SNR-variable integral computed directly from the same eps draws.
    eps = jax.random.normal(jax.random.split(key, 3)[1], (n_eps, 3), jnp.float64)

    def h(g):
      a, s = S.alpha_sigma_from_gamma(g)
      z = a * x_row + s * eps
      e = _fixed_denoiser(0.7, z, jnp.full((n_eps,), g))
      return jnp.mean(jnp.sum((eps - e) ** 2, -1))

    nodes, w = _composite_gl(-10.0, 6.0, 4, 20)
    in_gamma = 0.5 * float(np.sum(w * np.asarray(jax.jit(jax.vmap(h))(jnp.asarray(nodes)))))
    assert abs(results[0] - in_gamma) < 1e-8 * abs(in_gamma)
    assert abs(results[1] - in_gamma) < 1e-8 * abs(in_gamma)
    # Not vacuous: the schedules differ pointwise, the integrands differ.
    mid = jnp.asarray([0.3])
    assert abs(float(net.apply(net_params, mid)[0]) - float(lin.apply({}, mid)[0])) > 0.5


def test_discrete_loss_approaches_continuous():
  """E_i[L_T] = 0.5 sum_i expm1(g_i - g_{i-1}) h(g_i) -> 0.5 int h dg = E_t[L_inf], with error
  O(1/T): each error shrinks as T doubles, and T * error stabilizes."""
  with jax.enable_x64():
    key = jax.random.PRNGKey(4)
    x_row = jnp.asarray([0.4, -0.7, 0.1])
    n_eps = 64
    lin = S.FixedLinearGamma(-10.0, 6.0)
    nodes, w = _composite_gl(0.0, 1.0, 4, 20)
    vals = _expected_diff_over_t(lin.apply, {}, x_row, n_eps, jnp.asarray(nodes), 0, key)
    cont = float(np.sum(w * np.asarray(vals)))
    errs = []
    Ts = [8, 32, 128, 512]
    for T in Ts:
      t_grid = jnp.arange(1, T + 1, dtype=jnp.float64) / T
      vals = _expected_diff_over_t(lin.apply, {}, x_row, n_eps, t_grid, T, key)
      errs.append(float(np.mean(np.asarray(vals))) - cont)   # exact expectation over i
    errs = np.abs(np.asarray(errs))
    assert np.all(np.diff(errs) < 0)
    assert errs[-1] < 2e-2 * abs(cont)
    scaled = errs * np.asarray(Ts)
    assert abs(scaled[-1] / scaled[-2] - 1.0) < 0.1


def test_vdm_losses_structure_and_validation():
  x = jnp.full((4, 2, 2, 1), 2.0 * 3 / 255 - 1.0)   # level 3 of 256
  gamma = S.FixedLinearGamma()
  den = lambda p, z, g: jnp.zeros_like(z)
  out = V.vdm_losses(den, None, gamma.apply, {}, x, jax.random.PRNGKey(0), 256, T=10)
  assert set(out) == set(V.LOSS_NAMES)
  for v in out.values():
    assert v.shape == (4,)
  np.testing.assert_allclose(np.asarray(out["loss"]),
                             np.asarray(out["loss_recon"] + out["loss_klz"] + out["loss_diff"]))
  np.testing.assert_allclose(np.asarray(out["loss_klz"]),
                             np.asarray(V.loss_klz(x, gamma.apply({}, 1.0))))
  bpd = V.losses_to_bpd(out, 4)
  np.testing.assert_allclose(np.asarray(bpd["loss"]), np.asarray(out["loss"]) / (4 * math.log(2)),
                             rtol=1e-6)
  key = jax.random.PRNGKey(0)
  with pytest.raises(ValueError, match="num_levels"):
    V.vdm_losses(den, None, gamma.apply, {}, x, key, 1)
  with pytest.raises(ValueError, match="T must be"):
    V.vdm_losses(den, None, gamma.apply, {}, x, key, 256, T=-1)
  with pytest.raises(ValueError, match="T must be"):
    V.vdm_losses(den, None, gamma.apply, {}, x, key, 256, T=2.5)
  with pytest.raises(ValueError, match=r"\[-1, 1\]"):
    V.vdm_losses(den, None, gamma.apply, {}, x + 2.5, key, 256)
  with pytest.raises(ValueError, match="grid"):
    V.vdm_losses(den, None, gamma.apply, {}, x + 0.001, key, 256)
  with pytest.raises(ValueError, match="eps_hat"):
    V.vdm_losses(lambda p, z, g: z[:, :1], None, gamma.apply, {}, x, key, 256)
  with pytest.raises(ValueError, match="shape"):
    V.vdm_losses(den, None, gamma.apply, {}, jnp.zeros((4,)), key, 256)
  # Continuous data off the grid is fine with the continuous decoder.
  V.vdm_losses(den, None, gamma.apply, {}, x + 0.123, key, None)


def test_vdm_losses_jit_and_grad_through_schedule():
  """The loss is differentiable in the schedule's endpoints: d loss_klz / d gamma_1 matches
  finite differences and the whole thing jits."""
  with jax.enable_x64():
    m = S.LearnedLinearGamma(-6.0, 4.0, param_dtype=jnp.float64)
    p = m.init(jax.random.PRNGKey(0), 0.5)
    x = jnp.asarray([[0.2, -0.4], [0.9, 0.1]])
    den = lambda q, z, g: 0.3 * z
    f = jax.jit(lambda p: jnp.mean(V.vdm_losses(den, None, m.apply, p, x, jax.random.PRNGKey(1),
                                                None)["loss"]))
    g = jax.grad(f)(p)["params"]["w"]
    h = 1e-6
    pp = jax.tree_util.tree_map(lambda a: a, p)
    pm = jax.tree_util.tree_map(lambda a: a, p)
    pp["params"]["w"] = p["params"]["w"] + h
    pm["params"]["w"] = p["params"]["w"] - h
    np.testing.assert_allclose(float(g), (float(f(pp)) - float(f(pm))) / (2 * h), rtol=1e-6)


# ------------------------------------------------------------------------------- sampling

def test_p_step_matches_bayes_posterior():
  """p(z_s | z_t) = q(z_s | z_t, x = x_hat) with x_hat = (z_t - sigma_t eps_hat) / alpha_t,
  against the Gaussian-conditioning formulas of VDM eq. 6-8 written out in NumPy."""
  with jax.enable_x64():
    rng = np.random.default_rng(0)
    z_t, eps_hat = rng.normal(size=(2, 5, 3))
    g_t, g_s = 1.5, -2.0
    mean, std = V.p_step_mean_std(jnp.asarray(z_t), jnp.asarray(eps_hat), g_t, g_s)
    a_t, s2_t = special.expit(-g_t) ** 0.5, special.expit(g_t)
    a_s, s2_s = special.expit(-g_s) ** 0.5, special.expit(g_s)
    a_ts = a_t / a_s
    s2_ts = s2_t - a_ts**2 * s2_s
    x_hat = (z_t - math.sqrt(s2_t) * eps_hat) / a_t
    want_mean = a_ts * s2_s / s2_t * z_t + a_s * s2_ts / s2_t * x_hat
    want_var = s2_ts * s2_s / s2_t
    np.testing.assert_allclose(np.asarray(mean), want_mean, rtol=1e-10)
    np.testing.assert_allclose(float(std) ** 2, want_var, rtol=1e-10)


def test_sampler_shapes_determinism_and_validation():
  gamma = S.FixedLinearGamma()
  den = lambda p, z, g: p * z
  shape = (3, 4, 4, 2)
  a = V.sample(den, 0.1, gamma.apply, {}, shape, jax.random.PRNGKey(0), T=7, num_levels=4)
  b = V.sample(den, 0.1, gamma.apply, {}, shape, jax.random.PRNGKey(0), T=7, num_levels=4)
  c = V.sample(den, 0.1, gamma.apply, {}, shape, jax.random.PRNGKey(1), T=7, num_levels=4)
  assert a.shape == shape
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert not np.array_equal(np.asarray(a), np.asarray(c))
  v = (np.asarray(a) + 1.0) * 3 / 2
  np.testing.assert_allclose(v, np.round(v), atol=1e-6)
  cont = V.sample(den, 0.1, gamma.apply, {}, (5, 2), jax.random.PRNGKey(0), T=3)
  assert cont.shape == (5, 2) and np.all(np.isfinite(np.asarray(cont)))
  with pytest.raises(ValueError, match="T must be"):
    V.sample(den, 0.1, gamma.apply, {}, shape, jax.random.PRNGKey(0), T=0)
  with pytest.raises(ValueError, match="shape"):
    V.sample(den, 0.1, gamma.apply, {}, (3,), jax.random.PRNGKey(0), T=2)
