"""Numerics of vdm.diffusion against mpmath references, and compilation counts of the entry
points that take a user function.

- The exact discretized Gaussian decoder (log Phi and log of bin probabilities) in float64, to
  1e-10 absolute in log-probability for standardized arguments z in [-40, 40], far tails and
  both outer bins included (mpmath at 50 digits).
- VDM's prior loss KL(q(z_1 | x) || N(0, 1)) and normal_kl in float32 against mpmath, in the
  regime where the textbook form -1 - lv + exp(lv) cancels.
- calc_bpd, p_sample_loop and vdm.sample compile once per (model function, configuration,
  shapes): a fresh lambda over the same network and new parameter values reuse the program;
  another network or configuration compiles its own (no stale program).
"""
import collections
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import mpmath as mp
import numpy as np
import pytest

from vdm.diffusion import gaussian as G
from vdm.diffusion import schedules as S
from vdm.diffusion import vdm as V
from vdm.diffusion.ddpm import GaussianDiffusion

mp.mp.dps = 50
ATOL_LOGP = 1e-10

# ------------------------------------------------------------------------------------------------
# mpmath references (50 digits).
# ------------------------------------------------------------------------------------------------


def _mp_log_cdf(z):
  """log Phi(z) for an mpf z."""
  return mp.log(mp.ncdf(z))


def _mp_log_interval(a, b):
  """log(Phi(b) - Phi(a)) for mpf a < b; right of 0 by symmetry, Phi(-a) - Phi(-b), so that the
  difference of two numbers near 1 never cancels."""
  if a > 0:
    return mp.log(mp.ncdf(-a) - mp.ncdf(-b))
  return mp.log(mp.ncdf(b) - mp.ncdf(a))


def _tail_grid():
  """z in [-40, 40]: a uniform grid, points around log_ndtr's switch to its tail series at
  z = -20 (float64) and -10 (float32), and a log-spaced left tail."""
  return np.unique(np.concatenate([
      np.linspace(-40.0, 40.0, 641),
      [-20.5, -20.0 - 1e-9, -20.0, -20.0 + 1e-9, -19.5, -10.0 - 1e-9, -10.0, 8.0, 8.0 + 1e-9],
      -np.logspace(0.0, math.log10(40.0), 41),
  ]))


# ------------------------------------------------------------------------------------------------
# 1. log Phi and the discretized decoder, float64.
# ------------------------------------------------------------------------------------------------


def test_log_normal_cdf_vs_mpmath():
  z = _tail_grid()
  ref = np.array([float(_mp_log_cdf(mp.mpf(float(v)))) for v in z])
  with jax.enable_x64():
    got = np.asarray(jax.jit(G.log_normal_cdf)(z))
  assert got.dtype == np.float64
  assert ref.min() < -800  # z = -40: log Phi = -804.6
  err = np.abs(got - ref)
  assert err.max() < ATOL_LOGP, (err.max(), z[np.argmax(err)])


@pytest.mark.parametrize("width", [1e-6, 1e-3, 0.0075, 0.05, 0.3, 1.0, 3.0, 10.0])
def test_log_normal_interval_vs_mpmath(width):
  # log(Phi(m + w/2) - Phi(m - w/2)) over midpoints m in [-40, 40]: every regime of
  # _log_normal_interval (narrow series, straddling 0, one side in a far tail).
  m = np.unique(np.concatenate([np.linspace(-40.0, 40.0, 321), [-0.5 * width, 0.5 * width]]))
  w = np.full_like(m, width)
  ref = []
  for mi in m:
    mm, hw = mp.mpf(float(mi)), mp.mpf(float(width)) / 2
    ref.append(float(_mp_log_interval(mm - hw, mm + hw)))
  ref = np.array(ref)
  with jax.enable_x64():
    got = np.asarray(jax.jit(G._log_normal_interval)(m, w))
  err = np.abs(got - ref)
  assert err.max() < ATOL_LOGP, (width, err.max(), m[np.argmax(err)])


def _mp_decoder(x, mean, log_scale, v, K):
  """log P(bin v) of N(mean, exp(log_scale)^2) discretized to K bins, from the float64 inputs."""
  h = mp.mpf(1) / (K - 1)
  s = mp.exp(mp.mpf(float(log_scale)))
  c = mp.mpf(float(x)) - mp.mpf(float(mean))
  if v == 0:
    return _mp_log_cdf((c + h) / s)
  if v == K - 1:
    return _mp_log_cdf(-(c - h) / s)
  return _mp_log_interval((c - h) / s, (c + h) / s)


@pytest.mark.parametrize("K", [2, 17, 256])
def test_discretized_decoder_bins_vs_mpmath(K):
  # Standardized offsets z = (x - mean) / sigma over [-40, 40] for the two outer bins, their
  # neighbours and a middle bin, at scales from much narrower than a bin to much wider.
  bins = sorted({0, 1, K // 2, K - 2, K - 1})
  zs = np.linspace(-40.0, 40.0, 81)
  rows = []
  for log_scale in (-9.0, -5.0, -2.0, 0.0, 1.5):
    for v in bins:
      x = 2.0 * v / (K - 1) - 1.0
      for z in zs:
        rows.append((x, x - z * math.exp(log_scale), log_scale, v))
  x, mean, log_scale, v = map(np.array, zip(*rows))
  ref = np.array([float(_mp_decoder(*r, K)) for r in rows])
  dgll = jax.jit(G.discretized_gaussian_log_likelihood, static_argnums=(3,))
  with jax.enable_x64():
    got = np.asarray(dgll(x, mean, log_scale, K))
  assert got.dtype == np.float64 and np.all(np.isfinite(got))
  assert ref.min() < -700  # far tails are exercised
  err = np.abs(got - ref)
  i = np.argmax(err)
  assert err.max() < ATOL_LOGP, (err.max(), rows[i])


# ------------------------------------------------------------------------------------------------
# 2. Cancellation-free KLs in float32.
# ------------------------------------------------------------------------------------------------


def _mp_klz(g, x):
  """KL(N(alpha x, sigma^2) || N(0, 1)) = 0.5 (sigma^2 - 1 - log sigma^2 + alpha^2 x^2), with
  sigma^2 = sigmoid(g), alpha^2 = sigmoid(-g)."""
  g, x = mp.mpf(float(g)), mp.mpf(float(x))
  s2 = 1 / (1 + mp.exp(-g))
  a2 = 1 / (1 + mp.exp(g))
  return (s2 - 1 - mp.log(s2) + a2 * x * x) / 2


def _klz_cases():
  """float32 gamma_1 in [-10, 20] (sigma_1 -> 1 as gamma_1 grows: lv = log sigma_1^2 -> 0) and
  x in {0, 1e-3, 0.05, 1} (x = 0 leaves only the variance part, where the cancellation is)."""
  g = np.linspace(-10.0, 20.0, 61).astype(np.float32)
  xs = np.array([0.0, 1e-3, 0.05, 1.0], np.float32)
  gg, xx = np.meshgrid(g, xs, indexing="ij")
  return gg.reshape(-1), xx.reshape(-1, 1)


def _max_rel_err(got, ref):
  return float(np.max(np.abs(np.asarray(got, np.float64) - ref) / np.abs(ref)))


KLZ_RTOL = 2e-6  # about 17 float32 ulps; measured 5e-7


def test_loss_klz_float32_vs_mpmath():
  g, x = _klz_cases()
  ref = np.array([float(_mp_klz(gi, xi)) for gi, xi in zip(g, x[:, 0])])
  got = jax.jit(V.loss_klz)(jnp.asarray(x), jnp.asarray(g))   # gamma_1 [B]
  assert got.dtype == jnp.float32
  assert _max_rel_err(got, ref) < KLZ_RTOL
  # A scalar gamma_1 takes the same path.
  for gi in (np.float32(-3.0), np.float32(7.5), np.float32(18.0)):
    sel = g == gi
    one = V.loss_klz(jnp.asarray(x[sel]), jnp.float32(gi))
    assert _max_rel_err(one, ref[sel]) < KLZ_RTOL
  # The textbook form 0.5 (-1 - lv + exp(lv) + alpha^2 x^2) fails this test in float32.
  gj = jnp.asarray(g)
  lv = jax.nn.log_sigmoid(gj)
  a2 = jax.nn.sigmoid(-gj)
  naive = 0.5 * (-1.0 - lv + jnp.exp(lv) + a2 * jnp.square(jnp.asarray(x[:, 0])))
  assert _max_rel_err(naive, ref) > 100 * KLZ_RTOL


def test_normal_kl_close_variances_float32_vs_mpmath():
  # KL between Gaussians of equal means and log-variances d apart: 0.5 (exp(d) - 1 - d).
  d = np.concatenate([-np.logspace(-6, 1, 29), np.logspace(-6, 1, 29)]).astype(np.float32)
  lv2 = np.float32(-2.0)
  lv1 = (lv2 + d).astype(np.float32)
  dd = [mp.mpf(float(a)) - mp.mpf(float(lv2)) for a in lv1]      # the d the inputs represent
  ref = np.array([float((mp.exp(v) - 1 - v) / 2) for v in dd])
  got = jax.jit(G.normal_kl)(0.0, jnp.asarray(lv1), 0.0, lv2)
  assert got.dtype == jnp.float32
  assert _max_rel_err(got, ref) < KLZ_RTOL
  naive = 0.5 * (-1.0 + lv2 - jnp.asarray(lv1) + jnp.exp(jnp.asarray(lv1) - lv2))
  assert _max_rel_err(naive, ref) > 100 * KLZ_RTOL
  with jax.enable_x64():
    ref64 = np.asarray(G.expm1mx(np.asarray(dd, np.float64)))
  np.testing.assert_allclose(ref64, 2 * ref, rtol=1e-15)


# ------------------------------------------------------------------------------------------------
# 3. One compilation per model function and shape.
# ------------------------------------------------------------------------------------------------

TRACES = collections.Counter()  # (width, scale) -> number of times the network was traced


class Net(nn.Module):
  """A tiny t-conditioned denoiser; counts its traces (its body runs once per trace)."""
  width: int = 8
  scale: float = 1.0
  out_channels: int = 2

  @nn.compact
  def __call__(self, x, t):
    TRACES[(self.width, self.scale)] += 1
    h = nn.tanh(nn.Dense(self.width)(x) + t[:, None].astype(x.dtype) / 10.0)
    return self.scale * nn.Dense(self.out_channels)(h)


def _diffusion(T=4, beta=0.1):
  return GaussianDiffusion(np.full(T, beta), "eps", "fixed_small", "kl", num_levels=5,
                           t_chunk_size=2)


def _x0(batch):
  v = np.arange(batch * 2).reshape(batch, 2) % 5
  return jnp.asarray(2.0 * v / 4 - 1.0, jnp.float32)


def _init(net, seed=0):
  """The network's parameters; the (eager) initialization's own trace is not counted."""
  params = net.init(jax.random.PRNGKey(seed), jnp.zeros((1, 2)), jnp.zeros((1,), jnp.int32))
  TRACES[(net.width, net.scale)] -= 1
  return params["params"]


def _apply_fn(net):
  """A fresh lambda over net at every call (one code object, so equal keys)."""
  return lambda p, x, t: net.apply({"params": p}, x, t)


def _reference_bpd(g, net, params, x0, key):
  """calc_bpd's computation under a fresh jax.jit of its implementation (a new cache)."""
  fn = lambda p, x, t: net.apply({"params": p}, x, t)
  return jax.jit(lambda p, x, k: g._calc_bpd_impl(fn, p, x, k, False))(params, x0, key)


def _assert_close(a, b):
  for k in b:
    np.testing.assert_allclose(np.asarray(a[k]), np.asarray(b[k]), rtol=1e-5, atol=1e-6)


def _cache_size(f):
  return f._cache_size() if hasattr(f, "_cache_size") else None


def test_calc_bpd_compiles_once_per_shape():
  from vdm.diffusion import ddpm
  g = _diffusion()
  net = Net(width=8, scale=1.0)
  params = _init(net)
  key = jax.random.PRNGKey(1)
  x0 = _x0(3)
  before = _cache_size(ddpm._calc_bpd_jit)
  totals = []
  for i in range(3):
    p_i = jax.tree_util.tree_map(lambda p: p * (1.0 + 0.5 * i), params)  # new values
    out = g.calc_bpd(lambda p, x, t: net.apply({"params": p}, x, t), p_i, x0, key)  # new lambda
    totals.append(np.asarray(out["total_bpd"]))
  assert TRACES[(8, 1.0)] == 1
  if before is not None:
    assert _cache_size(ddpm._calc_bpd_jit) == before + 1
  # The parameters are traced, not baked in: each value gave its own bound.
  assert not np.allclose(totals[0], totals[1]) and not np.allclose(totals[1], totals[2])
  # An equal diffusion object (another instance, same configuration) shares the program. (A
  # lambda written on another line is another code object, hence another key: compare fresh
  # lambdas of one code object.)
  g.calc_bpd(_apply_fn(net), params, x0, key)
  n = TRACES[(8, 1.0)]
  _diffusion().calc_bpd(_apply_fn(net), params, x0, key)
  assert TRACES[(8, 1.0)] == n
  # Another batch shape compiles once more, then is cached too.
  for _ in range(2):
    g.calc_bpd(_apply_fn(net), params, _x0(5), key)
  assert TRACES[(8, 1.0)] == n + 1
  # And the cached program computes the right thing for the last parameter values.
  _assert_close(out, _reference_bpd(g, net, p_i, x0, key))


def test_calc_bpd_other_network_or_config_recompiles():
  g = _diffusion()
  key = jax.random.PRNGKey(2)
  x0 = _x0(3)
  base_net = Net(width=12, scale=1.0)
  base_params = _init(base_net)
  base = g.calc_bpd(lambda p, x, t: base_net.apply({"params": p}, x, t), base_params, x0, key)
  assert TRACES[(12, 1.0)] == 1
  # Another width: its own program and its own result.
  wide = Net(width=24, scale=1.0)
  wide_params = _init(wide)
  out = g.calc_bpd(lambda p, x, t: wide.apply({"params": p}, x, t), wide_params, x0, key)
  assert TRACES[(24, 1.0)] == 1
  _assert_close(out, _reference_bpd(g, wide, wide_params, x0, key))
  # Same parameter shapes, another network (a different output scale): no stale program.
  scaled = Net(width=12, scale=3.0)
  out = g.calc_bpd(lambda p, x, t: scaled.apply({"params": p}, x, t), base_params, x0, key)
  assert TRACES[(12, 3.0)] == 1
  assert not np.allclose(np.asarray(out["total_bpd"]), np.asarray(base["total_bpd"]))
  _assert_close(out, _reference_bpd(g, scaled, base_params, x0, key))
  # Another diffusion configuration with the first network: recompiles, its own result.
  g2 = _diffusion(beta=0.2)
  n = TRACES[(12, 1.0)]
  out = g2.calc_bpd(lambda p, x, t: base_net.apply({"params": p}, x, t), base_params, x0, key)
  assert TRACES[(12, 1.0)] == n + 1
  _assert_close(out, _reference_bpd(g2, base_net, base_params, x0, key))
  # A closure over another constant is another function.
  for c in (1.0, 2.0):
    fn = lambda p, x, t: c * base_net.apply({"params": p}, x, t)
    out = g.calc_bpd(fn, base_params, x0, key)
    want = jax.jit(lambda p, x, k: g._calc_bpd_impl(fn, p, x, k, False))(base_params, x0, key)
    _assert_close(out, want)


def test_p_sample_loop_compiles_once():
  g = _diffusion()
  net = Net(width=10, scale=1.0)
  params = _init(net)
  outs = []
  for i in range(3):
    p_i = jax.tree_util.tree_map(lambda p: p * (1.0 + i), params)
    outs.append(np.asarray(g.p_sample_loop(lambda p, x, t: net.apply({"params": p}, x, t), p_i,
                                           (4, 2), jax.random.PRNGKey(0), dtype=jnp.float32)))
  assert TRACES[(10, 1.0)] == 1
  assert not np.allclose(outs[0], outs[2])
  other = Net(width=10, scale=2.0)
  s = g.p_sample_loop(lambda p, x, t: other.apply({"params": p}, x, t), params, (4, 2),
                      jax.random.PRNGKey(0), dtype=jnp.float32)
  assert TRACES[(10, 2.0)] == 1
  fn = lambda p, x, t: other.apply({"params": p}, x, t)
  want = jax.jit(lambda p, k: g._p_sample_loop_impl(fn, p, (4, 2), k, True, False, jnp.float32))(
      params, jax.random.PRNGKey(0))
  np.testing.assert_allclose(np.asarray(s), np.asarray(want), rtol=1e-5, atol=1e-6)


def test_vdm_sample_compiles_once():
  net = Net(width=6, scale=1.0, out_channels=2)
  params = _init(net)
  outs = []
  for i in range(3):
    p_i = jax.tree_util.tree_map(lambda p: p * (1.0 + i), params)
    # A fresh denoiser lambda and a fresh (equal) schedule module every call.
    outs.append(np.asarray(V.sample(lambda p, z, g: net.apply({"params": p}, z, g), p_i,
                                    S.FixedLinearGamma().apply, {}, (3, 2),
                                    jax.random.PRNGKey(0), T=4)))
  assert TRACES[(6, 1.0)] == 1
  assert not np.allclose(outs[0], outs[2])
  # Another schedule: recompiles and gives its own samples.
  other = S.FixedLinearGamma(gamma_min=-8.0, gamma_max=4.0)
  s = V.sample(lambda p, z, g: net.apply({"params": p}, z, g), params, other.apply, {}, (3, 2),
               jax.random.PRNGKey(0), T=4)
  assert TRACES[(6, 1.0)] == 2
  fn = lambda p, z, g: net.apply({"params": p}, z, g)
  want = jax.jit(lambda p, k: V._sample_impl(fn, p, other.apply, {}, (3, 2), k, 4, None,
                                             jnp.dtype(jnp.float32)))(params, jax.random.PRNGKey(0))
  np.testing.assert_allclose(np.asarray(s), np.asarray(want), rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------------------
# 4. One integer rule for every argument check in vdm.diffusion (vdm.checks).
# ------------------------------------------------------------------------------------------------


def _integer_entry_points():
  """(name, call) pairs: call(n) takes the integer argument `name` (n = 5 is valid for each)."""
  from vdm.diffusion import ddpm, oracles, timesteps
  key = jax.random.PRNGKey(0)
  betas = np.full(4, 0.1)
  return [
      ("num_timesteps", lambda n: S.get_beta_schedule("linear", n)),
      ("num_timesteps", lambda n: timesteps.init(n)),
      ("history", lambda n: timesteps.init(4, n)),
      ("batch_size", lambda n: timesteps.uniform_sample(key, 4, n)),
      ("num_levels", lambda n: G.discretized_gaussian_log_likelihood(0.0, 0.0, 0.0, n)),
      ("num_levels", lambda n: GaussianDiffusion(betas, "eps", "fixed_small", "kl",
                                                 num_levels=n)),
      ("t_chunk_size", lambda n: GaussianDiffusion(betas, "eps", "fixed_small", "kl",
                                                   t_chunk_size=n)),
      ("num_levels", lambda n: ddpm.rate_distortion(
          {"prior_bpd": np.zeros(1), "vb": np.zeros((1, 2)), "xstart_mse": np.zeros((1, 2))}, n)),
      ("num_levels", V.check_num_levels),
      ("T", V.check_num_steps),
      ("num_dims", lambda n: V.losses_to_bpd({"loss": jnp.ones(2)}, n)),
      ("num_categories", lambda n: oracles.uniform_transition_matrices([0.1], n)),
      ("num_vars", lambda n: oracles.DiscreteDiffusion(n, 2, (0.1,))),
      ("n_features", lambda n: S.LearnedMonotoneGamma(n_features=n).init(key, 0.5)),
  ]


@pytest.mark.parametrize("index", range(14))
def test_integer_arguments_one_rule(index):
  entries = _integer_entry_points()
  assert len(entries) == 14
  name, call = entries[index]
  for ok in (5, np.int32(5), np.int64(5)):
    call(ok)
  for bad in (True, 5.0, np.float32(5.0), "5"):
    with pytest.raises(ValueError, match=f"{name} must be"):
      call(bad)
