"""vdm.elbo.iwae_bound: importance-weighted (IWAE) and Renyi bounds from samples of q(h|x).

(a) q = the exact posterior: every weight is p(x), so L_K = L_alpha = ELBO_K = exact log p(x)
    for every K and every draw (float64, 1e-9); and `sample_q` of every q family of
    vdm.elbo.models draws h with probability exp(log_q);
(b) with an approximate amortized q, E[L_1] = E[ELBO_K] = the exact (enumerated) ELBO;
(c) E[L_K] increases with K towards the exact log p(x) and never exceeds it;
(d) L_alpha (Renyi): ELBO_K <= L_alpha <= L_K per draw, non-increasing in alpha, L_0 = L_K
    bitwise and L_alpha -> ELBO_K as alpha -> 1;
(e) every output equals a NumPy reference on the same documented draws, whatever chunk_size
    is; K = 10**4 streams in chunks; the bound is differentiable in params;
(f) new params values, keys and fresh lambdas reuse the compiled program;
(g) bad arguments are ValueErrors that name the argument.
Statistical checks use fixed keys and 4-standard-error margins.
"""
import collections
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import logsumexp

from vdm import elbo as E
from vdm.elbo import iwae as IW
from vdm.elbo import models as M

# One model per kind of sampler: factorized Bernoulli encoder q and enumerated exact posterior
# (SBN; the VAE inherits both), categorical encoder q and closed-form categorical posterior
# (a mixture; the Gaussian mixture inherits both), closed-form factorized Bernoulli posterior
# (RBM).
SMALL_MODELS = {
    "sbn": M.SigmoidBeliefNet(num_latents=4, data_dim=6, encoder_hidden=(8,)),
    "bernoulli_mixture": M.BernoulliMixture(num_components=3, data_dim=5, encoder_hidden=(8,)),
    "rbm": M.RBM(num_latents=3, data_dim=5, encoder_hidden=(8,)),
}

# Compilation dominates the run time of these tests (each (model, K, chunk_size, alpha, shape)
# is one program), so setups and repeated draws are cached and shared between tests.


@functools.lru_cache(maxsize=None)
def _setup(name, seed=0, n=3):
  """(model, params, q_params from the encoder, binary xs [n, D]) in float64."""
  with jax.enable_x64():
    model = SMALL_MODELS[name]
    params, q_params = model.init(jax.random.PRNGKey(seed), jnp.float64)
    xs = np.random.default_rng(seed + 100).integers(0, 2, size=(n, model.data_dim))
    return model, params, q_params, jnp.asarray(xs, jnp.float64)


@functools.lru_cache(maxsize=None)
def _exact(name, seed=0, n=3):
  """Exact (log p(x), ELBO) [n] of the encoder q by enumeration (vdm.elbo.bound_report)."""
  with jax.enable_x64():
    model, params, q_params, xs = _setup(name, seed, n)
    rep = M.bounds(model, params, q_params, xs)
    return np.asarray(rep["log_evidence"]), np.asarray(rep["elbo"])


@functools.lru_cache(maxsize=None)
def _replicates(name, seed, num_samples, reps, key_seed):
  """iwae_bounds of the encoder q on xs tiled reps times: each output [reps, B] of
  independent draws (an example's key is folded in from its position in the batch)."""
  with jax.enable_x64():
    model, params, q_params, xs = _setup(name, seed)
    out = M.iwae_bounds(model, params, q_params, jnp.tile(xs, (reps, 1)),
                        jax.random.PRNGKey(key_seed), num_samples)
    return {k: np.asarray(v).reshape(reps, xs.shape[0]) for k, v in out.items()}


# (a) ------------------------------------------------------------------------------------------


# (K, chunk_size, alpha) per model: one program each; together K = 1, a partial last chunk,
# alpha = 0 (L_K) and alpha > 0 (L_alpha and, in `iwae`, L_K), an enumerated and a closed-form
# posterior sampler. Every sampler of SMALL_MODELS is checked against its log_q in the next
# test.
EXACT_RUNS = {"sbn": (37, 16, 0.0), "bernoulli_mixture": (1, None, 0.5)}


@pytest.mark.parametrize("name", list(EXACT_RUNS))
def test_exact_posterior_q_gives_exact_log_px_for_every_k_and_draw(name):
  """Against log p(x) from the model's log_marginal (closed form for the mixtures and the RBM);
  three keys, and each example twice in the batch."""
  with jax.enable_x64():
    model, params, _, xs = _setup(name)
    q_exact = model.exact_posterior_q(params)
    log_px = np.asarray(jax.jit(jax.vmap(lambda x: model.log_marginal(params, x)))(xs))
    xs2 = jnp.tile(xs, (2, 1))
    k, chunk, alpha = EXACT_RUNS[name]
    for seed in range(3):
      out = M.iwae_bounds(model, params, q_exact, xs2, jax.random.PRNGKey(seed), k,
                          chunk_size=chunk, alpha=alpha)
      for key in ("bound", "iwae", "elbo"):
        assert out[key].dtype == jnp.float64
        np.testing.assert_allclose(out[key], np.tile(log_px, 2), rtol=0, atol=1e-9,
                                   err_msg=f"{key}, K={k}")
      np.testing.assert_allclose(out["log_weight_var"], 0.0, atol=1e-18)
      np.testing.assert_allclose(out["ess"], k, rtol=1e-9)


@pytest.mark.parametrize("name", list(SMALL_MODELS))
def test_sample_q_draws_each_state_with_probability_exp_log_q(name):
  """Both q families (encoder and exact): empirical frequencies of N draws for one x against
  exp(log_q) over every state, within 4.5 standard errors."""
  with jax.enable_x64():
    model, params, q_params, xs = _setup(name)
    x = xs[0]
    space = model.state_space()
    states = space.states_from_index(jnp.arange(space.num_states, dtype=jnp.int32))
    n = 40000
    keys = jax.random.split(jax.random.PRNGKey(5), n)

    @jax.jit
    def probs_and_draws(q_params, q_exact):
      out = []
      for q in (q_params, q_exact):
        out.append((jnp.exp(jax.vmap(lambda h: model.log_q(q, x, h))(states)),
                    jax.vmap(lambda k: model.sample_q(q, x, k))(keys)))
      return out

    weights = model.num_categories ** np.arange(model.num_latents - 1, -1, -1)
    for q, hs in probs_and_draws(q_params, model.exact_posterior_q(params)):
      q = np.asarray(q)
      np.testing.assert_allclose(q.sum(), 1.0, atol=1e-12)
      assert hs.dtype == jnp.int32 and hs.shape == (n, model.num_latents)
      freq = np.bincount(np.asarray(hs) @ weights, minlength=space.num_states) / n
      se = np.sqrt(q * (1 - q) / n)
      assert np.all(np.abs(freq - q) <= 4.5 * se + 1e-4), (freq, q)


# (b) ------------------------------------------------------------------------------------------


def test_mean_of_l1_and_of_elbo_estimate_is_the_exact_elbo():
  log_px, exact_elbo = _exact("sbn", 3)
  assert np.all(log_px - exact_elbo > 0.05)  # an approximate q: a visible gap
  reps = 4000
  l1 = _replicates("sbn", 3, 1, reps, 0)
  np.testing.assert_array_equal(l1["bound"], l1["elbo"])   # K = 1: L_1 = log w_1
  mean, se = l1["bound"].mean(0), l1["bound"].std(0, ddof=1) / np.sqrt(reps)
  assert np.all(np.abs(mean - exact_elbo) <= 4 * se), (mean, exact_elbo, se)
  # The `elbo` output at K = 10 (the draws of the next test).
  l10 = _replicates("sbn", 3, 10, 400, 10)
  mean, se = l10["elbo"].mean(0), l10["elbo"].std(0, ddof=1) / np.sqrt(400)
  assert np.all(np.abs(mean - exact_elbo) <= 4 * se), (mean, exact_elbo, se)


# (c) ------------------------------------------------------------------------------------------


def test_expected_bound_increases_with_k_towards_log_px():
  log_px, exact_elbo = _exact("sbn", 3)
  means, ses = [], []
  for k, reps, key_seed in ((1, 4000, 0), (10, 400, 10), (100, 400, 11), (1000, 100, 12)):
    out = _replicates("sbn", 3, k, reps, key_seed)
    means.append(out["bound"].mean(0))
    ses.append(out["bound"].std(0, ddof=1) / np.sqrt(reps))
    assert np.all(means[-1] <= log_px + 4 * ses[-1]), (k, means[-1], log_px)
  means, ses = np.array(means), np.array(ses)
  # Strictly above the ELBO at K = 10, non-decreasing after (within 4 SE of the difference).
  assert np.all(means[1] - means[0] > 4 * np.hypot(ses[0], ses[1])), means
  for a in range(3):
    assert np.all(means[a + 1] - means[a] >= -4 * np.hypot(ses[a], ses[a + 1])), means
  assert np.all(np.abs(means[3] - log_px) <= 4 * ses[3] + 1e-3), (means[3], log_px, ses[3])
  assert np.all(log_px - means[3] < 0.1 * (log_px - exact_elbo))


# (d) ------------------------------------------------------------------------------------------

K_REF = 60


def test_renyi_bound_lies_between_elbo_and_iwae_and_decreases_in_alpha():
  with jax.enable_x64():
    model, params, q_params, xs = _setup("sbn", 6)
    alphas = (0.0, 0.5, 1 - 1e-4)
    per_key = []
    for seed in range(4):
      outs = [M.iwae_bounds(model, params, q_params, xs, jax.random.PRNGKey(seed), K_REF,
                            chunk_size=7, alpha=a) for a in alphas]
      outs = [{n: np.asarray(v) for n, v in o.items()} for o in outs]
      for o in outs[1:]:  # the same draws for every alpha: the same IWAE and ELBO estimates
        np.testing.assert_array_equal(o["iwae"], outs[0]["iwae"])
        np.testing.assert_array_equal(o["elbo"], outs[0]["elbo"])
      # alpha = 0 is IWAE, bitwise (within a call and across programs).
      np.testing.assert_array_equal(outs[0]["bound"], outs[0]["iwae"])
      np.testing.assert_array_equal(outs[0]["bound"], outs[1]["iwae"])
      bounds = np.array([o["bound"] for o in outs])                          # [alphas, B]
      iwae, elbo = outs[0]["iwae"], outs[0]["elbo"]
      assert np.all(np.diff(bounds, axis=0) <= 1e-12), bounds
      assert np.all(bounds <= iwae + 1e-12) and np.all(bounds >= elbo - 1e-12)
      assert np.all(iwae - elbo > 0.01)
      # alpha -> 1: log M_p = mean + p var / 2 + O(p^2), the power mean of order p = 1 - alpha.
      np.testing.assert_allclose(bounds[-1] - elbo, 1e-4 * outs[0]["log_weight_var"] / 2,
                                 rtol=0.02)
      per_key.append(bounds.mean(axis=1))
    # So on average over keys, too.
    assert np.all(np.diff(np.mean(per_key, axis=0)) < 0), per_key


# (e) ------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _reference_log_weights(seed, key_seed, k):
  """log w [B, K] of the documented draws: sample k of example b with fold_in(fold_in(key, b),
  k), each evaluated on its own (no chunks, no streaming)."""
  with jax.enable_x64():
    model, params, q_params, xs = _setup("sbn", seed)
    key = jax.random.PRNGKey(key_seed)

    def log_w(b, j):
      x = xs[b]
      h = model.sample_q(q_params, x, jax.random.fold_in(jax.random.fold_in(key, b), j))
      return model.log_joint(params, x, h) - model.log_q(q_params, x, h)
    return np.asarray(jax.jit(jax.vmap(jax.vmap(log_w, (None, 0)), (0, None)))(
        jnp.arange(xs.shape[0]), jnp.arange(k)))


def _reference(seed, key_seed, k, alpha):
  """The outputs from the reference log weights by NumPy/SciPy formulas (2)-(4)."""
  lw = _reference_log_weights(seed, key_seed, k)
  p = 1.0 - alpha
  return {"iwae": logsumexp(lw, axis=1) - np.log(k),
          "bound": (logsumexp(p * lw, axis=1) - np.log(k)) / p,
          "elbo": lw.mean(1), "log_weight_var": lw.var(1),
          "ess": np.exp(2 * logsumexp(lw, axis=1) - logsumexp(2 * lw, axis=1))}


@pytest.mark.parametrize("alpha", [0.0, 0.5])
def test_outputs_equal_a_reference_for_any_chunk_size(alpha):
  """chunk_size None (= K), K and 1000 (one chunk: one program) and 7 (a partial last chunk).

  The reference draws sample k of example b with fold_in(fold_in(key, b), k), as documented:
  an example's draws depend on its position b, not on the batch size or the chunk size.
  """
  with jax.enable_x64():
    model, params, q_params, xs = _setup("sbn", 6)
    key = jax.random.PRNGKey(11)
    want = _reference(6, 11, K_REF, alpha)
    for chunk in ((None, K_REF, 1000, 7) if alpha == 0 else (7,)):
      got = M.iwae_bounds(model, params, q_params, xs, key, K_REF, chunk_size=chunk,
                          alpha=alpha)
      assert set(got) == {"bound", "iwae", "elbo", "log_weight_var", "ess"}
      for name, value in want.items():
        assert got[name].shape == (xs.shape[0],)
        np.testing.assert_allclose(got[name], value, rtol=1e-12, atol=1e-12,
                                   err_msg=f"{name}, chunk_size={chunk}")


def test_ten_thousand_samples_stream_in_chunks():
  with jax.enable_x64():
    model, params, q_params, xs = _setup("sbn", 3)
    log_px, _ = _exact("sbn", 3)
    out = M.iwae_bounds(model, params, q_params, xs, jax.random.PRNGKey(0), 10_000,
                        chunk_size=500)
    assert all(np.all(np.isfinite(np.asarray(v))) for v in out.values())
    bound = np.asarray(out["bound"])
    assert np.all(bound <= log_px + 0.02) and np.all(np.abs(bound - log_px) < 0.05)
    assert np.all((np.asarray(out["ess"]) >= 1) & (np.asarray(out["ess"]) <= 10_000))


def test_params_are_differentiable_and_the_bound_runs_inside_jit():
  with jax.enable_x64():
    model, params, q_params, xs = _setup("sbn", 6)
    key = jax.random.PRNGKey(4)
    total = lambda p: jnp.sum(M.iwae_bounds(model, p, q_params, xs, key, K_REF)["bound"])
    grad = jax.jit(jax.grad(total))(params)
    eps = 1e-6
    bump = jnp.zeros_like(params["W"]).at[1, 2].set(eps)
    shift = lambda s: {**params, "W": params["W"] + s * bump}
    fd = (total(shift(1.0)) - total(shift(-1.0))) / (2 * eps)
    np.testing.assert_allclose(grad["W"][1, 2], fd, rtol=1e-6, atol=1e-8)


# (f) ------------------------------------------------------------------------------------------

D, H = 5, 3
TRACES = collections.Counter()


def _log_joint(params, x, h):
  TRACES["log_joint"] += 1
  p = params[0]
  hf = h.astype(x.dtype)
  logits = p["W"] @ hf + p["b"]
  prior = jnp.sum(hf * jax.nn.log_sigmoid(p["c"]) + (1 - hf) * jax.nn.log_sigmoid(-p["c"]))
  return prior + jnp.sum(x * jax.nn.log_sigmoid(logits) + (1 - x) * jax.nn.log_sigmoid(-logits))


def _q_logits(params, x):
  return params[1]["U"] @ x + params[1]["d"]


def _log_q(params, x, h):
  a = _q_logits(params, x)
  hf = h.astype(x.dtype)
  return jnp.sum(hf * jax.nn.log_sigmoid(a) + (1 - hf) * jax.nn.log_sigmoid(-a))


def _sample_q(params, x, key):
  return jax.random.bernoulli(key, jax.nn.sigmoid(_q_logits(params, x))).astype(jnp.int32)


def _params(scale):
  rng = np.random.default_rng(0)
  model = {"W": rng.normal(size=(D, H)), "b": rng.normal(size=D), "c": rng.normal(size=H)}
  q = {"U": rng.normal(size=(H, D)), "d": rng.normal(size=H)}
  cast = lambda t: {k: jnp.asarray(scale * v, jnp.float32) for k, v in t.items()}
  return cast(model), cast(q)


def test_new_params_keys_and_fresh_lambdas_do_not_recompile():
  """Three calls, each with new parameter values, a new key and fresh lambdas: the first
  compiles one program (these functions are used nowhere else), the others reuse it. Typed
  keys (jax.random.key) work as raw uint32 keys do."""
  xs = jnp.asarray(np.random.default_rng(1).integers(0, 2, size=(7, D)), jnp.float32)
  before = IW._iwae_jit._cache_size()
  sizes, traces, outs = [], [], []
  for i in range(3):
    params = _params(1.0 + 0.5 * i)
    out = E.iwae_bound(lambda p, x, h: _log_joint(p, x, h), lambda p, x, h: _log_q(p, x, h),
                       lambda p, x, k: _sample_q(p, x, k), xs, jax.random.key(i), 13,
                       params=params, chunk_size=4, alpha=0.5)
    outs.append(np.asarray(out["bound"]))
    sizes.append(IW._iwae_jit._cache_size())
    traces.append(TRACES["log_joint"])
    assert np.all(np.isfinite(outs[-1])) and np.all(outs[-1] <= np.asarray(out["iwae"]))
  assert sizes == [before + 1] * 3, (before, sizes)
  assert traces[1] == traces[0] and traces[2] == traces[0], traces
  assert not np.allclose(outs[0], outs[1]) and not np.allclose(outs[1], outs[2])


# (g) ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("change,match", [
    ({"num_samples": 0}, "num_samples"),
    ({"num_samples": 2.0}, "num_samples"),
    ({"num_samples": True}, "num_samples"),
    ({"chunk_size": 0}, "chunk_size"),
    ({"chunk_size": 1.5}, "chunk_size"),
    ({"alpha": 1.0}, "alpha"),
    ({"alpha": -0.1}, "alpha"),
    ({"alpha": float("nan")}, "alpha"),
    ({"alpha": "0"}, "alpha"),
    ({"log_joint": None}, "log_joint"),
    ({"log_q": 3}, "log_q"),
    ({"sample_q": "q"}, "sample_q"),
    ({"key": 0}, "key"),
    ({"key": np.zeros(3, np.uint32)}, "key"),
    ({"xs": 1.0}, "xs"),
    ({"xs": np.zeros((0, D), np.float32)}, "xs"),
])
def test_bad_arguments_name_the_argument(change, match):
  args = dict(log_joint=_log_joint, log_q=_log_q, sample_q=_sample_q,
              xs=np.zeros((2, D), np.float32), key=jax.random.PRNGKey(0), num_samples=4,
              params=_params(1.0), chunk_size=None, alpha=0.0)
  args.update(change)
  with pytest.raises(ValueError, match=match):
    E.iwae_bound(**args)


def test_a_non_scalar_log_joint_is_named():
  bad = lambda p, x, h: jnp.zeros(2)
  with pytest.raises(ValueError, match="log_joint"):
    E.iwae_bound(bad, _log_q, _sample_q, np.zeros((2, D), np.float32), jax.random.PRNGKey(0),
                 4, params=_params(1.0))
