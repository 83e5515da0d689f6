"""Exact answers for the diffusion bounds (vdm/diffusion/oracles.py), and the ordinary code paths
(GaussianDiffusion.calc_bpd, vdm_losses, the VDM sampler, vdm.elbo) checked against them."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate, special

from vdm import elbo as E
from vdm.diffusion import oracles as O
from vdm.diffusion import schedules as S
from vdm.diffusion import vdm as V
from vdm.diffusion.ddpm import GaussianDiffusion
from vdm.diffusion.schedules import get_beta_schedule

MU = np.array([0.3, -0.5])
SD = np.array([0.5, 1.2])
X0 = np.array([[0.1, -1.7], [1.0, 0.4]])       # two fixed examples


def _mc_close(samples, want, n_se=5.0, atol=1e-9):
  """Assert the mean of samples [N, ...] equals want within n_se standard errors."""
  samples = np.asarray(samples, np.float64)
  mean = samples.mean(0)
  se = samples.std(0, ddof=1) / math.sqrt(samples.shape[0])
  assert np.all(np.abs(mean - want) <= n_se * se + atol), (mean, want, se)


def _gamma_grid(gamma_min, gamma_max, T):
  return np.linspace(gamma_min, gamma_max, T + 1)


# =============================================================================================
# (a) Gaussian data: closed forms.
# =============================================================================================

def test_vdm_continuous_closed_form_against_quadrature_in_eps_space():
  """Independent route: E_eps||eps - E[eps|z]||^2 with E[eps|z] = Cov(eps, z)/Var(z) (z - E z)
  integrated over gamma by quadrature (VDM eq. 17 after t -> gamma)."""
  g0, g1 = -9.0, 4.0
  x = X0[0]
  want = O.vdm_gaussian_bound_continuous(MU, SD, g0, g1, x)
  total = 0.0
  for xd, m, s in zip(x, MU, SD):
    def integrand(g):
      a, sig = math.sqrt(special.expit(-g)), math.sqrt(special.expit(g))
      k = sig / (a * a * s * s + sig * sig)        # E[eps|z] = k (z - a m)
      # eps - k (a xd + sig eps - a m) = (1 - k sig) eps - k a (xd - m)
      return 0.5 * ((1 - k * sig) ** 2 + (k * a * (xd - m)) ** 2)
    total += integrate.quad(integrand, g0, g1, epsabs=1e-13, epsrel=1e-12, limit=200)[0]
  assert abs(float(want["loss_diff"]) - total) < 1e-9 * abs(total)
  # The prior term: KL of Gaussians, written out.
  a1sq, s1sq = special.expit(-g1), special.expit(g1)
  klz = np.sum(0.5 * (s1sq + a1sq * x**2 - np.log(s1sq) - 1))
  assert abs(float(want["loss_klz"]) - klz) < 1e-12


def test_vdm_discrete_closed_form_equals_ddpm_fixed_small_terms():
  """VDM's discrete-time p(z_s|z_t) = q(z_s|z_t, x_hat) is DDPM's fixed_small reverse process on
  the grid alphas_cumprod[i] = sigmoid(-gamma(i/T)): the T diffusion KLs (VDM eq. 14, SNR
  differences) equal DDPM's columns 1..T (eq. 5, Gaussian KLs), and the priors agree."""
  with np.errstate(all="raise"):
    T = 12
    gammas = _gamma_grid(-7.0, 3.0, T)
    ab = special.expit(-gammas)                            # [T + 1]
    betas = 1.0 - ab / np.append(1.0, ab[:-1])
    for x0_mean, x0_var in ((X0, 0.0), (MU, SD**2)):
      ddpm = O.ddpm_gaussian_bound(betas, "fixed_small", MU, SD, x0_mean, x0_var)
      vdm = O.vdm_gaussian_bound_discrete(MU, SD, gammas, x0_mean, x0_var)
      np.testing.assert_allclose(ddpm["vb"][..., 1:], vdm["diff_terms"], rtol=1e-9, atol=1e-12)
      np.testing.assert_allclose(ddpm["prior"], vdm["loss_klz"], rtol=1e-9)


def test_continuous_bound_identity_over_the_data():
  """E_x[-ELBO_inf] = H(x) + KL(q(z_1) || N(0, I)) + E_{z_0} KL(q(x|z_0) || p(x|z_0)): with the
  optimal denoiser the diffusion loss is I(x; z_0) - I(x; z_1) (I-MMSE), so the bound's only
  slack is at the endpoints."""
  for g0, g1 in ((-9.0, 4.0), (-3.0, 1.0), (-13.3, 5.0)):
    got = float(O.vdm_gaussian_bound_continuous(MU, SD, g0, g1, MU, SD**2)["loss"])
    s2 = SD**2
    a1sq, s1sq = special.expit(-g1), special.expit(g1)
    var_z1 = a1sq * s2 + s1sq
    kl_prior = np.sum(0.5 * (var_z1 + a1sq * MU**2 - np.log(var_z1) - 1))
    snr0 = math.exp(-g0)
    dec_var = math.exp(g0)                                  # p(x|z0) = N(z0/a0, e^g0)
    post_var = s2 / (1 + snr0 * s2)                         # Var(x | z0)
    # r = z0/a0 ~ N(mu, s^2 + 1/snr0); E[x|z0] - r = -(1/snr0)/(s^2 + 1/snr0) (r - mu).
    msq = (1 / snr0) ** 2 / (s2 + 1 / snr0)
    kl_dec = np.sum(0.5 * (np.log(dec_var / post_var) + (post_var + msq) / dec_var - 1))
    want = O.gaussian_entropy(SD) + kl_prior + kl_dec
    assert abs(got - want) < 1e-9 * abs(want)


def test_bounds_above_entropy_and_gap_shrinks():
  H = O.gaussian_entropy(SD)
  # DDPM bound with the optimal predictor, in expectation over the data, for both variances.
  for var_type in O.ORACLE_VAR_TYPES:
    for T in (5, 50, 500):
      for name in ("linear", "cosine"):
        b = O.ddpm_gaussian_bound(get_beta_schedule(name, T), var_type, MU, SD, MU, SD**2)
        assert float(b["total"]) >= H
  # VDM: discrete >= continuous >= H; discrete decreases as T doubles (nested grids) to the
  # continuous value; the continuous gap decreases as the endpoints widen, towards 0.
  cont = {}
  errs = {}
  for g0, g1 in ((-3.0, 1.0), (-6.0, 3.0), (-13.3, 5.0), (-20.0, 10.0)):
    c = float(O.vdm_gaussian_bound_continuous(MU, SD, g0, g1, MU, SD**2)["loss"])
    cont[(g0, g1)] = c
    prev = np.inf
    for T in (1, 2, 4, 16, 64, 256, 1024, 4096):
      d = float(O.vdm_gaussian_bound_discrete(MU, SD, _gamma_grid(g0, g1, T), MU, SD**2)["loss"])
      assert c <= d < prev
      prev = d
      errs[T] = d - c
    # O(1/T) convergence: the error at T = 4096 is a quarter of that at 1024.
    assert abs(errs[1024] / errs[4096] - 4.0) < 0.05
  gaps = [v - H for v in cont.values()]
  assert np.all(np.asarray(gaps) > 0) and np.all(np.diff(gaps) < 0)
  assert gaps[-1] < 1e-3 < gaps[0]
  # Per example, the discrete bound also decreases in T to the continuous one.
  per_ex = [O.vdm_gaussian_bound_discrete(MU, SD, _gamma_grid(-6, 3, T), X0)["loss"]
            for T in (4, 16, 64)]
  assert np.all(np.diff(np.stack(per_ex), axis=0) < 0)


def test_oracle_validation():
  with pytest.raises(ValueError, match="var_type"):
    O.ddpm_gaussian_bound(get_beta_schedule("linear", 4), "learned", MU, SD, X0)
  with pytest.raises(ValueError, match="s must be"):
    O.vdm_gaussian_bound_continuous(MU, -SD, -5.0, 3.0, X0)
  with pytest.raises(ValueError, match="gamma_0 < gamma_1"):
    O.vdm_gaussian_bound_continuous(MU, SD, 3.0, -5.0, X0)
  with pytest.raises(ValueError, match="strictly increasing"):
    O.vdm_gaussian_bound_discrete(MU, SD, [0.0, 0.0, 1.0], X0)
  with pytest.raises(ValueError, match="x0_mean"):
    O.vdm_gaussian_bound_continuous(MU, SD, -5.0, 3.0, np.zeros((2, 3)))
  with pytest.raises(ValueError, match="mean_type"):
    O.ddpm_optimal_model_fn(np.ones(3) * 0.5, MU, SD, "mean")


# =============================================================================================
# (a) Gaussian data: the ordinary code paths agree with the closed forms.
# =============================================================================================

@pytest.mark.parametrize("var_type,mean_type", [("fixed_small", "eps"), ("fixed_large", "x0")])
def test_calc_bpd_with_optimal_predictor_matches_closed_form(var_type, mean_type):
  with jax.enable_x64():
    T, N = 16, 3000
    betas = get_beta_schedule("linear", T, beta_start=1e-3, beta_end=0.25)
    diff = GaussianDiffusion(betas, mean_type, var_type, "kl", num_levels=None, t_chunk_size=8)
    model_fn = O.ddpm_optimal_model_fn(diff.alphas_cumprod, MU, SD, mean_type)
    x0 = jnp.asarray(np.repeat(X0, N, axis=0))              # [2N, D]
    out = diff.calc_bpd(model_fn, None, x0, jax.random.PRNGKey(0))
    to_nats = X0.shape[1] * math.log(2.0)
    want = O.ddpm_gaussian_bound(betas, var_type, MU, SD, X0)
    for i in range(2):
      rows = slice(i * N, (i + 1) * N)
      np.testing.assert_allclose(np.asarray(out["prior_bpd"][rows]) * to_nats, want["prior"][i],
                                 rtol=1e-10)
      _mc_close(np.asarray(out["vb"][rows]) * to_nats, want["vb"][i])
      _mc_close(np.asarray(out["total_bpd"][rows]) * to_nats, want["total"][i])


@pytest.mark.parametrize("T", [0, 10])
def test_vdm_losses_with_optimal_denoiser_match_closed_form(T):
  with jax.enable_x64():
    N = 6000
    gamma = S.FixedLinearGamma(-8.0, 4.0)
    den = O.vdm_optimal_denoise_fn(MU, SD)
    # Interleave the examples: antithetic times are stratified over the whole batch, so each
    # example must see a stride of the batch (not a contiguous half) to get uniform times.
    x = jnp.asarray(np.tile(X0, (N, 1)))
    out = jax.jit(lambda k: V.vdm_losses(den, None, gamma.apply, {}, x, k, None, T=T))(
        jax.random.PRNGKey(1))
    if T == 0:
      want = O.vdm_gaussian_bound_continuous(MU, SD, -8.0, 4.0, X0)
    else:
      want = O.vdm_gaussian_bound_discrete(MU, SD, _gamma_grid(-8.0, 4.0, T), X0)
    for i in range(2):
      rows = slice(i, None, 2)
      np.testing.assert_allclose(np.asarray(out["loss_klz"][rows]), want["loss_klz"][i],
                                 rtol=1e-12)
      for name in ("loss_recon", "loss_diff", "loss"):
        _mc_close(np.asarray(out[name][rows]), want[name][i])


def _sampler_moments(gammas, mu, s):
  """Exact mean and variance of the VDM ancestral sampler's output for Gaussian data with the
  optimal denoiser: every step is affine in z plus independent Gaussian noise, so the moments
  follow a linear recursion (written here from Gaussian conditioning, independently of vdm.py)."""
  m, v = np.zeros_like(mu), np.ones_like(mu)
  T = len(gammas) - 1
  for i in range(T, 0, -1):
    g_t, g_s = gammas[i], gammas[i - 1]
    a_t, s2_t = math.sqrt(special.expit(-g_t)), special.expit(g_t)
    a_s, s2_s = math.sqrt(special.expit(-g_s)), special.expit(g_s)
    # x_hat = mu + kx (z - a_t mu); q(z_s | z_t, x): mean = A z + Bx x, var = Vq.
    kx = a_t * s**2 / (a_t**2 * s**2 + s2_t)
    a_ts = a_t / a_s
    s2_ts = s2_t - a_ts**2 * s2_s
    A = a_ts * s2_s / s2_t
    Bx = a_s * s2_ts / s2_t
    Vq = s2_ts * s2_s / s2_t
    k = A + Bx * kx
    l = Bx * (mu - kx * a_t * mu)
    m, v = k * m + l, k**2 * v + Vq
  g0 = gammas[0]
  a0 = math.sqrt(special.expit(-g0))
  return m / a0, v / a0**2 + math.exp(g0)


def test_sampler_with_optimal_denoiser_has_exact_moments():
  with jax.enable_x64():
    N, T = 40000, 20
    g = S.FixedLinearGamma(-7.0, 5.0)
    den = O.vdm_optimal_denoise_fn(MU, SD)
    x = np.asarray(V.sample(den, None, g.apply, {}, (N, 2), jax.random.PRNGKey(2), T,
                            dtype=jnp.float64))
    m, v = _sampler_moments(_gamma_grid(-7.0, 5.0, T), MU, SD)
    _mc_close(x, m)
    _mc_close((x - m) ** 2, v)
    # The recursion is not trivially the data law at small T, and converges to it as T grows.
    m_big, v_big = _sampler_moments(_gamma_grid(-7.0, 5.0, 2000), MU, SD)
    assert np.max(np.abs(v - SD**2)) > 10 * np.max(np.abs(v_big - SD**2))
    np.testing.assert_allclose(m_big, MU, rtol=2e-2)
    np.testing.assert_allclose(v_big, SD**2, rtol=2e-2)


# =============================================================================================
# (b) Enumerable discrete diffusion.
# =============================================================================================

def _setting(D=2, K=3, T=3):
  betas = tuple(get_beta_schedule("linear", T, beta_start=0.1, beta_end=0.5))
  dd = O.DiscreteDiffusion(D, K, betas)
  p_data = np.random.default_rng(D * 100 + K * 10 + T).dirichlet(np.ones(dd.num_states))
  return dd, p_data


def _path_table(dd, params):
  """Brute force in NumPy: q(x_{1:T} | x0) and log p(x_{0:T}) for every x0 and every path,
  as arrays [S(x0), S^T] over joint-state paths (x_1 slowest)."""
  S_, T, K = dd.num_states, dd.num_steps, dd.num_categories
  # Joint kernel from its definition: every variable independently keeps its value with
  # probability 1 - beta and is redrawn uniformly with probability beta (joint states in
  # row-major order over the variables, x_1 slowest).
  digits = np.indices((K,) * dd.num_vars).reshape(dd.num_vars, -1).T   # [S, D]
  same = digits[:, None, :] == digits[None, :, :]                       # [S, S, D]
  Qj = [np.prod(np.where(same, 1.0 - b + b / K, b / K), axis=-1) for b in dd.betas]
  np.testing.assert_allclose(dd.transition_matrices(), np.stack(Qj), rtol=0, atol=1e-15)
  lp_T = np.asarray(jax.nn.log_softmax(params["prior_logits"]))
  lP = np.asarray(jax.nn.log_softmax(params["reverse_logits"], axis=-1))
  paths = np.indices((S_,) * T).reshape(T, -1).T          # [S^T, T]: x_1 .. x_T
  logq = np.zeros((S_, len(paths)))
  logp = np.zeros((S_, len(paths)))
  for x0 in range(S_):
    full = np.concatenate([np.full((len(paths), 1), x0), paths], axis=1)
    for t in range(1, T + 1):
      logq[x0] += np.log(Qj[t - 1][full[:, t - 1], full[:, t]])
      logp[x0] += lP[t - 1][full[:, t], full[:, t - 1]]
    logp[x0] += lp_T[full[:, T]]
  return paths, logq, logp, lp_T, lP


@pytest.mark.parametrize("D,K,T", [(2, 3, 3), (3, 2, 4)])
def test_discrete_identities_exact(D, K, T):
  with jax.enable_x64():
    dd, _ = _setting(D, K, T)
    params = O.random_reverse_params(dd, D + K + T, scale=1.5)
    states = E.enumerate_states(D * T, K)
    log_joint, log_q = O.make_log_joint(dd, params), O.make_log_q(dd)
    xs = dd.states()
    rep = E.check_report(E.bound_report(log_joint, log_q, xs, states))
    chain = np.asarray(O.log_marginal_chain(dd, params))
    paths, logq, logp, lp_T, lP = _path_table(dd, params)
    idx = jnp.arange(dd.num_states)
    log_pxs = np.asarray(jax.jit(jax.vmap(lambda x: E.log_evidence(log_joint, x, states)))(xs))
    elbos = np.asarray(jax.jit(jax.vmap(lambda x: E.elbo(log_joint, log_q, x, states)))(xs))
    kls = np.asarray(jax.jit(jax.vmap(lambda x: E.kl_to_posterior(log_joint, log_q, x,
                                                                   states)))(xs))
    decs = jax.tree_util.tree_map(
        np.asarray, jax.jit(jax.vmap(lambda i: O.bound_decomposition(dd, params, i)))(idx))
    eq9s = jax.tree_util.tree_map(
        np.asarray, jax.jit(jax.vmap(lambda i: O.eq9_bound(dd, params, i)))(idx))
    rep = jax.tree_util.tree_map(np.asarray, rep)
    for i in range(dd.num_states):
      log_px, elbo, kl = float(log_pxs[i]), float(elbos[i]), float(kls[i])
      dec = jax.tree_util.tree_map(lambda a: a[i], decs)
      eq9 = jax.tree_util.tree_map(lambda a: a[i], eq9s)
      # log p(x0): enumeration = backward chain = brute force.
      assert abs(log_px - chain[i]) < 1e-9
      assert abs(log_px - special.logsumexp(logp[i])) < 1e-9
      # Eq. 8 (enumerated -ELBO) = the decomposition (eq. 5, from matrices) = eq. 9 form.
      assert abs(-elbo - float(dec["total"])) < 1e-9
      assert abs(float(dec["total"]) - (float(dec["L_T"]) + float(np.sum(dec["L"])))) < 1e-12
      assert abs(-elbo - float(eq9["total"])) < 1e-9
      q = np.exp(logq[i])
      assert abs(q.sum() - 1.0) < 1e-12
      assert abs(-elbo - np.sum(q * (logq[i] - logp[i]))) < 1e-9
      # log p(x0) - ELBO = KL(q(x_{1:T}|x0) || p(x_{1:T}|x0)) > 0.
      assert abs(log_px - elbo - kl) < 1e-9
      assert kl > 1e-6
      np.testing.assert_allclose([rep["log_evidence"][i], rep["elbo"][i], rep["kl"][i]],
                                 [log_px, elbo, kl], atol=1e-9)
      # Each term against brute force over paths: L_T, L_0 and every L_{t-1}.
      xT = paths[:, -1]
      qxT = np.bincount(xT, weights=q, minlength=dd.num_states)
      assert abs(float(dec["L_T"]) - np.sum(qxT * (np.log(qxT) - lp_T))) < 1e-9
      assert abs(float(dec["L"][0]) - np.sum(q * -lP[0][paths[:, 0], i])) < 1e-9
      for t in range(2, T + 1):
        a, b = paths[:, t - 2], paths[:, t - 1]               # x_{t-1}, x_t
        joint = np.zeros((dd.num_states,) * 2)
        np.add.at(joint, (a, b), q)                           # q(x_{t-1}, x_t | x0)
        post = joint / joint.sum(0, keepdims=True)            # q(x_{t-1} | x_t, x0) [a, b]
        want = np.sum(q * (np.log(post[a, b]) - lP[t - 1][b, a]))
        assert abs(float(dec["L"][t - 1]) - want) < 1e-9


def test_true_reverse_process_is_tight():
  """With p = the true reverse process of q under p_data, p(x_{0:T}) = q(x_{0:T}): log p(x0) =
  log p_data(x0), KL = 0 and E[-ELBO] = H(p_data), all exactly."""
  with jax.enable_x64():
    dd, p_data = _setting()
    params = O.true_reverse_params(dd, p_data)
    states = E.enumerate_states(dd.num_vars * dd.num_steps, dd.num_categories)
    rep = E.bound_report(O.make_log_joint(dd, params), O.make_log_q(dd), dd.states(), states)
    np.testing.assert_allclose(np.asarray(rep["log_evidence"]), np.log(p_data), atol=1e-9)
    np.testing.assert_allclose(np.asarray(rep["kl"]), 0.0, atol=1e-9)
    H = -np.sum(p_data * np.log(p_data))
    assert abs(float(O.expected_neg_elbo(dd, params, p_data)) - H) < 1e-9


def test_fit_reverse_table_tightens_the_bound():
  with jax.enable_x64():
    dd, p_data = _setting()
    H = -np.sum(p_data * np.log(p_data))
    init = O.random_reverse_params(dd, 0)
    params, hist = O.fit_reverse_table(dd, init, p_data, num_steps=300, learning_rate=0.1)
    hist = np.asarray(hist)
    assert hist.shape == (301,)
    assert abs(hist[0] - float(O.expected_neg_elbo(dd, init, p_data))) < 1e-9
    assert abs(hist[-1] - float(O.expected_neg_elbo(dd, params, p_data))) < 1e-9
    assert np.all(hist >= H - 1e-9)
    # The gap to the entropy (the best any reverse process can do) shrinks by > 100x.
    assert hist[-1] - H < 1e-2 * (hist[0] - H)
    # The KL to the true posterior shrinks too (the bound tightens, per x0).
    states = E.enumerate_states(dd.num_vars * dd.num_steps, dd.num_categories)
    kl = lambda p: np.asarray(E.bound_report(O.make_log_joint(dd, p), O.make_log_q(dd),
                                             dd.states(), states)["kl"])
    assert np.sum(p_data * kl(params)) < 0.1 * np.sum(p_data * kl(init))


def test_discrete_validation():
  with pytest.raises(ValueError, match="num_categories"):
    O.DiscreteDiffusion(2, 1, (0.1,))
  with pytest.raises(ValueError, match="betas"):
    O.DiscreteDiffusion(2, 2, (0.0, 0.5))
  with pytest.raises(ValueError, match="too many"):
    O.DiscreteDiffusion(13, 2, (0.1,))
  dd, _ = _setting()
  with pytest.raises(ValueError, match="p_data"):
    O.true_reverse_params(dd, np.ones(dd.num_states))
  with pytest.raises(ValueError, match="num_steps"):
    O.fit_reverse_table(dd, O.random_reverse_params(dd, 0), np.ones(9) / 9, 0)
