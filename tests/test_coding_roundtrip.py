"""vdm.coding: bits-back round trips on small models, the codelength against exact -log2 p(x)
(enumeration), the model factors the coder uses against log_joint, and bad input refused."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vdm.coding import ans
from vdm.coding import diffusion as CD
from vdm.coding import enumerable as CE
from vdm.diffusion.ddpm import GaussianDiffusion
from vdm.diffusion.schedules import get_beta_schedule
from vdm.elbo import models as M
from vdm.models.mlp import MLPDenoiser

MODELS = {
    "mixture": M.BernoulliMixture(num_components=3, data_dim=12),
    "sbn": M.SigmoidBeliefNet(num_latents=5, data_dim=12, encoder_hidden=(8,)),
    "rbm": M.RBM(num_latents=4, data_dim=12, encoder_hidden=(8,)),
}


def _model(name, n=24):
  model = MODELS[name]
  params, q_params = model.init(jax.random.PRNGKey(0), dtype=jnp.float64)
  xs, _ = model.sample(jax.random.PRNGKey(1), params, n)
  return model, params, q_params, xs


@pytest.mark.parametrize("name", sorted(MODELS))
def test_factors_the_coder_uses_reproduce_log_joint(name):
  """log p(h) + log p(x | h) from log_prior_states and likelihood_logits == log_joint (x64)."""
  with jax.enable_x64():
    model, params, _, xs = _model(name, 4)
    states = model.all_states()
    log_prior = model.log_prior_states(params)                        # [S]
    logits = model.likelihood_logits(params, states)                  # [S, D]
    assert abs(float(jax.nn.logsumexp(log_prior))) < 1e-9
    for x in xs:
      ll = jnp.sum(M.bernoulli_log_prob(logits, x[None, :]), axis=-1)
      joint = jax.vmap(lambda h: model.log_joint(params, x, h))(states)
      np.testing.assert_allclose(np.asarray(log_prior + ll), np.asarray(joint), atol=1e-9)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_exact_posterior_codes_at_minus_log2_px_and_round_trips(name):
  with jax.enable_x64():
    model, params, q_params, xs = _model(name)
    result = CE.encode(model, params, q_params, xs, posterior="exact", batch_size=8)
    exact_bits = -float(np.sum(M.bounds(model, params, q_params, xs)["log_evidence"])) / np.log(2)
    # The ideal codelength with the exact posterior is -log2 p(x) per example (bits back), up
    # to the rounding of the probabilities onto the coder's canonical grid (vdm.coding.ans).
    np.testing.assert_allclose(np.sum(result.ideal_bits), exact_bits, rtol=1e-4)
    # The coder's count is whole bits, plus the ANS head of at most two words per batch.
    assert abs(result.measured_bits - exact_bits) < 1.0 + 64 * 3 + 0.01 * exact_bits
    before = result.seed_bits
    decoded = CE.decode(model, params, q_params, result.message, len(xs), posterior="exact",
                        batch_size=8)
    assert np.array_equal(np.asarray(decoded), np.asarray(xs))
    assert result.message.num_bits() == before


def test_encoder_posterior_codes_at_minus_elbo():
  with jax.enable_x64():
    model, params, q_params, xs = _model("sbn", 64)
    result = CE.encode(model, params, q_params, xs, posterior="encoder", batch_size=16)
    elbo_bits = -np.asarray(M.bounds(model, params, q_params, xs)["elbo"]) / np.log(2)
    per = np.asarray(result.ideal_bits)
    # One draw of h per example from q: the mean is -ELBO within Monte Carlo error.
    assert abs(per.mean() - elbo_bits.mean()) < 4 * per.std(ddof=1) / np.sqrt(len(per)) + 1e-6
    decoded = CE.decode(model, params, q_params, result.message, len(xs), posterior="encoder",
                        batch_size=16)
    assert np.array_equal(np.asarray(decoded), np.asarray(xs))


def _ddpm(T=8, K=5, D=6):
  diffusion = GaussianDiffusion(get_beta_schedule("linear", T), "eps", "learned_range", "kl",
                                num_levels=K, t_chunk_size=None)
  net = MLPDenoiser(hidden=16, num_blocks=1, out_dim=2 * D, zero_init_out=False)
  params = net.init(jax.random.PRNGKey(0), jnp.zeros((1, D)), jnp.zeros((1,), jnp.int32))["params"]
  return diffusion, (lambda p, z, t: net.apply({"params": p}, z, t)), params


def test_ddpm_chain_round_trips_and_refuses_a_truncated_message():
  diffusion, model_fn, params = _ddpm()
  v = np.random.default_rng(0).integers(0, 5, (12, 6))
  result = CD.encode(diffusion, model_fn, params, v, batch_size=4)
  words = result.message.words().copy()
  decoded = CD.decode(diffusion, model_fn, params, result.message, 12, (6,), batch_size=4)
  assert np.array_equal(decoded, v)
  # Net growth of the message over the 12 examples: positive, and the decode restored it.
  assert result.measured_bits > 0 and result.message.num_bits() == result.seed_bits
  truncated = ans.Message.from_words(words[: len(words) // 3])
  with pytest.raises(ValueError):
    CD.decode(diffusion, model_fn, params, truncated, 12, (6,), batch_size=4)


def test_bad_input_is_refused_before_coding():
  diffusion, model_fn, params = _ddpm()
  with pytest.raises(ValueError, match="data"):
    CD.encode(diffusion, model_fn, params, np.full((2, 6), 5), batch_size=2)
  with pytest.raises(ValueError, match="precision_bits"):
    CD.encode(diffusion, model_fn, params, np.zeros((2, 6), int), precision_bits=40)
  with jax.enable_x64():
    model, params_m, q_params, xs = _model("sbn", 2)
    with pytest.raises(ValueError):
      CE.encode(model, params_m, q_params, np.full((2, 12), 2.0))
