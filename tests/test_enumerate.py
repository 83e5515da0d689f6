"""vdm.elbo core: exact bounds by enumeration against an independent NumPy brute force."""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sbn_reference import brute_force_sbn
from vdm import elbo as E

# A small sigmoid belief net p(h) p(x|h) and a factorized q(h|x), written twice: once in JAX
# for the library, once in NumPy for the brute force.
D, H = 5, 4


def _params(seed=0):
  rng = np.random.default_rng(seed)
  return dict(W=rng.normal(size=(D, H)), b=rng.normal(size=D), c=rng.normal(size=H),
              U=rng.normal(size=(H, D)), d=rng.normal(size=H))


def _jax_model(p):
  def log_joint(x, h):
    h = h.astype(x.dtype)
    a = p["W"] @ h + p["b"]
    prior = jnp.sum(h * jax.nn.log_sigmoid(p["c"]) + (1 - h) * jax.nn.log_sigmoid(-p["c"]))
    return prior + jnp.sum(x * jax.nn.log_sigmoid(a) + (1 - x) * jax.nn.log_sigmoid(-a))

  def log_q(x, h):
    h = h.astype(x.dtype)
    a = p["U"] @ x + p["d"]
    return jnp.sum(h * jax.nn.log_sigmoid(a) + (1 - h) * jax.nn.log_sigmoid(-a))

  return log_joint, log_q


_brute = brute_force_sbn


def _data(n=6, seed=1):
  return np.random.default_rng(seed).integers(0, 2, size=(n, D)).astype(np.float64)


def test_enumerate_states_order_and_dtype():
  s = np.asarray(E.enumerate_states(3, 3))
  assert s.dtype == np.int32 and s.shape == (27, 3)
  expected = np.array(list(itertools.product(range(3), repeat=3)))
  np.testing.assert_array_equal(s, expected)
  lazy = E.StateSpace(3, 3)
  np.testing.assert_array_equal(np.asarray(lazy.states_from_index(jnp.arange(27))), expected)


def test_every_quantity_matches_brute_force_and_identity_holds():
  with jax.enable_x64():
    p = _params()
    lj, lq = _jax_model(p)
    xs = _data()
    states = E.enumerate_states(H)
    report = E.bound_report(lj, lq, jnp.asarray(xs), states)
    # The single-example functions, vmapped over the batch (one compilation).
    singles = jax.jit(jax.vmap(lambda x: (E.log_evidence(lj, x, states),
                                          E.elbo(lj, lq, x, states),
                                          E.kl_to_posterior(lj, lq, x, states),
                                          E.posterior(lj, x, states))))
    log_pxs, elbos, kls, posts = singles(jnp.asarray(xs))
    for i, x in enumerate(xs):
      log_px, elbo, kl, post = _brute(p, x)
      np.testing.assert_allclose(report["log_evidence"][i], log_px, rtol=0, atol=1e-10)
      np.testing.assert_allclose(report["elbo"][i], elbo, rtol=0, atol=1e-10)
      np.testing.assert_allclose(report["kl"][i], kl, rtol=0, atol=1e-10)
      np.testing.assert_allclose(log_pxs[i], log_px, atol=1e-10)
      np.testing.assert_allclose(elbos[i], elbo, atol=1e-10)
      np.testing.assert_allclose(kls[i], kl, atol=1e-10)
      np.testing.assert_allclose(posts[i], post, atol=1e-12)
      # The identity log p(x) - ELBO = KL between independently computed quantities
      # (bound_report's one-pass log p(x) and ELBO, kl_to_posterior's two-pass KL).
      assert abs(float(report["log_evidence"][i] - report["elbo"][i] - kls[i])) < 1e-9
      assert report["elbo"][i] <= report["log_evidence"][i]
    np.testing.assert_allclose(report["q_mass"], 1.0, atol=1e-12)
    assert np.all(np.asarray(report["nan_count"]) == 0)


def test_gap_is_zero_when_q_is_the_exact_posterior():
  with jax.enable_x64():
    p = _params(3)
    lj, _ = _jax_model(p)
    states = E.enumerate_states(H)

    def log_q_exact(x, h):  # log p(h|x) computed by the library itself
      return lj(x, h) - E.log_evidence(lj, x, states)

    xs = jnp.asarray(_data(4, 5))
    report = E.bound_report(lj, log_q_exact, xs, states)
    np.testing.assert_allclose(report["elbo"], report["log_evidence"], rtol=0, atol=1e-9)
    np.testing.assert_allclose(report["kl"], 0.0, atol=1e-9)
    assert abs(float(E.kl_to_posterior(lj, log_q_exact, xs[0], states))) < 1e-9


@pytest.mark.parametrize("chunk_size", [1, 3, 5, 16, 1000])
def test_chunked_equals_unchunked(chunk_size):
  with jax.enable_x64():
    lj, lq = _jax_model(_params(7))
    xs = jnp.asarray(_data(5, 2))
    full = E.bound_report(lj, lq, xs, E.enumerate_states(H))
    for states in (E.enumerate_states(H), E.StateSpace(H)):
      got = E.bound_report(lj, lq, xs, states, chunk_size=chunk_size)
      for k in ("log_evidence", "elbo", "kl", "q_mass"):
        np.testing.assert_allclose(got[k], full[k], rtol=0, atol=1e-12)
    np.testing.assert_allclose(E.posterior(lj, xs[1], E.StateSpace(H), chunk_size=chunk_size),
                               E.posterior(lj, xs[1], E.enumerate_states(H)), atol=1e-14)


def test_jit_and_vmap_equal_a_python_loop():
  with jax.enable_x64():
    lj, lq = _jax_model(_params(11))
    xs = jnp.asarray(_data(5, 9))
    states = E.enumerate_states(H)
    looped = np.array([[float(E.log_evidence(lj, x, states)), float(E.elbo(lj, lq, x, states))]
                       for x in xs])
    f = jax.jit(jax.vmap(lambda x: jnp.stack([E.log_evidence(lj, x, states, chunk_size=3),
                                             E.elbo(lj, lq, x, states, chunk_size=3)])))
    np.testing.assert_allclose(np.asarray(f(xs)), looped, atol=1e-12)
    report = E.bound_report(lj, lq, xs, states, chunk_size=4)
    np.testing.assert_allclose(report["log_evidence"], looped[:, 0], atol=1e-12)
    np.testing.assert_allclose(report["elbo"], looped[:, 1], atol=1e-12)


def test_exact_gradient_matches_finite_differences():
  """d ELBO / d(model and q parameters) through the enumeration, vs central differences."""
  with jax.enable_x64():
    p0 = {k: jnp.asarray(v) for k, v in _params(4).items()}
    xs = jnp.asarray(_data(3, 4))
    states = E.enumerate_states(H)

    @jax.jit
    def total_elbo(p):
      lj, lq = _jax_model(p)
      return jnp.sum(E.bound_report(lj, lq, xs, states, chunk_size=5)["elbo"])

    grad = jax.grad(total_elbo)(p0)
    rng = np.random.default_rng(0)
    eps = 1e-6
    for name in ("W", "c", "U", "d"):
      for _ in range(3):
        idx = tuple(rng.integers(0, n) for n in p0[name].shape)
        bump = jnp.zeros_like(p0[name]).at[idx].set(eps)
        plus = total_elbo({**p0, name: p0[name] + bump})
        minus = total_elbo({**p0, name: p0[name] - bump})
        fd = (plus - minus) / (2 * eps)
        np.testing.assert_allclose(grad[name][idx], fd, rtol=1e-6, atol=1e-8)


def test_streams_2_pow_20_states_without_a_table():
  """A lazily generated state space far larger than any chunk: matches the closed form.

  For a model with independent latents, log p(x) = sum_j log sum_{h_j} p(h_j) p(x_j|h_j) in
  closed form, so the enumeration over 2**20 states has an independent reference.
  """
  n = 20
  rng = np.random.default_rng(0)
  theta = rng.normal(size=n)    # prior logits of h_j
  w = rng.normal(size=n)        # x_j ~ N(w_j h_j, 1)

  def log_joint(x, h):
    h = h.astype(jnp.float32)
    prior = jnp.sum(h * jax.nn.log_sigmoid(theta) + (1 - h) * jax.nn.log_sigmoid(-theta))
    return prior + jnp.sum(-0.5 * (x - w * h) ** 2 - 0.5 * np.log(2 * np.pi))

  x = rng.normal(size=n).astype(np.float32)
  got = E.log_evidence(log_joint, jnp.asarray(x), E.StateSpace(n), chunk_size=1 << 15)
  lp0 = -np.logaddexp(0, theta) - 0.5 * x**2 - 0.5 * np.log(2 * np.pi)
  lp1 = -np.logaddexp(0, -theta) - 0.5 * (x - w) ** 2 - 0.5 * np.log(2 * np.pi)
  np.testing.assert_allclose(float(got), np.sum(np.logaddexp(lp0, lp1)), rtol=1e-5)


def test_bad_states_are_clear_errors():
  lj, lq = _jax_model(_params())
  x = jnp.asarray(_data(1)[0], jnp.float32)
  with pytest.raises(ValueError, match="integer dtype"):
    E.log_evidence(lj, x, jnp.zeros((4, H), jnp.float32))
  with pytest.raises(ValueError, match=r"shape \[num_states, num_vars\]"):
    E.log_evidence(lj, x, jnp.zeros((4,), jnp.int32))
  with pytest.raises(ValueError, match="num_vars"):
    E.enumerate_states(0)
  with pytest.raises(ValueError, match="num_categories"):
    E.enumerate_states(3, 1)
  with pytest.raises(ValueError, match="chunk_size"):
    E.log_evidence(lj, x, E.enumerate_states(H), chunk_size=0)


def test_too_many_states_without_chunk_size_fail_before_allocating():
  with pytest.raises(ValueError, match="StateSpace"):
    E.enumerate_states(30)            # 2**30 x 30 int32 would be 120 GiB
  lj, _ = _jax_model(_params())
  with pytest.raises(ValueError, match="chunk_size"):
    E.log_evidence(lj, jnp.zeros(D), E.StateSpace(30))
  with pytest.raises(ValueError, match="int32"):
    E.StateSpace(40)


def test_check_report_names_the_bad_example():
  lj, lq = _jax_model(_params())
  xs = jnp.asarray(_data(4), jnp.float32)
  states = E.enumerate_states(H)
  E.check_report(E.bound_report(lj, lq, xs, states))  # a normalized q passes

  def lq_unnormalized(x, h):
    return lq(x, h) + jnp.where(x[0] > 0, jnp.log(2.0), 0.0)

  bad = int(np.flatnonzero(np.asarray(xs[:, 0]) > 0)[0])
  with pytest.raises(ValueError, match=rf"example {bad}: q\(h\|x\) sums to 2"):
    E.check_report(E.bound_report(lj, lq_unnormalized, xs, states))

  def lj_nan(x, h):
    return jnp.where(jnp.sum(h) == 2, jnp.nan, lj(x, h))

  with pytest.raises(ValueError, match="example 0: log_joint or log_q returned NaN at 6 states"):
    E.check_report(E.bound_report(lj_nan, lq, xs, states))
