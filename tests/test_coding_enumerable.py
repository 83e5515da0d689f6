"""vdm.coding.enumerable: bits-back coding with the enumerable models of vdm.elbo.models.

Tolerances. constriction counts whole bits, so a measured size is exact to +-1 bit; the
canonical rounding of the probabilities (vdm.coding.ans) moves each log2-probability by at most
2**-11 bits and constriction's 24-bit probabilities add about as much, so the ideal codelength
of one example (D + 2 symbols here) lies within 0.01 bits of -log2 p(x) with the exact
posterior (measured: at most 0.0013), and a batch's measured size within 1 bit + 0.02 bits per
example of the sum (measured: at most 0.4 bits for 64 examples).
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vdm.coding import ans, enumerable
from vdm.elbo import models as M

D = 8
MODELS = {
    "bernoulli_mixture": M.BernoulliMixture(4, D, encoder_hidden=(8,)),
    "sbn": M.SigmoidBeliefNet(4, D, encoder_hidden=(8,)),
    "rbm": M.RBM(4, D, encoder_hidden=(8,)),
    "vae": M.BinaryLatentVAE(3, D, encoder_hidden=(8,), decoder_hidden=(8,)),
}


_CACHE = {}


def _setup(name, n, seed=0):
  """(model, float64 params, q_params, xs [n, D] drawn from the model); call under x64."""
  key = (name, seed)
  if key not in _CACHE:
    model = MODELS[name]
    params, q_params = model.init(jax.random.PRNGKey(seed), jnp.float64)
    xs, _ = model.sample(jax.random.PRNGKey(seed + 1), params, 256)
    _CACHE[key] = (model, params, q_params, np.asarray(xs))
  model, params, q_params, xs = _CACHE[key]
  return model, params, q_params, xs[:n]


@pytest.mark.parametrize("name", sorted(MODELS))
def test_factor_accessors_match_log_joint(name):
  with jax.enable_x64():
    model, params, _, xs = _setup(name, 3)

    @jax.jit
    def tables(params, xs):
      states = model.all_states()
      log_prior = model.log_prior_states(params)
      logits = model.likelihood_logits(params, states)               # [S, D]
      log_lik = jnp.sum(xs[:, None] * logits - jax.nn.softplus(logits), axis=-1)   # [B, S]
      log_joint = jax.vmap(lambda x: jax.vmap(lambda h: model.log_joint(params, x, h))(states))(xs)
      bit_logits = model.prior_bit_logits(params)
      factorized = (None if bit_logits is None else
                    jnp.sum(states * bit_logits - jax.nn.softplus(bit_logits), axis=-1))
      return log_prior, log_prior + log_lik, log_joint, factorized

    log_prior, summed, log_joint, factorized = tables(params, jnp.asarray(xs))
    np.testing.assert_allclose(summed, log_joint, rtol=0, atol=1e-9)
    assert abs(float(jax.scipy.special.logsumexp(log_prior))) < 1e-12
    if factorized is not None:
      np.testing.assert_allclose(factorized, log_prior, atol=1e-12)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_exact_posterior_codes_at_minus_log2_p_and_round_trips(name):
  with jax.enable_x64():
    model, params, q_params, xs = _setup(name, 24)
    nll = -np.asarray(jax.vmap(lambda x: model.log_marginal(params, x))(jnp.asarray(xs)))
    nll /= np.log(2.0)
    for batch_size in (1, 8):
      msg = ans.Message.seeded(32, 7)
      seed = msg.words()
      res = enumerable.encode(model, params, None, xs, msg, posterior="exact",
                              batch_size=batch_size)
      np.testing.assert_allclose(res.ideal_bits, nll, rtol=0, atol=0.01)
      assert abs(res.measured_bits - nll.sum()) < 1 + 0.02 * len(xs)
      if batch_size == 1:   # per example, to constriction's whole bits
        assert np.max(np.abs(res.batch_measured_bits - nll)) < 1.1
      assert res.header_bits == ans.HEADER_BITS and res.seed_bits == msg.num_bits() - (
          res.measured_bits + res.header_bits)
      out = enumerable.decode(model, params, None, msg, len(xs), posterior="exact",
                              batch_size=batch_size)
      assert out.dtype == xs.dtype and np.array_equal(out, xs)
      assert np.array_equal(msg.words(), seed)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_encoder_posterior_costs_minus_elbo(name):
  with jax.enable_x64():
    model, params, q_params, xs = _setup(name, 200)
    report = M.bounds(model, params, q_params, jnp.asarray(xs))
    neg_elbo = -np.asarray(report["elbo"]) / np.log(2.0)
    msg = ans.Message.seeded(64, 3)
    seed = msg.words()
    res = enumerable.encode(model, params, q_params, xs, msg, posterior="encoder", batch_size=50)
    se = res.ideal_bits.std() / np.sqrt(len(xs))
    assert abs(res.ideal_bits.mean() - neg_elbo.mean()) < 4 * se + 1e-3
    assert abs(res.measured_bits - res.ideal_bits.sum()) < 1 + 0.02 * len(xs)
    # The latents were drawn from q: the bound is loose, so the rate exceeds -log2 p(x).
    nll = -np.asarray(report["log_evidence"]) / np.log(2.0)
    assert res.ideal_bits.mean() > nll.mean()
    out = enumerable.decode(model, params, q_params, msg, len(xs), posterior="encoder",
                            batch_size=50)
    assert np.array_equal(out, xs) and np.array_equal(msg.words(), seed)


def _encoded(n=32):
  with jax.enable_x64():
    model, params, q_params, xs = _setup("sbn", n)
    msg = ans.Message.seeded(16, 0)
    enumerable.encode(model, params, q_params, xs, msg, posterior="encoder", batch_size=4)
  return model, params, q_params, xs, msg.words()


def test_truncated_or_corrupted_messages_raise():
  model, params, q_params, xs, words = _encoded()

  def dec(w):
    with jax.enable_x64():
      return enumerable.decode(model, params, q_params, ans.Message.from_words(w), len(xs),
                               posterior="encoder", batch_size=4)

  assert np.array_equal(dec(words), xs)
  with pytest.raises(ans.MessageError):
    dec(words[:-3])                      # the top of the stack lost
  with pytest.raises(ans.MessageError):
    dec(words[40:])                      # the bottom (seed and first batch) lost
  # (A change inside the 16 seed words only changes the seed that decoding gives back.)
  assert len(words) > 24
  for i in (16 + (len(words) - 16) // 2, len(words) - 4):
    bad = words.copy()
    bad[i] ^= np.uint32(1 << 7)
    with pytest.raises(ans.MessageError):
      dec(bad)
  with pytest.raises(ValueError, match="batch_size"):
    with jax.enable_x64():
      enumerable.decode(model, params, q_params, ans.Message.from_words(words), len(xs),
                        posterior="encoder", batch_size=8)
  with pytest.raises(ans.MessageError, match="configuration"):
    with jax.enable_x64():
      enumerable.decode(model, params, None, ans.Message.from_words(words), len(xs),
                        posterior="exact", batch_size=4)


def test_bad_arguments_raise_before_coding():
  with jax.enable_x64():
    model, params, q_params, xs = _setup("bernoulli_mixture", 4)
    msg = ans.Message.seeded(8, 0)
    seed = msg.words()
    with pytest.raises(ValueError, match="binary"):
      enumerable.encode(model, params, q_params, xs + 0.5, msg)
    with pytest.raises(ValueError, match="shape"):
      enumerable.encode(model, params, q_params, xs[:, :3], msg)
    with pytest.raises(ValueError, match="posterior"):
      enumerable.encode(model, params, q_params, xs, msg, posterior="approx")
    with pytest.raises(ValueError, match="q_params"):
      enumerable.encode(model, params, None, xs, msg, posterior="encoder")
    gm = M.GaussianMixture(2, 3)
    gp, gq = gm.init(jax.random.PRNGKey(0), jnp.float64)
    with pytest.raises(ValueError, match="continuous"):
      enumerable.encode(gm, gp, gq, np.zeros((2, 3)), msg)
    assert np.array_equal(msg.words(), seed)
    # A seed too short for the pops is refused, not silently miscoded.
    with pytest.raises(ans.MessageError, match="seed"):
      enumerable.encode(model, params, None, np.tile(xs, (64, 1)), ans.Message.seeded(2, 0))
