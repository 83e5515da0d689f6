"""Tests of vdm/diffusion/timesteps.py: uniform and loss-second-moment importance samplers."""
import collections
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vdm.diffusion import timesteps as ts

T, H = 7, 10


def ref_history(pairs, T=T, H=H):
  """Python reference: a deque of the last H losses per timestep, fed in order."""
  d = [collections.deque(maxlen=H) for _ in range(T)]
  for t, loss in pairs:
    d[t].append(loss)
  return d


def ref_probs(d, uniform_prob=0.001, H=H):
  T = len(d)
  if any(len(q) < H for q in d):
    return np.full(T, 1.0 / T)
  w = np.array([math.sqrt(sum(v * v for v in q) / H) for q in d])
  return (1 - uniform_prob) * w / w.sum() + uniform_prob / T


def feed(state, rng, n, T=T, low=None):
  t = rng.randint(0, T, n) if low is None else rng.randint(low, T, n)
  losses = rng.gamma(2.0, 1.0 + t)  # larger losses at larger t
  return ts.update(state, jnp.asarray(t, jnp.int32), jnp.asarray(losses)), list(zip(t, losses))


def test_uniform_sample():
  t, w = ts.uniform_sample(jax.random.PRNGKey(0), T, 7000)
  t = np.asarray(t)
  assert t.dtype == np.int32 and t.shape == (7000,) and np.all(np.asarray(w) == 1)
  counts = np.bincount(t, minlength=T)
  assert counts.min() > 0 and len(counts) == T
  # Chi-square statistic of uniformity, far below its 1e-6 quantile for 6 degrees of freedom.
  chi2 = np.sum((counts - 1000) ** 2 / 1000)
  assert chi2 < 40


def test_history_is_last_h_losses_and_uniform_until_full():
  rng = np.random.RandomState(0)
  with jax.enable_x64():
    state = ts.init(T, H, dtype=jnp.float64)
    pairs = []
    # Never touch t = 0 for a while: every other t fills up, but sampling stays uniform.
    for _ in range(8):
      state, p = feed(state, rng, 20, low=1)
      pairs += p
    probs = np.asarray(ts.probabilities(state))
    np.testing.assert_allclose(probs, np.full(T, 1 / T), rtol=1e-15)
    assert not bool(ts.is_warm(state))
    t, w = ts.sample(state, jax.random.PRNGKey(1), 50)
    np.testing.assert_allclose(np.asarray(w), 1.0, rtol=1e-15)
    for _ in range(8):
      state, p = feed(state, rng, 20)
      pairs += p
    d = ref_history(pairs)
    assert bool(ts.is_warm(state)) == all(len(q) == H for q in d) == True  # noqa: E712
    hist, counts = np.asarray(state.loss_history), np.asarray(state.counts)
    for k in range(T):
      assert counts[k] == sum(1 for tt, _ in pairs if tt == k)
      np.testing.assert_allclose(np.sort(hist[k]), np.sort(np.array(d[k])), rtol=1e-15)
    np.testing.assert_allclose(np.asarray(ts.probabilities(state)), ref_probs(d), rtol=1e-12)
    np.testing.assert_allclose(np.asarray(ts.probabilities(state, 0.3)), ref_probs(d, 0.3),
                               rtol=1e-12)


def _warm_state(seed=1, dtype=jnp.float64):
  rng = np.random.RandomState(seed)
  state = ts.init(T, H, dtype=dtype)
  pairs = []
  while not bool(ts.is_warm(state)):
    state, p = feed(state, rng, 30)
    pairs += p
  return state, pairs


def test_weights_make_the_estimate_unbiased_exactly_and_by_monte_carlo():
  L = np.array([0.3, 5.0, 0.01, 2.0, 7.5, 0.2, 1.1])  # fixed per-timestep losses
  with jax.enable_x64():
    state, pairs = _warm_state()
    p = np.asarray(ts.probabilities(state))
    assert abs(p.sum() - 1) < 1e-14 and not np.allclose(p, 1 / T)
    # The weights returned by `sample` are 1 / (T p_t) for the sampled t.
    t, w = ts.sample(state, jax.random.PRNGKey(2), 200_000)
    t, w = np.asarray(t), np.asarray(w)
    np.testing.assert_allclose(w, 1.0 / (T * p[t]), rtol=1e-14)
  # Exact expectation: sum_t p_t * w_t * T * L_t == sum_t L_t.
  w_all = 1.0 / (T * p)
  assert abs(np.sum(p * w_all * T * L) - L.sum()) < 1e-12
  # Monte Carlo: the empirical frequencies follow p and the weighted mean estimates sum_t L_t.
  freq = np.bincount(t, minlength=T) / len(t)
  assert np.all(np.abs(freq - p) < 5 * np.sqrt(p * (1 - p) / len(t)))
  est = w * T * L[t]
  assert abs(est.mean() - L.sum()) < 5 * est.std() / math.sqrt(len(t))


def test_importance_sampler_concentrates_on_large_losses():
  with jax.enable_x64():
    state, _ = _warm_state(2)
    p = np.asarray(ts.probabilities(state))
  # feed() draws losses with mean growing with t: p grows with t overall.
  assert p[-1] > p[0] and p.argmax() >= T - 3


def test_works_under_jit_and_vmap():
  state, _ = _warm_state(3, jnp.float32)
  key = jax.random.PRNGKey(4)
  t_e, w_e = ts.sample(state, key, 16)
  t_j, w_j = jax.jit(ts.sample, static_argnums=2)(state, key, 16)
  np.testing.assert_array_equal(np.asarray(t_e), np.asarray(t_j))
  np.testing.assert_allclose(np.asarray(w_e), np.asarray(w_j), rtol=1e-6)
  losses = jnp.linspace(0.1, 3.0, 16)
  s_e = ts.update(state, t_e, losses)
  s_j = jax.jit(ts.update)(state, t_e, losses)
  for a, b in zip(s_e, s_j):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

  # A stacked (pmap-shaped) state: vmap over a leading device axis equals a per-device loop.
  n = 3
  states = jax.tree_util.tree_map(lambda x: jnp.stack([x] * n), state)
  keys = jax.random.split(key, n)
  tv, wv = jax.vmap(lambda s, k: ts.sample(s, k, 16))(states, keys)
  lv = jnp.arange(n * 16, dtype=jnp.float32).reshape(n, 16) / 10
  new = jax.vmap(ts.update)(states, tv, lv)
  for i in range(n):
    ti, wi = ts.sample(state, keys[i], 16)
    np.testing.assert_array_equal(np.asarray(tv[i]), np.asarray(ti))
    si = ts.update(state, ti, lv[i])
    np.testing.assert_array_equal(np.asarray(new.loss_history[i]), np.asarray(si.loss_history))
    np.testing.assert_array_equal(np.asarray(new.counts[i]), np.asarray(si.counts))


def test_multi_device_recipe_keeps_replicas_identical():
  """The documented recipe, with vmap(axis_name=...) standing in for pmap: each device samples
  with fold_in(key, axis_index), all-gathers (t, losses) and applies the same update."""
  n, B = 4, 5
  state = ts.init(T, H)
  states = jax.tree_util.tree_map(lambda x: jnp.stack([x] * n), state)
  L = jnp.asarray([0.3, 5.0, 0.01, 2.0, 7.5, 0.2, 1.1])

  def step(st, key):
    k = jax.random.fold_in(key, jax.lax.axis_index("d"))
    t, w = ts.sample(st, k, B)
    losses = L[t]
    t_all = jax.lax.all_gather(t, "d").reshape(-1)
    l_all = jax.lax.all_gather(losses, "d").reshape(-1)
    return ts.update(st, t_all, l_all), t_all

  run = jax.jit(jax.vmap(step, in_axes=(0, None), axis_name="d"))
  gathered = []
  for i in range(6):
    states, t_all = run(states, jax.random.PRNGKey(i))
    gathered.append(np.asarray(t_all[0]))
    for r in range(1, n):
      np.testing.assert_array_equal(np.asarray(states.loss_history[r]),
                                    np.asarray(states.loss_history[0]))
  # The replicated state equals one sequential update with every device's batch, in order.
  ref = ts.init(T, H)
  for t_all in gathered:
    ref = ts.update(ref, t_all, L[t_all])
  np.testing.assert_array_equal(np.asarray(states.counts[0]), np.asarray(ref.counts))
  np.testing.assert_allclose(np.asarray(states.loss_history[0]), np.asarray(ref.loss_history))
  assert int(np.asarray(states.counts[0]).sum()) == 6 * n * B


def test_bad_input():
  state = ts.init(T, H)
  with pytest.raises(ValueError, match=r"t must lie in \[0, 6\]"):
    ts.update(state, jnp.asarray([0, 7]), jnp.asarray([1.0, 2.0]))
  with pytest.raises(ValueError, match="shape"):
    ts.update(state, jnp.asarray([0, 1]), jnp.asarray([1.0]))
  with pytest.raises(ValueError, match="integer"):
    ts.update(state, jnp.asarray([0.0, 1.0]), jnp.asarray([1.0, 2.0]))
  with pytest.raises(ValueError, match="uniform_prob"):
    ts.probabilities(state, 1.5)
  with pytest.raises(ValueError, match="history"):
    ts.init(T, 0)
  with pytest.raises(ValueError, match="num_timesteps"):
    ts.uniform_sample(jax.random.PRNGKey(0), 0, 4)
  with pytest.raises(ValueError, match="batch_size"):
    ts.sample(state, jax.random.PRNGKey(0), 0)
