"""vdm.elbo entry points with params as a traced argument: log_joint(params, x, h).

(1) the params form agrees with the two-argument (closure) form and with a NumPy brute force
    (logsumexp over all states), in float64, to 1e-9, and log p(x) - ELBO = KL;
(2) new parameter values and a fresh lambda every call compile once per entry point;
(3) the two-argument form still works, and a closure over new values is no stale program;
(4) bad arguments are ValueErrors that name the argument.
"""
import collections

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sbn_reference import brute_force_sbn
from vdm import elbo as E
from vdm.elbo import enumerate as EN

# A sigmoid belief net p(h) p(x|h) over H binary latents, D binary pixels, and a factorized
# q(h|x) = prod_j Bern(h_j; sigmoid(U x + d)_j). params = (model_params, q_params).
D, H = 4, 3
TRACES = collections.Counter()  # entry -> number of times _log_joint's body was traced


def _log_sigmoid(z):
  return -jnp.logaddexp(0.0, -z)


def _log_joint(params, x, h):
  """log p(x, h) = sum_j log Bern(h_j; sigmoid(c_j)) + sum_d log Bern(x_d; sigmoid(W h + b)_d)."""
  TRACES["log_joint"] += 1
  p = params[0]
  h = h.astype(x.dtype)
  a = p["W"] @ h + p["b"]
  prior = jnp.sum(h * _log_sigmoid(p["c"]) + (1 - h) * _log_sigmoid(-p["c"]))
  return prior + jnp.sum(x * _log_sigmoid(a) + (1 - x) * _log_sigmoid(-a))


def _log_q(params, x, h):
  """log q(h|x) = sum_j log Bern(h_j; sigmoid(U x + d)_j)."""
  q = params[1]
  h = h.astype(x.dtype)
  a = q["U"] @ x + q["d"]
  return jnp.sum(h * _log_sigmoid(a) + (1 - h) * _log_sigmoid(-a))


def _params(seed=0, dtype=np.float64):
  rng = np.random.default_rng(seed)
  model = dict(W=rng.normal(size=(D, H)), b=rng.normal(size=D), c=rng.normal(size=H))
  q = dict(U=rng.normal(size=(H, D)), d=rng.normal(size=H))
  cast = lambda t: {k: jnp.asarray(v, dtype) for k, v in t.items()}
  return cast(model), cast(q)


def _data(n=5, seed=1, dtype=np.float64):
  return np.random.default_rng(seed).integers(0, 2, size=(n, D)).astype(dtype)


def _brute(params, x):
  """(log p(x), ELBO, KL, p(h|x)) of (model_params, q_params) by brute force (sbn_reference)."""
  return brute_force_sbn({**params[0], **params[1]}, x)


def _closures(params):
  """The same model in the two-argument form, closing over the parameter arrays."""
  return (lambda x, h: _log_joint(params, x, h)), (lambda x, h: _log_q(params, x, h))


# (1) ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("lazy", [False, True])
def test_params_form_equals_closure_form_and_brute_force(lazy):
  with jax.enable_x64():
    params = _params(3)
    xs = _data()
    states = E.StateSpace(H) if lazy else E.enumerate_states(H)
    chunk = 3 if lazy else None
    rep = E.bound_report(_log_joint, _log_q, jnp.asarray(xs), states, chunk, params=params)
    lj2, lq2 = _closures(params)
    rep2 = E.bound_report(lj2, lq2, jnp.asarray(xs), states, chunk)
    for k in ("log_evidence", "elbo", "kl", "q_mass"):
      assert rep[k].dtype == jnp.float64
      np.testing.assert_allclose(rep[k], rep2[k], rtol=0, atol=1e-12)
    for i, x in enumerate(xs):
      log_px, elbo, kl, post = _brute(params, x)
      xi = jnp.asarray(x)
      got = {"log_evidence": E.log_evidence(_log_joint, xi, states, chunk, params=params),
             "elbo": E.elbo(_log_joint, _log_q, xi, states, chunk, params=params),
             "kl": E.kl_to_posterior(_log_joint, _log_q, xi, states, chunk, params=params)}
      for k, want in (("log_evidence", log_px), ("elbo", elbo), ("kl", kl)):
        np.testing.assert_allclose(rep[k][i], want, rtol=0, atol=1e-9)
        np.testing.assert_allclose(got[k], want, rtol=0, atol=1e-9)
      np.testing.assert_allclose(E.posterior(_log_joint, xi, states, chunk, params=params), post,
                                 rtol=0, atol=1e-12)
      # log p(x) - ELBO = KL, with the KL from its own two-pass computation.
      assert abs(float(got["log_evidence"] - got["elbo"] - got["kl"])) < 1e-9
      assert abs(float(rep["log_evidence"][i] - rep["elbo"][i] - rep["kl"][i])) < 1e-9
    np.testing.assert_allclose(rep["q_mass"], 1.0, atol=1e-12)
    assert np.all(np.asarray(rep["nan_count"]) == 0)


def test_params_form_composes_with_jit_vmap_and_grad():
  """Inside the user's own jit and vmap, and d ELBO / d params through the traced argument."""
  with jax.enable_x64():
    params = _params(5)
    xs = jnp.asarray(_data(3, 4))
    states = E.enumerate_states(H)
    per_x = jax.jit(jax.vmap(lambda p, x: E.elbo(_log_joint, _log_q, x, states, params=p),
                             in_axes=(None, 0)))
    np.testing.assert_allclose(per_x(params, xs),
                               E.bound_report(_log_joint, _log_q, xs, states,
                                              params=params)["elbo"], atol=1e-12)
    total = lambda p: jnp.sum(E.bound_report(_log_joint, _log_q, xs, states, params=p)["elbo"])
    grad = jax.grad(total)(params)
    eps, name = 1e-6, "W"
    bump = jnp.zeros_like(params[0][name]).at[1, 2].set(eps)
    shift = lambda s: ({**params[0], name: params[0][name] + s * bump}, params[1])
    fd = (total(shift(1.0)) - total(shift(-1.0))) / (2 * eps)
    np.testing.assert_allclose(grad[0][name][1, 2], fd, rtol=1e-6, atol=1e-8)


# (2) ------------------------------------------------------------------------------------------

_ENTRIES = {
    "bound_report": (EN._bound_report_jit,
                     lambda p, xs, s: E.bound_report(lambda q, x, h: _log_joint(q, x, h),
                                                     lambda q, x, h: _log_q(q, x, h), xs, s,
                                                     params=p)["elbo"]),
    "log_evidence": (EN._log_evidence_jit,
                     lambda p, xs, s: E.log_evidence(lambda q, x, h: _log_joint(q, x, h), xs[0],
                                                     s, params=p)),
    "elbo": (EN._elbo_jit,
             lambda p, xs, s: E.elbo(lambda q, x, h: _log_joint(q, x, h),
                                     lambda q, x, h: _log_q(q, x, h), xs[0], s, params=p)),
    "kl_to_posterior": (EN._kl_to_posterior_jit,
                        lambda p, xs, s: E.kl_to_posterior(lambda q, x, h: _log_joint(q, x, h),
                                                           lambda q, x, h: _log_q(q, x, h),
                                                           xs[0], s, params=p)),
    "posterior": (EN._posterior_jit,
                  lambda p, xs, s: E.posterior(lambda q, x, h: _log_joint(q, x, h), xs[0], s,
                                               params=p)),
}


@pytest.mark.parametrize("entry", list(_ENTRIES))
def test_new_params_and_a_fresh_lambda_do_not_recompile(entry):
  jitted, call = _ENTRIES[entry]
  xs = jnp.asarray(_data(4, 2, np.float32))
  states = E.enumerate_states(H)
  # A batch size of its own per entry point, so no earlier test has compiled this shape.
  xs = jnp.concatenate([xs, xs[:list(_ENTRIES).index(entry) + 1]])
  sizes, traces, outs = [], [], []
  for i in range(3):
    params = jax.tree_util.tree_map(lambda a: a * (1.0 + 0.5 * i), _params(7, np.float32))
    outs.append(np.asarray(call(params, xs, states)))    # new values, a new lambda object
    sizes.append(jitted._cache_size())
    traces.append(TRACES["log_joint"])
  assert sizes[1] == sizes[0] and sizes[2] == sizes[0], sizes
  assert traces[1] == traces[0] and traces[2] == traces[0], traces
  # The parameters were traced, not baked in: each value gave its own result.
  assert not np.allclose(outs[0], outs[1]) and not np.allclose(outs[1], outs[2])
  # The cached program computes the last values' result (an uncached reference).
  want = jax.jit(lambda p: getattr(EN, f"_{entry}_impl")(
      EN.static_fn(_log_joint), EN.static_fn(_log_q), None, p,
      xs if entry == "bound_report" else xs[0], states))(params)
  want = want["elbo"] if entry == "bound_report" else want
  np.testing.assert_allclose(outs[2], np.asarray(want), rtol=1e-6, atol=1e-6)


def test_another_state_space_or_chunk_size_compiles_its_own_program():
  xs = jnp.asarray(_data(2, 3, np.float32))
  params = _params(8, np.float32)
  base = E.bound_report(_log_joint, _log_q, xs, E.StateSpace(H), params=params)
  n = EN._bound_report_jit._cache_size()
  chunked = E.bound_report(_log_joint, _log_q, xs, E.StateSpace(H), 2, params=params)
  assert EN._bound_report_jit._cache_size() == n + 1
  for k in ("log_evidence", "elbo", "kl"):
    np.testing.assert_allclose(chunked[k], base[k], rtol=1e-6)


# (3) ------------------------------------------------------------------------------------------


def test_two_argument_form_still_works_and_a_new_closure_is_no_stale_program():
  with jax.enable_x64():
    xs = jnp.asarray(_data(3, 6))
    states = E.enumerate_states(H)
    for seed in (0, 1):   # one lambda code object, closures over other arrays
      params = _params(seed)
      lj, lq = _closures(params)
      rep = E.bound_report(lj, lq, xs, states, chunk_size=5)
      for i, x in enumerate(np.asarray(xs)):
        log_px, elbo, kl, post = _brute(params, x)
        np.testing.assert_allclose(rep["log_evidence"][i], log_px, atol=1e-9)
        np.testing.assert_allclose(rep["elbo"][i], elbo, atol=1e-9)
        np.testing.assert_allclose(rep["kl"][i], kl, atol=1e-9)
        np.testing.assert_allclose(E.log_evidence(lj, xs[i], states), log_px, atol=1e-9)
        np.testing.assert_allclose(E.elbo(lj, lq, xs[i], states), elbo, atol=1e-9)
        np.testing.assert_allclose(E.kl_to_posterior(lj, lq, xs[i], states), kl, atol=1e-9)
        np.testing.assert_allclose(E.posterior(lj, xs[i], states), post, atol=1e-12)


# (4) ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("chunk_size", [0, -3, 2.0, True, "4"])
def test_bad_chunk_size_names_the_argument(chunk_size):
  xs = jnp.asarray(_data(2, 0, np.float32))
  params = _params(0, np.float32)
  states = E.enumerate_states(H)
  calls = [lambda: E.bound_report(_log_joint, _log_q, xs, states, chunk_size, params=params),
           lambda: E.log_evidence(_log_joint, xs[0], states, chunk_size, params=params),
           lambda: E.elbo(_log_joint, _log_q, xs[0], states, chunk_size, params=params),
           lambda: E.kl_to_posterior(_log_joint, _log_q, xs[0], states, chunk_size,
                                     params=params),
           lambda: E.posterior(_log_joint, xs[0], states, chunk_size, params=params)]
  for call in calls:
    with pytest.raises(ValueError, match="chunk_size must be an integer >= 1"):
      call()


def test_bad_functions_and_states_name_the_argument():
  xs = jnp.asarray(_data(2, 0, np.float32))
  params = _params(0, np.float32)
  states = E.enumerate_states(H)
  with pytest.raises(ValueError, match="log_joint must be a function"):
    E.bound_report(None, _log_q, xs, states, params=params)
  with pytest.raises(ValueError, match="log_q must be a function"):
    E.elbo(_log_joint, 3.0, xs[0], states, params=params)
  with pytest.raises(ValueError, match="states must be an integer array"):
    E.log_evidence(_log_joint, xs[0], [[0, 1]], params=params)
  with pytest.raises(ValueError, match="states must have an integer dtype"):
    E.posterior(_log_joint, xs[0], np.zeros((2, H)), params=params)
  with pytest.raises(ValueError, match="num_vars must be an integer >= 1"):
    E.StateSpace(0)
  with pytest.raises(ValueError, match="num_categories must be an integer >= 2"):
    E.StateSpace(2, num_categories=np.int64(1))
