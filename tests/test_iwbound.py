"""Importance-weighted bounds over forward trajectories (vdm/diffusion/iwbound.py), checked against
exact answers: the enumerable discrete diffusion (log p(x0) by the backward chain, the ELBO from
the transition matrices), Gaussian data with Bayes-optimal denoisers (the closed-form bounds of
oracles.py, and the exact marginal of the linear-Gaussian reverse chain derived here), and
calc_bpd / vdm_losses for small random networks."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special

from vdm.diffusion import iwbound as IW
from vdm.diffusion import oracles as O
from vdm.diffusion import schedules as S
from vdm.diffusion import vdm as V
from vdm.diffusion.ddpm import GaussianDiffusion
from vdm.diffusion.schedules import get_beta_schedule

MU = np.array([0.3, -0.5])
SD = np.array([0.5, 1.2])
X0 = np.array([[0.1, -1.7], [1.0, 0.4]])       # two fixed examples
LN2 = math.log(2.0)


def _mean_se(samples, axis=-1):
  samples = np.asarray(samples, np.float64)
  n = samples.shape[axis]
  return samples.mean(axis), samples.std(axis, ddof=1) / math.sqrt(n)


def _assert_mc(samples, want, n_se=4.0, axis=-1):
  """The mean of samples along axis equals want within n_se standard errors."""
  mean, se = _mean_se(samples, axis)
  assert np.all(np.abs(mean - want) <= n_se * se), (mean, want, se)


def _block_bounds(log_w, k):
  """L_k of the disjoint blocks of k consecutive log-weights: [..., n] -> [..., n // k]."""
  n = log_w.shape[-1] // k * k
  blocks = log_w[..., :n].reshape(log_w.shape[:-1] + (n // k, k))
  return special.logsumexp(blocks, axis=-1) - math.log(k)


# =============================================================================================
# (a) Enumerable discrete diffusion.
# =============================================================================================

def _discrete_setting():
  # Moderately mixing forward process and a mildly random reverse table: the relative variance
  # of the weights is at most about 30 (checked by enumeration when this setting was chosen),
  # so L_K converges at K ~ 1e4 and the MC errors are honest.
  betas = tuple(get_beta_schedule("linear", 4, beta_start=0.3, beta_end=0.8))
  return O.DiscreteDiffusion(2, 2, betas)


def test_discrete_true_reverse_process_gives_constant_weights():
  with jax.enable_x64():
    dd = _discrete_setting()
    p_data = np.random.default_rng(0).dirichlet(np.ones(dd.num_states))
    params = O.true_reverse_params(dd, p_data)
    idx = jnp.arange(dd.num_states)
    out = IW.discrete_iw_bound(dd, params, idx, jax.random.PRNGKey(0), 64,
                               return_log_weights=True)
    exact = np.asarray(O.log_marginal_chain(dd, params))
    np.testing.assert_allclose(exact, np.log(p_data), atol=1e-12)
    lw = np.asarray(out["log_weights"])
    assert lw.shape == (dd.num_states, 64) and lw.dtype == np.float64
    assert np.max(np.abs(lw - exact[:, None])) < 1e-9        # every draw: w = p(x0)
    np.testing.assert_allclose(np.asarray(out["L_K"]), exact, atol=1e-9)
    np.testing.assert_allclose(np.asarray(out["elbo"]), exact, atol=1e-9)
    np.testing.assert_allclose(np.asarray(out["ess"]), 64.0, rtol=1e-9)
    np.testing.assert_allclose(np.asarray(out["iw_bound_bpd"]),
                               -exact / (dd.num_vars * LN2), atol=1e-9)
    # A state the data never take: every path has weight 0, L_K = log p(x0) = -inf.
    p0 = p_data.copy()
    p0[2] = 0.0
    p0 /= p0.sum()
    params0 = O.true_reverse_params(dd, p0)
    lw0 = np.asarray(IW.discrete_iw_bound(dd, params0, idx, jax.random.PRNGKey(0), 64,
                                          return_log_weights=True)["log_weights"])
    assert np.all(lw0[2] == -np.inf)
    keep = np.arange(dd.num_states) != 2
    assert np.max(np.abs(lw0[keep] - np.log(p0[keep])[:, None])) < 1e-9
    # A scalar x0_index gives scalars.
    one = IW.discrete_iw_bound(dd, params, 3, jax.random.PRNGKey(1), 8)
    assert one["L_K"].shape == () and abs(float(one["L_K"]) - exact[3]) < 1e-9


def test_discrete_random_reverse_table():
  with jax.enable_x64():
    dd = _discrete_setting()
    params = O.random_reverse_params(dd, 7, scale=0.5)
    idx = jnp.arange(dd.num_states)
    R, K = 16, 1 << 14
    reps = jnp.tile(idx, R)                                    # [R * S], state fastest
    out = IW.discrete_iw_bound(dd, params, reps, jax.random.PRNGKey(0), K,
                               sample_chunk_size=4096, return_log_weights=True)
    lw_raw = np.asarray(out["log_weights"])                    # [R S, K]
    lw = lw_raw.reshape(R, dd.num_states, K).transpose(1, 0, 2).reshape(dd.num_states, R * K)
    exact = np.asarray(O.log_marginal_chain(dd, params))
    elbo = -np.asarray(jax.vmap(lambda i: O.bound_decomposition(dd, params, i)["total"])(idx))
    eq9 = -np.asarray(jax.vmap(lambda i: O.eq9_bound(dd, params, i)["total"])(idx))
    np.testing.assert_allclose(elbo, eq9, atol=1e-9)
    assert np.all(exact - elbo > 0.5)                          # a loose bound to tighten
    # E[L_1] = the exact ELBO.
    _assert_mc(lw, elbo)
    # E[L_K] increases in K: paired differences between a block of 4k and its four k-blocks.
    means = []
    for k in (1, 4, 16, 64, 256, 1024, 4096):
      small = _block_bounds(lw, k)                             # [S, n]
      big = _block_bounds(lw, 4 * k)                           # [S, n / 4]
      diff = big - small[:, :big.shape[1] * 4].reshape(big.shape + (4,)).mean(-1)
      m, se = _mean_se(diff)
      assert np.all(m > -3.0 * se), (k, m, se)
      if k <= 16:
        assert np.all(m > 3.0 * se), (k, m, se)                # clearly increasing at small K
      means.append(small.mean(-1))
    # L_K for K = 2^14 is within MC error of log p(x0) (and never above it beyond the error);
    # the bias of L_K is about relvar / (2K) < 1e-3 here, well inside the tolerance.
    lk = _block_bounds(lw, K)                                  # [S, R]
    m, se = _mean_se(lk)
    assert np.all(np.abs(m - exact) <= 4.0 * se + 2e-3), (m, exact, se)
    assert np.all(exact - m < 0.05 * (exact - elbo))           # gap closed by > 95%
    # The function's own L_K is that of its log-weights.
    np.testing.assert_allclose(np.asarray(out["L_K"]), special.logsumexp(lw_raw, -1) - math.log(K),
                               atol=1e-12)


# =============================================================================================
# (b) GaussianDiffusion on Gaussian data with the Bayes-optimal predictor.
# =============================================================================================

T_DDPM = 8
BETAS = get_beta_schedule("linear", T_DDPM, beta_start=1e-2, beta_end=0.6)


@pytest.mark.parametrize("var_type", ["fixed_small", "fixed_large"])
def test_ddpm_single_sample_elbo_matches_closed_form(var_type):
  with jax.enable_x64():
    diff = GaussianDiffusion(BETAS, "eps", var_type, "kl", num_levels=None)
    model_fn = O.ddpm_optimal_model_fn(diff.alphas_cumprod, MU, SD, "eps")
    K = 20000
    out = IW.ddpm_iw_bound(diff, model_fn, None, jnp.asarray(X0), jax.random.PRNGKey(0), K,
                           sample_chunk_size=K, return_log_weights=True)
    want = O.ddpm_gaussian_bound(BETAS, var_type, MU, SD, X0)["total"]      # -ELBO, nats
    lw = np.asarray(out["log_weights"])
    _assert_mc(-lw, want)
    D = X0.shape[1]
    np.testing.assert_allclose(np.asarray(out["elbo_bpd"]), -lw.mean(1) / (D * LN2), rtol=1e-12)
    np.testing.assert_allclose(np.asarray(out["elbo"]), lw.mean(1), rtol=1e-12)
    # The bound is a bound: below the exact marginal (L_K <= log p in expectation).
    exact = O.ddpm_gaussian_chain_log_marginal(BETAS, var_type, MU, SD, X0)
    assert np.all(-want < exact)


def test_ddpm_iw_bound_converges_to_exact_marginal():
  with jax.enable_x64():
    diff = GaussianDiffusion(BETAS, "eps", "fixed_large", "kl", num_levels=None)
    model_fn = O.ddpm_optimal_model_fn(diff.alphas_cumprod, MU, SD, "eps")
    exact = O.ddpm_gaussian_chain_log_marginal(BETAS, "fixed_large", MU, SD, X0)
    # The exact marginal is not trivially the data density at T = 8 (so the test has teeth),
    # and the ELBO is clearly below it.
    data_ll = np.sum(-0.5 * np.log(2 * np.pi * SD**2) - 0.5 * ((X0 - MU) / SD) ** 2, -1)
    assert np.all(np.abs(exact - data_ll) > 1e-3)
    R, K = 16, 4096
    x = jnp.asarray(np.repeat(X0, R, axis=0))                   # R replicates of each example
    out = IW.ddpm_iw_bound(diff, model_fn, None, x, jax.random.PRNGKey(1), K,
                           sample_chunk_size=1024, return_log_weights=True)
    lw = np.asarray(out["log_weights"]).reshape(2, R * K)
    elbo = -O.ddpm_gaussian_bound(BETAS, "fixed_large", MU, SD, X0)["total"]
    assert np.all(exact - elbo > 0.03)
    prev = None
    for k in (1, 16, 256, K):
      lk = _block_bounds(lw, k)
      m, se = _mean_se(lk)
      assert np.all(m <= exact + 4.0 * se), (k, m, exact, se)   # E[L_K] <= log p(x0)
      if prev is not None:
        assert np.all(m > prev)                                 # and it increases with K
      prev = m
    # At K = 4096: within MC error of the exact log p(x0) (the bias, ~relvar / 2K, is < 1e-4).
    lk = np.asarray(out["L_K"]).reshape(2, R)
    m, se = _mean_se(lk)
    assert np.all(np.abs(m - exact) <= 4.0 * se + 1e-4), (m, exact, se)
    assert np.all(exact - m < 0.05 * (exact - elbo))
    np.testing.assert_allclose(lk, _block_bounds(lw, K), atol=1e-12)
    assert np.all(np.asarray(out["ess"]) > 0.5 * K)


def test_ddpm_float32():
  """64-bit mode off: the float32 path (float32 accumulation) still matches the closed form."""
  diff = GaussianDiffusion(get_beta_schedule("linear", 50, beta_start=1e-3, beta_end=0.2),
                           "eps", "fixed_large", "kl", num_levels=None)
  model_fn = O.ddpm_optimal_model_fn(diff.alphas_cumprod, MU, SD, "eps")
  K = 4000
  out = IW.ddpm_iw_bound(diff, model_fn, None, jnp.asarray(X0, jnp.float32),
                         jax.random.PRNGKey(3), K, sample_chunk_size=K, return_log_weights=True)
  assert out["log_weights"].dtype == jnp.float32
  want = O.ddpm_gaussian_bound(diff.betas, "fixed_large", MU, SD, X0)["total"]
  _assert_mc(-np.asarray(out["log_weights"]), want)


# =============================================================================================
# (c) The VDM chain with the Bayes-optimal denoiser.
# =============================================================================================

def test_vdm_single_sample_elbo_and_convergence():
  with jax.enable_x64():
    T, g0, g1 = 6, -6.0, 4.0
    gamma = S.FixedLinearGamma(g0, g1)
    den = O.vdm_optimal_denoise_fn(MU, SD)
    gammas = np.linspace(g0, g1, T + 1)
    K = 20000
    out = IW.vdm_iw_bound(den, None, gamma.apply, {}, jnp.asarray(X0), jax.random.PRNGKey(0),
                          None, T, K, sample_chunk_size=K, return_log_weights=True)
    want = O.vdm_gaussian_bound_discrete(MU, SD, gammas, X0)["loss"]        # -ELBO, nats
    lw = np.asarray(out["log_weights"])
    _assert_mc(-lw, want)
    np.testing.assert_allclose(np.asarray(out["elbo_bpd"]), -lw.mean(1) / (2 * LN2),
                               rtol=1e-12)
    # L_K -> the exact log p(x) of the chain.
    exact = O.vdm_gaussian_chain_log_marginal(gammas, MU, SD, X0)
    assert np.all(exact + want > 0.02)
    lk = _block_bounds(lw, 2000)                                # [2, 10]
    m, se = _mean_se(lk)
    assert np.all(np.abs(m - exact) <= 4.0 * se + 2e-4), (m, exact, se)
    assert np.all(exact - m < 0.05 * (exact + want))


# =============================================================================================
# (d) Small random networks: E[L_1] = calc_bpd's total_bpd, = -vdm_losses' loss.
# =============================================================================================

def _mlp_params(seed, d_in, d_out, hidden=8, T=None):
  rng = np.random.default_rng(seed)
  p = {"w1": 0.7 * rng.standard_normal((d_in, hidden)),
       "w2": 0.3 * rng.standard_normal((hidden, d_out)),
       "b2": 0.1 * rng.standard_normal(d_out)}
  if T is not None:
    p["emb"] = 0.5 * rng.standard_normal((T, hidden))
  return jax.tree_util.tree_map(jnp.asarray, p)


def _ddpm_net(params, x, t):
  n = x.shape[0]
  h = jnp.tanh(x.reshape(n, -1) @ params["w1"] + params["emb"][t])
  out = h @ params["w2"] + params["b2"]
  return out.reshape(x.shape[:-1] + (-1,))


@pytest.mark.parametrize("mean_type,var_type,num_levels",
                         [("eps", "learned_range", 17), ("x0", "fixed_small", None)])
def test_ddpm_elbo_matches_calc_bpd_random_network(mean_type, var_type, num_levels):
  with jax.enable_x64():
    T = 5
    diff = GaussianDiffusion(get_beta_schedule("linear", T, beta_start=1e-2, beta_end=0.5),
                             mean_type, var_type, "kl", num_levels=num_levels)
    shape = (2, 2, 1)                                           # NHWC, D = 4
    c_out = 2 if diff.learns_variance else 1
    params = _mlp_params(0, 4, 4 * c_out, T=T)
    rng = np.random.default_rng(1)
    if num_levels is None:
      ex = rng.standard_normal((2,) + shape) * 0.5
    else:
      ex = 2.0 * rng.integers(0, num_levels, (2,) + shape) / (num_levels - 1) - 1.0
    N = 4000
    x = jnp.asarray(np.repeat(ex, N, axis=0))                   # many draws of each example
    iw = IW.ddpm_iw_bound(diff, _ddpm_net, params, x, jax.random.PRNGKey(0), 1)
    ref = diff.calc_bpd(_ddpm_net, params, x, jax.random.PRNGKey(1))
    assert np.all(np.abs(np.asarray(iw["elbo_bpd"]) - np.asarray(iw["iw_bound_bpd"])) < 1e-12)
    np.testing.assert_allclose(np.asarray(iw["ess"]), 1.0, rtol=1e-12)
    for i in range(2):
      a, sa = _mean_se(np.asarray(iw["elbo_bpd"])[i * N:(i + 1) * N])
      b, sb = _mean_se(np.asarray(ref["total_bpd"])[i * N:(i + 1) * N])
      assert abs(a - b) <= 4.0 * math.hypot(sa, sb), (a, b, sa, sb)


def test_vdm_elbo_matches_vdm_losses_random_network():
  """Discrete decoder over K = 5 levels, a random denoiser: E[-log w] = E[vdm_losses' loss]."""
  with jax.enable_x64():
    T, K_levels, N = 4, 5, 4000
    gamma = S.FixedLinearGamma(-5.0, 3.0)
    params = _mlp_params(2, 3 + 1, 3)

    def den(p, z, g):
      h = jnp.tanh(jnp.concatenate([z, g[:, None] / 5.0], -1) @ p["w1"])
      return h @ p["w2"] + p["b2"]

    ex = 2.0 * np.random.default_rng(3).integers(0, K_levels, (2, 3)) / (K_levels - 1) - 1.0
    x = jnp.asarray(np.repeat(ex, N, axis=0))
    iw = IW.vdm_iw_bound(den, params, gamma.apply, {}, x, jax.random.PRNGKey(0), K_levels, T, 1)
    ref = jax.jit(lambda p, k: V.vdm_losses(den, p, gamma.apply, {}, x, k, K_levels, T=T,
                                            antithetic=False))(params, jax.random.PRNGKey(1))
    for i in range(2):
      a, sa = _mean_se(-np.asarray(iw["elbo"])[i * N:(i + 1) * N])
      b, sb = _mean_se(np.asarray(ref["loss"])[i * N:(i + 1) * N])
      assert abs(a - b) <= 4.0 * math.hypot(sa, sb), (a, b, sa, sb)
    # Discrete decoder: a bound on a probability mass, so L_K < 0 always.
    assert np.all(np.asarray(iw["L_K"]) < 0)


# =============================================================================================
# (e) Compilation and randomness.
# =============================================================================================

def test_new_params_do_not_recompile_and_chunking_does_not_change_results():
  with jax.enable_x64():
    T = 4
    diff = GaussianDiffusion(get_beta_schedule("linear", T, beta_start=1e-2, beta_end=0.5),
                             "eps", "learned", "kl", num_levels=9)
    x = jnp.asarray(2.0 * np.random.default_rng(0).integers(0, 9, (3, 2, 1)) / 8 - 1.0)
    key = jax.random.PRNGKey(5)
    p1, p2 = _mlp_params(0, 2, 4, T=T), _mlp_params(1, 2, 4, T=T)
    fresh = lambda: (lambda p, z, t: _ddpm_net(p, z, t))     # a new function object per call
    a = IW.ddpm_iw_bound(diff, fresh(), p1, x, key, 7, sample_chunk_size=3,
                         return_log_weights=True)
    n = IW._ddpm_iw_jit._cache_size()
    b = IW.ddpm_iw_bound(diff, fresh(), p2, x, key, 7, sample_chunk_size=3,
                         return_log_weights=True)
    equal = GaussianDiffusion(get_beta_schedule("linear", T, beta_start=1e-2, beta_end=0.5),
                              "eps", "learned", "kl", num_levels=9)
    IW.ddpm_iw_bound(equal, fresh(), p2, x, key, 7, sample_chunk_size=3,
                     return_log_weights=True)
    # New params, a fresh lambda with the same body and an equal diffusion object: no new program.
    assert IW._ddpm_iw_jit._cache_size() == n
    assert not np.allclose(np.asarray(a["log_weights"]), np.asarray(b["log_weights"]))
    # The chunk size does not change the draws (padding dropped), and the first K' trajectories
    # are those of a call with K'.
    d = IW.ddpm_iw_bound(diff, _ddpm_net, p1, x, key, 7, sample_chunk_size=None,
                         return_log_weights=True)
    e = IW.ddpm_iw_bound(diff, _ddpm_net, p1, x, key, 4, sample_chunk_size=2,
                         return_log_weights=True)
    np.testing.assert_allclose(np.asarray(d["log_weights"]), np.asarray(a["log_weights"]),
                               rtol=1e-12)
    np.testing.assert_allclose(np.asarray(e["log_weights"]),
                               np.asarray(a["log_weights"])[:, :4], rtol=1e-12)

    # VDM: new params / gamma params reuse the program.
    gamma = S.LearnedLinearGamma()
    gp = gamma.init(jax.random.PRNGKey(0), jnp.zeros(()))
    fresh_den = lambda: (lambda p, z, g: jnp.tanh(z @ p["w1"]) @ p["w2"])
    q1, q2 = _mlp_params(0, 2, 2), _mlp_params(1, 2, 2)
    xv = jnp.asarray(X0 / 2.0)
    r1 = IW.vdm_iw_bound(fresh_den(), q1, gamma.apply, gp, xv, key, None, 3, 5)
    n = IW._vdm_iw_jit._cache_size()
    gp2 = jax.tree_util.tree_map(lambda v: v + 0.1, gp)
    r2 = IW.vdm_iw_bound(fresh_den(), q2, gamma.apply, gp2, xv, key, None, 3, 5)
    assert not np.allclose(np.asarray(r1["L_K"]), np.asarray(r2["L_K"]))
    assert IW._vdm_iw_jit._cache_size() == n

    # Discrete: new tables reuse the program.
    dd = _discrete_setting()
    run = lambda dd_, seed: IW.discrete_iw_bound(dd_, O.random_reverse_params(dd, seed),
                                                 jnp.arange(4), key, 64, return_log_weights=True)
    w0 = run(dd, 0)["log_weights"]
    n = IW._discrete_iw_jit._cache_size()
    w1 = run(dd, 1)["log_weights"]
    run(_discrete_setting(), 2)
    assert IW._discrete_iw_jit._cache_size() == n
    assert not np.allclose(np.asarray(w0), np.asarray(w1))


# =============================================================================================
# (f) Argument checks name the argument.
# =============================================================================================

def test_bad_inputs_name_the_argument():
  diff = GaussianDiffusion(get_beta_schedule("linear", 3), "eps", "fixed_small", "kl",
                           num_levels=256)
  model_fn = lambda p, x, t: x
  x = jnp.zeros((2, 3))
  key = jax.random.PRNGKey(0)
  for bad, name in [(0, "num_samples"), (-3, "num_samples"), (2.0, "num_samples"),
                    (True, "num_samples")]:
    with pytest.raises(ValueError, match=name):
      IW.ddpm_iw_bound(diff, model_fn, None, x, key, bad)
  with pytest.raises(ValueError, match="sample_chunk_size"):
    IW.ddpm_iw_bound(diff, model_fn, None, x, key, 4, sample_chunk_size=0)
  with pytest.raises(ValueError, match="return_log_weights"):
    IW.ddpm_iw_bound(diff, model_fn, None, x, key, 4, return_log_weights="yes")
  with pytest.raises(ValueError, match="clip_denoised"):
    IW.ddpm_iw_bound(diff, model_fn, None, x, key, 4, clip_denoised=1)
  with pytest.raises(ValueError, match="x0"):
    IW.ddpm_iw_bound(diff, model_fn, None, x + 3.0, key, 4)
  with pytest.raises(ValueError, match="diffusion"):
    IW.ddpm_iw_bound("ddpm", model_fn, None, x, key, 4)
  with pytest.raises(ValueError, match="key"):
    IW.ddpm_iw_bound(diff, model_fn, None, x, None, 4)
  with pytest.raises(ValueError, match="model_output"):          # wrong channel count
    IW.ddpm_iw_bound(diff, lambda p, x, t: jnp.concatenate([x, x], -1), None, x, key, 2)

  gamma = S.FixedLinearGamma(-5.0, 3.0)
  den = lambda p, z, g: z
  for kwargs, name in [(dict(T=0), "T"), (dict(T=2.0), "T"), (dict(num_samples=0), "num_samples"),
                       (dict(num_levels=1), "num_levels"),
                       (dict(sample_chunk_size=-1), "sample_chunk_size")]:
    args = dict(num_levels=None, T=3, num_samples=2)
    args.update(kwargs)
    with pytest.raises(ValueError, match=name):
      IW.vdm_iw_bound(den, None, gamma.apply, {}, x, key, **args)
  with pytest.raises(ValueError, match="grid"):
    IW.vdm_iw_bound(den, None, gamma.apply, {}, x + 0.1, key, 5, 3, 2)
  with pytest.raises(ValueError, match="denoise_fn"):
    IW.vdm_iw_bound(lambda p, z, g: z[:, :1], None, gamma.apply, {}, x, key, None, 3, 2)

  dd = _discrete_setting()
  params = O.random_reverse_params(dd, 0)
  with pytest.raises(ValueError, match="x0_index"):
    IW.discrete_iw_bound(dd, params, jnp.array([0, 4]), key, 2)
  with pytest.raises(ValueError, match="x0_index"):
    IW.discrete_iw_bound(dd, params, jnp.array([0.5]), key, 2)
  with pytest.raises(ValueError, match="num_samples"):
    IW.discrete_iw_bound(dd, params, 0, key, 0)
  with pytest.raises(ValueError, match="dd"):
    IW.discrete_iw_bound("dd", params, 0, key, 2)
