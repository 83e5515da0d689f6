"""Bits-back coding (BB-ANS) of binary data with the enumerable models of `vdm.elbo.models`.

For a model p(x, h) = p(h) p(x | h) with discrete latents h and an approximate posterior
q(h | x), one example x is encoded by (Frey & Hinton 1997; Townsend et al. 2019, Sec. 2.2):

  1. pop h from the message with q(h | x)       (the message shrinks by -log2 q(h|x) bits)
  2. push x with p(x | h)                       (grows by -log2 p(x|h))
  3. push h with p(h)                           (grows by -log2 p(h))

so the message grows by -log2 p(x, h) + log2 q(h | x) bits: exactly -log2 p(x) when q is the
exact posterior (any h), and -ELBO(x)/ln 2 in expectation over h ~ q otherwise. Decoding runs the
steps backwards (pop h with p(h), pop x with p(x|h), push h with q(h|x)) and returns the message
to what it was before encoding, so the seed bits that the first pops drew are recovered.

Supported: BernoulliMixture, SigmoidBeliefNet, RBM and BinaryLatentVAE(likelihood='bernoulli')
(binary x). GaussianMixture and the Gaussian VAE have continuous x, which no finite code
represents losslessly: they are refused.

How each factor is coded:
- q(h|x): posterior="exact" is the posterior p(h|x) by enumeration (a categorical over the
  S = num_categories**num_latents state indices, from `log_joint`); posterior="encoder" is the
  model's amortized q: a categorical over the K components for the mixtures, a factorized
  Bernoulli (one symbol per latent bit) otherwise.
- p(h): a factorized Bernoulli per latent bit where the prior factorizes (SBN, VAE), otherwise a
  categorical over the S states (the mixtures; the RBM's marginal p(h), by enumeration).
- p(x|h): one Bernoulli symbol per data dimension, logits `likelihood_logits(params, h)`.

Examples are coded in lockstep batches of `batch_size`: each table (q for the batch, the
likelihood logits for the popped h, the prior) is one jitted, vmapped JAX call with the
parameters traced (no recompilation for new values), and each stack operation is one
constriction call on the whole batch. Batches go onto the message one after another; decoding
visits them in reverse and returns the examples in their original order. The decoder computes
every table with the same function on the same shapes as the encoder (the batch layout is part
of the message's header), and `vdm.coding.ans` rounds every parameter onto a fixed grid.

Units: bits throughout (`ideal_bits` per example, message sizes).
"""
from __future__ import annotations

import functools
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from vdm import checks
from vdm.coding import ans
from vdm.elbo import models as _models

POSTERIORS = ("exact", "encoder")
# Largest state space coded as a categorical (exact posterior, non-factorized prior).
MAX_CODED_STATES = 2**16


class EncodeResult(NamedTuple):
  """What `encode` did (all sizes in bits).

  ideal_bits: float64 [N], -log2 p(h) - log2 p(x|h) + log2 q(h|x) per example, from the exact
    (canonical, float64) probabilities handed to the coder: the codelength of an ideal coder.
  measured_bits: int, the message's net growth from the examples (header excluded).
  batch_measured_bits: int64 [num_batches], the growth per batch (per example for batch_size 1;
    constriction counts whole bits, so each entry is exact up to +-1 bit).
  header_bits: bits of the checksum header (0 without checksum).
  seed_bits: the message's size before encoding (the seed, for a fresh message).
  latents: int64 [N], the state index of the h that was coded for each example.
  message: the message (the one passed in, modified in place).
  """
  ideal_bits: np.ndarray
  measured_bits: int
  batch_measured_bits: np.ndarray
  header_bits: int
  seed_bits: int
  latents: np.ndarray
  message: ans.Message


# ----------------------------------------------------------------------------------------------
# Checks
# ----------------------------------------------------------------------------------------------


def _check_model(model):
  if isinstance(model, _models.GaussianMixture) or (
      isinstance(model, _models.BinaryLatentVAE) and model.likelihood != "bernoulli"):
    raise ValueError(f"model: {type(model).__name__} has continuous data x, which cannot be "
                     f"coded losslessly; bits-back coding here needs binary x (BernoulliMixture, "
                     f"SigmoidBeliefNet, RBM, BinaryLatentVAE(likelihood='bernoulli'))")
  if not isinstance(model, (_models.BernoulliMixture, _models.SigmoidBeliefNet, _models.RBM,
                            _models.BinaryLatentVAE)):
    raise ValueError(f"model must be one of BernoulliMixture, SigmoidBeliefNet, RBM, "
                     f"BinaryLatentVAE from vdm.elbo.models, got {type(model).__name__}")
  return model


def _num_states(model) -> int:
  return model.num_categories**model.num_latents


def _categorical_prior(model) -> bool:
  return not isinstance(model, (_models.SigmoidBeliefNet, _models.BinaryLatentVAE))


def _check_posterior(model, posterior, q_params):
  checks.choice("posterior", posterior, POSTERIORS)
  if posterior == "encoder":
    if not (isinstance(q_params, dict) and set(q_params) == {"encoder"}):
      raise ValueError("q_params must be {'encoder': flax params} (model.init_q) for "
                       "posterior='encoder'")
  needs_states = posterior == "exact" or _categorical_prior(model)
  if needs_states and _num_states(model) > MAX_CODED_STATES:
    raise ValueError(f"model: coding enumerates S = {_num_states(model)} states (the exact "
                     f"posterior or a non-factorized prior), more than {MAX_CODED_STATES}")
  return posterior


def _param_dtype(params):
  leaves = [l for l in jax.tree_util.tree_leaves(params) if jnp.issubdtype(jnp.asarray(l).dtype,
                                                                            jnp.floating)]
  return np.dtype(leaves[0].dtype) if leaves else np.dtype(jnp.asarray(0.0).dtype)


def _check_xs(model, xs, dtype):
  xs = np.asarray(xs)
  if xs.ndim != 2 or xs.shape[1] != model.data_dim or xs.shape[0] < 1:
    raise ValueError(f"xs must have shape [N, data_dim] = [N, {model.data_dim}] with N >= 1, "
                     f"got {xs.shape}")
  if not np.all((xs == 0) | (xs == 1)):
    raise ValueError("xs must be binary (every entry 0 or 1)")
  return xs.astype(np.uint8), xs.astype(dtype)


def _batches(n, batch_size):
  return [(s, min(s + batch_size, n)) for s in range(0, n, batch_size)]


def _config(model, posterior) -> str:
  """The settings that encoder and decoder must share (batch_size travels in the header)."""
  return f"vdm.coding.enumerable|{model!r}|{posterior}"


# ----------------------------------------------------------------------------------------------
# Probability tables (jitted; the model and posterior static, parameters traced)
# ----------------------------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnums=(0, 3))
def _q_table(model, params, q_params, posterior, xs):
  """q for a batch xs [B, D]: exact -> log p(h|x) [B, S] (nats, normalized); encoder -> the
  encoder's logits ([B, K] categorical logits for the mixtures, [B, H] Bernoulli logits)."""
  if posterior == "exact":
    states = model.all_states()
    log_joint = jax.vmap(lambda x: jax.vmap(lambda h: model.log_joint(params, x, h))(states))(xs)
    return jax.nn.log_softmax(log_joint, axis=-1)
  return jax.vmap(lambda x: model.encoder_logits(q_params, x))(xs)


@functools.partial(jax.jit, static_argnums=(0,))
def _prior_table(model, params):
  """log p(h) [S] for every state (nats), or the factorized prior's logits [H]."""
  if _categorical_prior(model):
    return model.log_prior_states(params)
  return model.prior_bit_logits(params)


@functools.partial(jax.jit, static_argnums=(0,))
def _likelihood_table(model, params, h):
  """Bernoulli logits [B, D] of p(x | h) for h int32 [B, num_latents]."""
  return model.likelihood_logits(params, h)


def _f64(a):
  return np.asarray(a, dtype=np.float64)


def _q_is_categorical(model, posterior) -> bool:
  return posterior == "exact" or isinstance(model, _models._Mixture)


def _index_to_states(model, index):
  """int [B] state indices -> int32 [B, num_latents] (most significant digit first)."""
  k, n = model.num_categories, model.num_latents
  powers = k ** np.arange(n - 1, -1, -1, dtype=np.int64)
  return ((np.asarray(index, np.int64)[:, None] // powers[None, :]) % k).astype(np.int32)


def _states_to_index(model, h):
  k, n = model.num_categories, model.num_latents
  powers = k ** np.arange(n - 1, -1, -1, dtype=np.int64)
  return np.asarray(h, np.int64) @ powers


# ----------------------------------------------------------------------------------------------
# One batch
# ----------------------------------------------------------------------------------------------


def _pop_q(message, model, posterior, q, encoding, log2p_out):
  """Pop h for every example of the batch with q (the table of `_q_table`)."""
  if _q_is_categorical(model, posterior):
    log2q = ans.canonical_log2_probs(log_probs=_f64(q))
    index = ans.pop_categorical(message, log2_probs=log2q)
    log2p_out += ans.categorical_log2prob(index, log2q)
    h = _index_to_states(model, index)
  else:
    logits = ans.canonical_logits(_f64(q))
    bits = ans.pop_bernoulli(message, logits=logits.ravel())
    log2p_out += ans.bernoulli_log2prob(bits, logits.ravel()).reshape(logits.shape).sum(1)
    h = bits.reshape(logits.shape).astype(np.int32)
    index = _states_to_index(model, h)
  ans.check_not_dry(message, "the latents h with q(h|x)", encoding)
  return h, index


def _push_q(message, model, posterior, q, h, index):
  if _q_is_categorical(model, posterior):
    log2q = ans.canonical_log2_probs(log_probs=_f64(q))
    ans.push_categorical(message, index, log2_probs=log2q)
  else:
    ans.push_bernoulli(message, h.ravel(), logits=ans.canonical_logits(_f64(q)).ravel())


def _prior_params(model, prior, batch):
  if _categorical_prior(model):
    return "categorical", np.broadcast_to(ans.canonical_log2_probs(log_probs=_f64(prior)[None]),
                                          (batch, _num_states(model)))
  return "bits", np.broadcast_to(ans.canonical_logits(_f64(prior))[None],
                                 (batch, model.num_latents))


def _encode_batch(message, model, params, q_params, posterior, prior, xb):
  """Steps 1-3 of the module docstring for a batch xb [B, D] (model dtype); returns the ideal
  bits [B] and the state indices [B]."""
  batch = xb.shape[0]
  popped = np.zeros(batch)
  q = _q_table(model, params, q_params, posterior, jnp.asarray(xb))
  h, index = _pop_q(message, model, posterior, q, True, popped)
  logits = ans.canonical_logits(_f64(_likelihood_table(model, params, jnp.asarray(h))))
  xbits = xb.astype(np.int64).ravel()
  ans.push_bernoulli(message, xbits, logits=logits.ravel())
  pushed = -ans.bernoulli_log2prob(xbits, logits.ravel()).reshape(batch, -1).sum(1)
  kind, table = _prior_params(model, prior, batch)
  if kind == "categorical":
    ans.push_categorical(message, index, log2_probs=table)
    pushed -= ans.categorical_log2prob(index, table)
  else:
    ans.push_bernoulli(message, h.ravel(), logits=table.ravel())
    pushed -= ans.bernoulli_log2prob(h.ravel(), table.ravel()).reshape(batch, -1).sum(1)
  return pushed + popped, index


def _decode_batch(message, model, params, q_params, posterior, prior, batch, dtype):
  """The reverse of `_encode_batch`: returns xb [B, D] in the model dtype."""
  kind, table = _prior_params(model, prior, batch)
  if kind == "categorical":
    index = ans.pop_categorical(message, log2_probs=table)
    h = _index_to_states(model, index)
  else:
    h = ans.pop_bernoulli(message, logits=table.ravel()).reshape(batch, -1).astype(np.int32)
    index = _states_to_index(model, h)
  ans.check_not_dry(message, "the latents h with p(h)", False)
  logits = ans.canonical_logits(_f64(_likelihood_table(model, params, jnp.asarray(h))))
  xbits = ans.pop_bernoulli(message, logits=logits.ravel()).reshape(batch, -1)
  ans.check_not_dry(message, "the data x with p(x|h)", False)
  xb = xbits.astype(dtype)
  q = _q_table(model, params, q_params, posterior, jnp.asarray(xb))
  _push_q(message, model, posterior, q, h, index)
  return xb


# ----------------------------------------------------------------------------------------------
# Entry points
# ----------------------------------------------------------------------------------------------


def seed_words_needed(model, batch_size: int, posterior: str = "exact") -> int:
  """A generous seed size in words for the first batch: the pops of q(h|x) draw at most
  log2 S bits per example (categorical q) or num_latents bits (factorized q), plus 64 bits."""
  batch_size = checks.positive_int("batch_size", batch_size)
  bits_per = (np.log2(_num_states(model)) if _q_is_categorical(model, posterior)
              else model.num_latents)
  return int(np.ceil((batch_size * (bits_per + 1) + 64) / 32)) + 2


def encode(model, params, q_params, xs, message: Optional[ans.Message] = None,
           posterior: str = "exact", batch_size: Optional[int] = None, checksum: bool = True,
           seed: int = 0) -> EncodeResult:
  """Bits-back encode the binary examples xs [N, data_dim] onto `message`.

  Args:
    model: a BernoulliMixture, SigmoidBeliefNet, RBM or BinaryLatentVAE('bernoulli').
    params: the model parameters; q_params: {"encoder": ...} for posterior="encoder" (unused,
      may be None, for "exact").
    xs: [N, data_dim] of 0/1 values.
    message: the message to push onto (modified in place); None: a fresh
      `Message.seeded(seed_words_needed(...), seed)`.
    posterior: "exact" (p(h|x) by enumeration: the codelength is -log2 p(x)) or "encoder".
    batch_size: examples coded in lockstep (default: all N in one batch); `decode` must get the
      same.
    checksum: push a 160-bit header (`vdm.coding.ans.push_header`) so that decode detects a
      truncated or corrupted message, other settings, or a wrong decode.
  Returns:
    EncodeResult (sizes in bits). Raises ValueError before coding for bad arguments, and
    `ans.MessageError` (a ValueError) if the message's seed is too short.
  """
  _check_model(model)
  posterior = _check_posterior(model, posterior, q_params)
  checksum = checks.boolean("checksum", checksum)
  dtype = _param_dtype(params)
  xs_u8, xs_f = _check_xs(model, xs, dtype)
  n = xs_f.shape[0]
  batch_size = n if batch_size is None else checks.positive_int("batch_size", batch_size)
  if message is None:
    message = ans.Message.seeded(seed_words_needed(model, min(batch_size, n), posterior), seed)
  ans._check_message(message)

  seed_bits = message.num_bits()
  prior = _prior_table(model, params)
  ideal = np.zeros(n)
  index = np.zeros(n, np.int64)
  batch_bits = []
  for lo, hi in _batches(n, batch_size):
    before = message.num_bits()
    ideal[lo:hi], index[lo:hi] = _encode_batch(message, model, params, q_params, posterior,
                                               prior, xs_f[lo:hi])
    batch_bits.append(message.num_bits() - before)
  measured = message.num_bits() - seed_bits
  header_bits = 0
  if checksum:
    before = message.num_bits()
    ans.push_header(message, _config(model, posterior), n, batch_size,
                    ans.crc32(xs_u8))
    header_bits = message.num_bits() - before
  return EncodeResult(ideal, int(measured), np.asarray(batch_bits, np.int64), int(header_bits),
                      int(seed_bits), index, message)


def decode(model, params, q_params, message: ans.Message, num_examples: int,
           posterior: str = "exact", batch_size: Optional[int] = None,
           checksum: bool = True) -> np.ndarray:
  """Decode num_examples examples from `message` (modified in place: after a full decode it
  holds what it held before `encode`, e.g. the seed words).

  The arguments must be those of `encode` (batch_size default: num_examples). Returns
  xs [num_examples, data_dim] of 0/1 values in the dtype of the model parameters, in the
  original order. Raises `ans.MessageError` (a ValueError) naming what went wrong when the
  message is truncated or corrupted (a missing or wrong header, a message that runs out of
  bits, a failed checksum) and ValueError for arguments that differ from the header's.
  """
  _check_model(model)
  posterior = _check_posterior(model, posterior, q_params)
  checksum = checks.boolean("checksum", checksum)
  ans._check_message(message)
  n = checks.positive_int("num_examples", num_examples)
  batch_size = n if batch_size is None else checks.positive_int("batch_size", batch_size)
  dtype = _param_dtype(params)
  data_crc = None
  if checksum:
    data_crc = ans.check_header(message, _config(model, posterior), n, batch_size)
  prior = _prior_table(model, params)
  out = np.zeros((n, model.data_dim), dtype)
  for lo, hi in reversed(_batches(n, batch_size)):
    out[lo:hi] = _decode_batch(message, model, params, q_params, posterior, prior, hi - lo,
                               dtype)
  if checksum:
    ans.check_data_crc(data_crc, out.astype(np.uint8))
  return out
