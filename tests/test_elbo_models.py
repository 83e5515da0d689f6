"""vdm.elbo.models: every enumerable model against a NumPy brute force written from its definition.

The references below re-derive each model's log p(x, h) and q(h | x) in float64 NumPy/SciPy from
the textbook formulas (and a NumPy forward pass of the Flax MLPs), enumerate the states with
itertools.product, and never call the library.
"""
import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy import stats
from scipy.special import log_softmax, logsumexp

from vdm import elbo as E
from vdm.elbo import models as M


@pytest.fixture(autouse=True)
def _x64():
  with jax.enable_x64():
    yield


# ----------------------------------------------------------------------------------------------
# NumPy references
# ----------------------------------------------------------------------------------------------


def np_tree(tree):
  return jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), tree)


def log_sigmoid(z):
  return -np.logaddexp(0.0, -z)


def bern_logpmf(y, logits):
  return y * log_sigmoid(logits) + (1.0 - y) * log_sigmoid(-logits)


def np_mlp(flax_params, x):
  """tanh MLP forward pass from the Flax param dict: Dense_0 .. Dense_n, tanh between."""
  layers = flax_params["params"]
  names = sorted(layers, key=lambda s: int(s.split("_")[1]))
  for i, name in enumerate(names):
    x = x @ layers[name]["kernel"] + layers[name]["bias"]
    if i < len(names) - 1:
      x = np.tanh(x)
  return x


def ref_log_joint(model, p, x, h):
  """log p(x, h) from the model definition; h a tuple of ints."""
  if isinstance(model, M.BernoulliMixture):
    k = h[0]
    return log_softmax(p["mixture_logits"])[k] + np.sum(bern_logpmf(x, p["logits"][k]))
  if isinstance(model, M.GaussianMixture):
    k = h[0]
    return (log_softmax(p["mixture_logits"])[k]
            + np.sum(stats.norm.logpdf(x, p["means"][k], np.exp(p["log_scales"][k]))))
  hv = np.asarray(h, np.float64)
  if isinstance(model, M.SigmoidBeliefNet):
    return (np.sum(bern_logpmf(hv, p["prior_logits"]))
            + np.sum(bern_logpmf(x, p["bias"] + hv @ p["W"])))
  if isinstance(model, M.RBM):
    return -ref_rbm_energy(p, x, hv) - ref_rbm_log_z(p)
  if isinstance(model, M.BinaryLatentVAE):
    out = np_mlp(p["decoder"], hv)
    prior = np.sum(bern_logpmf(hv, p["prior_logits"]))
    if model.likelihood == "bernoulli":
      return prior + np.sum(bern_logpmf(x, out))
    d = model.data_dim
    return prior + np.sum(stats.norm.logpdf(x, out[:d], np.exp(out[d:])))
  raise TypeError(model)


def ref_rbm_energy(p, v, h):
  return -(v @ p["visible_bias"] + h @ p["hidden_bias"] + v @ p["W"] @ h)


def ref_rbm_log_z(p):
  """log Z by the double sum over every (v, h) pair."""
  d, k = p["W"].shape
  energies = [ref_rbm_energy(p, np.array(v, float), np.array(h, float))
              for v in itertools.product([0, 1], repeat=d)
              for h in itertools.product([0, 1], repeat=k)]
  return logsumexp(-np.array(energies))


def ref_states(model):
  return list(itertools.product(range(model.num_categories), repeat=model.num_latents))


def ref_log_q(model, qp, x, h):
  """log q(h|x) of the amortized encoder q."""
  logits = np_mlp(qp["encoder"], x)
  if isinstance(model, (M.BernoulliMixture, M.GaussianMixture)):
    return log_softmax(logits)[h[0]]
  return np.sum(bern_logpmf(np.asarray(h, np.float64), logits))


def ref_bounds(model, p, qp, x):
  """(log p(x), ELBO, KL(q || p(h|x)), posterior [S]) by enumeration in NumPy."""
  states = ref_states(model)
  lj = np.array([ref_log_joint(model, p, x, h) for h in states])
  lq = np.array([ref_log_q(model, qp, x, h) for h in states])
  log_px = logsumexp(lj)
  q = np.exp(lq)
  log_post = lj - log_px
  return log_px, np.sum(q * (lj - lq)), np.sum(q * (lq - log_post)), np.exp(log_post)


# ----------------------------------------------------------------------------------------------
# Models under test (tiny) and their data
# ----------------------------------------------------------------------------------------------

MODELS = {
    "bernoulli_mixture": M.BernoulliMixture(num_components=3, data_dim=4, encoder_hidden=(5,)),
    "gaussian_mixture": M.GaussianMixture(num_components=3, data_dim=2, encoder_hidden=(5,)),
    "sbn": M.SigmoidBeliefNet(num_latents=3, data_dim=4, encoder_hidden=(5,)),
    "rbm": M.RBM(num_latents=3, data_dim=4, encoder_hidden=(5,)),
    "vae_bernoulli": M.BinaryLatentVAE(num_latents=3, data_dim=4, encoder_hidden=(5,),
                                       decoder_hidden=(6,)),
    "vae_gaussian": M.BinaryLatentVAE(num_latents=2, data_dim=2, likelihood="gaussian",
                                      encoder_hidden=(5,), decoder_hidden=(6,)),
}
NAMES = sorted(MODELS)


FD_EPS = 1e-5


def random_params(model, seed):
  """(params, q_params, xs) in float64 drawn with NumPy into the structure of model.init.

  jax.eval_shape gives the pytree structure without compiling anything (XLA compiles of the
  random-number code in init and sample would dominate this file's run time).
  """
  rng = np.random.default_rng(seed)
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.float64))
  params, q_params = jax.tree_util.tree_map(lambda s: 0.7 * rng.normal(size=s.shape), shapes)
  if isinstance(model, (M.GaussianMixture,)) or getattr(model, "likelihood", "") == "gaussian":
    xs = rng.normal(size=(5, model.data_dim))
  else:
    xs = rng.integers(0, 2, size=(5, model.data_dim)).astype(np.float64)
  return params, q_params, xs


@functools.lru_cache(maxsize=None)
def probe(name, seed=0):
  """Everything the per-model tests need, from ONE jitted call per model (XLA compiles are the
  cost of this file): bound reports for the amortized and the exact q, log_marginal, the exact
  q table over all states, and the ELBO gradient with central differences along one random
  direction in the model and one in the q parameters."""
  model = MODELS[name]
  states = jnp.asarray(ref_states(model), jnp.int32)
  params, q_params, xs = random_params(model, seed)
  rng = np.random.default_rng(seed + 1)
  directions = [jax.tree_util.tree_map(lambda a: rng.normal(size=a.shape), t)
                for t in (params, q_params)]

  @jax.jit
  def run(params, q_params, xs, directions):
    q_exact = model.exact_posterior_q(params)
    out = {"params": params, "q_params": q_params, "xs": xs,
           "rep": M._report(model, params, q_params, xs, None),
           "rep_exact": M._report(model, params, q_exact, xs, None),
           "log_marginal": jax.vmap(lambda x: model.log_marginal(params, x))(xs),
           "q_exact_table": jax.vmap(jax.vmap(lambda x, h: jnp.exp(model.log_q(q_exact, x, h)),
                                              (None, 0)), (0, None))(xs, states)}
    f = lambda p, q: M.mean_elbo(model, p, q, xs)
    grads = jax.grad(f, argnums=(0, 1))(params, q_params)
    # Central differences: f at (p + s u_p, q) and (p, q + s u_q) for s = +-eps, all four
    # evaluations as one vmapped call (one compiled copy of the ELBO).
    steps = jnp.array([[FD_EPS, 0.0], [-FD_EPS, 0.0], [0.0, FD_EPS], [0.0, -FD_EPS]])
    move = lambda tree, u, s: jax.tree_util.tree_map(lambda a, b: a + s * b, tree, u)
    values = jax.vmap(lambda s: f(move(params, directions[0], s[0]),
                                  move(q_params, directions[1], s[1])))(steps)
    for which in (0, 1):
      out[f"fd_{which}"] = (values[2 * which] - values[2 * which + 1]) / (2 * FD_EPS)
      out[f"grad_dot_{which}"] = sum(jnp.vdot(g, u) for g, u in zip(
          jax.tree_util.tree_leaves(grads[which]), jax.tree_util.tree_leaves(directions[which])))
    return out

  out = jax.device_get(run(params, q_params, xs, directions))
  return model, out


# ----------------------------------------------------------------------------------------------
# Tests
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_bounds_match_brute_force_and_identity(name):
  model, out = probe(name)
  rep, xs = out["rep"], out["xs"]
  ref = [ref_bounds(model, np_tree(out["params"]), np_tree(out["q_params"]), x) for x in xs]
  np.testing.assert_allclose(rep["log_evidence"], [r[0] for r in ref], rtol=0, atol=1e-9)
  np.testing.assert_allclose(rep["elbo"], [r[1] for r in ref], rtol=0, atol=1e-9)
  np.testing.assert_allclose(rep["kl"], [r[2] for r in ref], rtol=0, atol=1e-9)
  np.testing.assert_allclose(rep["q_mass"], 1.0, atol=1e-12)
  np.testing.assert_allclose(rep["log_evidence"] - rep["elbo"], rep["kl"], rtol=0, atol=1e-9)
  assert np.all(rep["elbo"] <= rep["log_evidence"] + 1e-12)
  assert np.max(rep["kl"]) > 1e-3  # a random q is not the posterior
  # Closed-form (mixtures; RBM through the free energy) or enumerated log p(x) agrees too.
  np.testing.assert_allclose(out["log_marginal"], [r[0] for r in ref], rtol=0, atol=1e-9)


@pytest.mark.parametrize("name", NAMES)
def test_gap_is_zero_for_the_exact_posterior_q(name):
  model, out = probe(name)
  rep = out["rep_exact"]
  np.testing.assert_allclose(rep["kl"], 0.0, atol=1e-9)
  np.testing.assert_allclose(rep["elbo"], rep["log_evidence"], rtol=0, atol=1e-9)
  np.testing.assert_allclose(rep["q_mass"], 1.0, atol=1e-12)
  # And q_exact(h|x) is the brute-force posterior p(h|x), state by state.
  p_np, q_np = np_tree(out["params"]), np_tree(out["q_params"])
  for x, q in zip(out["xs"], out["q_exact_table"]):
    np.testing.assert_allclose(q, ref_bounds(model, p_np, q_np, x)[3], rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("name", NAMES)
def test_elbo_gradient_matches_central_differences(name):
  _, out = probe(name)
  for which in (0, 1):  # 0: model parameters, 1: q parameters
    fd, analytic = float(out[f"fd_{which}"]), float(out[f"grad_dot_{which}"])
    assert abs(fd) > 1e-4, "direction with no change: the test would be vacuous"
    assert abs(analytic - fd) <= 1e-6 * max(1.0, abs(fd)), (which, analytic, fd)


def test_rbm_partition_visible_equals_hidden_equals_all_pairs():
  for d, h in ((4, 3), (3, 5)):
    model = M.RBM(num_latents=h, data_dim=d)
    rng = np.random.default_rng(d)
    params = {"W": rng.normal(size=(d, h)), "visible_bias": rng.normal(size=d),
              "hidden_bias": rng.normal(size=h)}
    visible = jnp.asarray(list(itertools.product([0.0, 1.0], repeat=d)))

    @jax.jit
    def run(params):
      log_z = {f"{layer}/chunk={chunk}": model.log_partition(params, layer=layer,
                                                             chunk_size=chunk)
               for layer in ("hidden", "visible", "auto") for chunk in (None, 3)}
      return log_z, jax.vmap(lambda v: model.free_energy(params, v))(visible)

    log_z, free = jax.device_get(run(params))
    p = np_tree(params)
    brute = ref_rbm_log_z(p)
    for key, got in log_z.items():
      assert abs(got - brute) < 1e-10, (d, h, key, got, brute)
    # Free energy: -F(v) = log sum_h exp(-E(v, h)).
    ref = [logsumexp([-ref_rbm_energy(p, v, np.array(hh, float))
                      for hh in itertools.product([0, 1], repeat=h)]) for v in np.asarray(visible)]
    np.testing.assert_allclose(-free, ref, rtol=0, atol=1e-10)


@pytest.mark.parametrize("name", NAMES)
def test_fit_raises_the_bound(name):
  model, out = probe(name)
  result = M.fit(model, out["params"], out["q_params"], out["xs"], num_steps=30,
                 optimizer=optax.adam(0.05))
  history = result.elbo_history
  assert history.shape == (31,)
  assert np.all(np.isfinite(history))
  assert abs(history[0] - np.mean(out["rep"]["elbo"])) < 1e-9  # starts at the initial ELBO
  assert history[-1] > history[0] + 0.2, history


def _perturbed(tree, scale, seed):
  rng = np.random.default_rng(seed)
  return jax.tree_util.tree_map(lambda a: np.asarray(a) + scale * rng.normal(size=a.shape), tree)


@pytest.mark.parametrize("name", ["bernoulli_mixture", "gaussian_mixture"])
def test_variational_em_is_monotone_and_e_step_closes_the_gap(name):
  model, out = probe(name)
  start = _perturbed(out["params"], 1.0, seed=0)  # EM from elsewhere toward the data's params
  result = M.variational_em(model, start, out["xs"], num_iters=12)
  hist = result.elbo_history
  assert hist.shape == (25,)
  assert np.all(np.diff(hist) >= -1e-10), np.diff(hist)
  assert hist[-1] > hist[0] + 0.05
  # Entries 0, 2, 4, ... follow an E-step, where the ELBO is the mean log p(x) (NumPy).
  for i, p in ((0, start), (24, result.params)):
    p = np_tree(p)
    ref = np.mean([logsumexp([ref_log_joint(model, p, x, h) for h in ref_states(model)])
                   for x in out["xs"]])
    assert abs(hist[i] - ref) < 1e-9


@pytest.mark.parametrize("name", ["bernoulli_mixture", "gaussian_mixture"])
def test_m_step_is_the_argmax_of_the_expected_complete_log_likelihood(name):
  """No perturbation of the closed-form M-step raises sum_n sum_k r_nk log p(x_n, k)."""
  model, out = probe(name)
  xs = jnp.asarray(out["xs"])
  params = out["params"]
  noise = [_perturbed(jax.tree_util.tree_map(np.zeros_like, params), 1e-3, seed)
           for seed in range(5)]

  @jax.jit
  def run(params, noise):
    resp = model.responsibilities(params, xs)
    new = model.m_step(params, xs, resp)
    expected = lambda p: jnp.sum(resp * jax.vmap(lambda x: model.component_log_joint(p, x))(xs))
    moved = [expected(jax.tree_util.tree_map(jnp.add, new, u)) for u in noise]
    return expected(new), jnp.stack(moved)

  best, moved = run(params, noise)
  assert np.all(np.asarray(moved) <= float(best) + 1e-12), (best, moved)


@pytest.mark.parametrize("name", ["sbn", "gaussian_mixture"])
def test_jit_and_vmap_equal_a_python_loop(name):
  model, out = probe(name)
  rep = out["rep"]  # batch: bound_report (jit + vmap over examples)
  lj = functools.partial(model.log_joint, out["params"])
  lq = functools.partial(model.log_q, out["q_params"])
  states = model.state_space()
  one = jax.jit(lambda x: (E.log_evidence(lj, x, states), E.elbo(lj, lq, x, states),
                           E.kl_to_posterior(lj, lq, x, states)))
  for i, x in enumerate(out["xs"]):  # one example at a time, no vmap
    log_px, elbo, kl = one(x)
    assert abs(float(log_px) - rep["log_evidence"][i]) < 1e-12
    assert abs(float(elbo) - rep["elbo"][i]) < 1e-12
    assert abs(float(kl) - rep["kl"][i]) < 1e-12


def test_chunked_bounds_equal_unchunked():
  model, out = probe("sbn")
  chunked = M.bounds(model, out["params"], out["q_params"], out["xs"], chunk_size=3)
  for key in ("log_evidence", "elbo", "kl"):
    np.testing.assert_allclose(chunked[key], out["rep"][key], rtol=0, atol=1e-12)


def test_samples_follow_the_model():
  """Empirical frequencies of exact samples against brute-force probabilities."""
  n = 20000
  # Bernoulli mixture: component frequencies against softmax(mixture_logits).
  model = MODELS["bernoulli_mixture"]
  params = dict(probe("bernoulli_mixture")[1]["params"])
  params["mixture_logits"] = np.array([0.0, 1.0, -1.0])
  x, h = model.sample(jax.random.PRNGKey(1), params, n)
  assert x.shape == (n, model.data_dim) and h.shape == (n, 1) and h.dtype == jnp.int32
  freq = np.bincount(np.asarray(h[:, 0]), minlength=3) / n
  np.testing.assert_allclose(freq, np.exp(log_softmax([0.0, 1.0, -1.0])), atol=0.015)
  # RBM: visible frequencies against the brute-force marginal p(v).
  model = MODELS["rbm"]
  p = np_tree(probe("rbm")[1]["params"])
  v, h = model.sample(jax.random.PRNGKey(3), p, n)
  assert v.shape == (n, model.data_dim) and h.shape == (n, model.num_latents)
  log_z = ref_rbm_log_z(p)
  d, k = p["W"].shape
  probs = [np.exp(logsumexp([-ref_rbm_energy(p, np.array(vv, float), np.array(hh, float))
                             for hh in itertools.product([0, 1], repeat=k)]) - log_z)
           for vv in itertools.product([0, 1], repeat=d)]
  codes = np.asarray(v, int) @ (2 ** np.arange(d - 1, -1, -1))
  freq = np.bincount(codes, minlength=2**d) / n
  assert 0.5 * np.abs(freq - np.array(probs)).sum() < 0.03


def test_bad_input_is_a_clear_error():
  with pytest.raises(ValueError, match=r"likelihood must be one of \['bernoulli', 'gaussian'\]"):
    M.BinaryLatentVAE(num_latents=2, data_dim=3, likelihood="poisson")
  with pytest.raises(ValueError, match="num_latents must be an integer >= 1, got 0"):
    M.SigmoidBeliefNet(num_latents=0, data_dim=3)
  with pytest.raises(ValueError, match="num_components"):
    M.BernoulliMixture(num_components=2.5, data_dim=3)
  with pytest.raises(ValueError, match="encoder_hidden"):
    M.RBM(num_latents=2, data_dim=3, encoder_hidden=[8])
  model, out = probe("rbm")
  with pytest.raises(ValueError, match=r"layer must be one of \['auto', 'hidden', 'visible'\]"):
    model.log_partition(out["params"], layer="middle")
  with pytest.raises(ValueError, match=r"q_params must be a dict with exactly one key"):
    model.log_q({"decoder": {}}, out["xs"][0], np.zeros(model.num_latents, np.int32))
  big = M.SigmoidBeliefNet(num_latents=M.MAX_EXACT_Q_LATENTS + 1, data_dim=3)
  big_params = {"prior_logits": np.zeros(big.num_latents), "W": np.zeros((big.num_latents, 3)),
                "bias": np.zeros(3)}
  with pytest.raises(ValueError, match="exact posterior q enumerates"):
    big.log_q(big.exact_posterior_q(big_params), np.zeros(3), np.zeros(big.num_latents, np.int32))
  sbn, out = probe("sbn")
  with pytest.raises(ValueError, match="closed-form M-step"):
    M.variational_em(sbn, out["params"], out["xs"], 1)
  with pytest.raises(ValueError, match="num_steps must be an integer >= 1, got 0"):
    M.fit(sbn, out["params"], out["q_params"], out["xs"], 0, optax.sgd(0.1))
  with pytest.raises(ValueError, match="n must be an integer >= 1, got 0"):
    sbn.sample(jax.random.PRNGKey(0), out["params"], 0)


def test_softplus_helpers_match_scipy_values_and_gradients():
  from scipy.special import expit
  rng = np.random.default_rng(0)
  extremes = np.array([-800.0, -50.0, -1e-3, 0.0, 1e-3, 30.0, 800.0])
  x = np.concatenate([np.tile(extremes, (3, 1)), 10 * rng.normal(size=(3, 143))], axis=1)
  ref = np.logaddexp(0.0, x)                      # [3, 150]: three groups of 64 in the sum

  @jax.jit
  def run(x):
    return (M.softplus(x), M.sum_softplus(x), jax.grad(lambda z: jnp.sum(M.sum_softplus(z)))(x))

  elementwise, summed, grad = run(x)
  np.testing.assert_allclose(elementwise, ref, rtol=1e-15, atol=2e-16)
  np.testing.assert_allclose(summed, ref.sum(-1), rtol=1e-14, atol=1e-12)
  np.testing.assert_allclose(grad, expit(x), rtol=1e-12, atol=1e-15)


def test_float64_parameters_without_64_bit_mode_are_refused_not_truncated():
  """JAX truncates a requested float64 to float32 with only a warning, which would turn the
  1e-9 identities into 1e-6 ones silently: init refuses it, saying how to enable x64."""
  sbn = M.SigmoidBeliefNet(num_latents=2, data_dim=3)
  key = jax.random.PRNGKey(0)
  with jax.enable_x64(False):
    assert not jax.config.jax_enable_x64
    for init in (sbn.init, sbn.init_params, sbn.init_q):
      with pytest.raises(ValueError, match=r"dtype=float64 needs JAX's 64-bit mode.*enable_x64"):
        init(key, jnp.float64)
    with pytest.raises(ValueError, match=r"dtype must be a floating dtype .* got 'int32'"):
      sbn.init(key, "int32")
    params, q_params = sbn.init(key, "bfloat16")
    assert params["W"].dtype == jnp.bfloat16
  with jax.enable_x64():
    params, q_params = sbn.init(key, np.float64)
    leaves = jax.tree_util.tree_leaves((params, q_params))
    assert {leaf.dtype for leaf in leaves} == {np.dtype(np.float64)}
