"""Enumerable latent-variable models, their variational posteriors, and exact-ELBO fitting.

Every model is a frozen (hashable) dataclass with the same interface, so experiments can loop
over models and pass them as static arguments to `jax.jit`:

  num_latents, num_categories      h is an int32 vector [num_latents], each entry in
                                   {0, ..., num_categories-1} (a row of `enumerate_states`)
  data_dim                         x is a float vector [data_dim] (binary 0/1 or continuous)
  init_params(key, dtype)          model parameters (a pytree of arrays)
  init_q(key, dtype)               parameters of the amortized q(h|x): {"encoder": flax params}
  init(key, dtype)                 (params, q_params)
  log_joint(params, x, h)          log p(x, h) in nats, scalar
  log_q(q_params, x, h)            log q(h | x) in nats, scalar
  sample_q(q_params, x, key)       one draw h ~ q(h | x), int32 [num_latents] (for
                                   `vdm.elbo.iwae_bound`; `iwae_bounds` below wires it up)
  exact_posterior_q(params)        q_params with log_q(q_params, x, h) == log p(h | x)
  log_marginal(params, x)          log p(x) in closed form where one exists (mixtures, RBM);
                                   otherwise by enumeration
  sample(key, params, n)           (x [n, data_dim], h [n, num_latents] int32) from p(x, h)
  state_space()                    the `StateSpace` of all h

q families. `q_params` is a dict whose single key names the family, and `log_q` dispatches on
it at trace time (the pytree structure is static under jit):
  {"encoder": flax params}  amortized q: a small Flax MLP maps x to the logits of a categorical
                            (mixtures) or of a factorized Bernoulli over h (SBN, RBM, VAE);
  {"exact": model params}   q(h|x) = p(h|x) under those model parameters: closed form for the
                            mixtures and the RBM (whose posterior factorizes), by enumerating all
                            h' for the SBN and the VAE (log p(x,h) - logsumexp_h' log p(x,h')).
  `sample_q` draws from either family: a factorized Bernoulli or a categorical from the encoder's
  logits; for `exact`, the closed-form posterior (mixtures: categorical; RBM: factorized
  Bernoulli) or, for the SBN and the VAE, the enumerated posterior by inverse-CDF sampling over
  all 2**H states (computed once per example, not once per draw, under a vmap over keys).

Fitting. `fit` maximizes the exact enumerated ELBO with optax over model and q jointly (the
gradient is exact: the sum over states is differentiated, no score-function estimator).
`variational_em` alternates the E-step q := p(h|x) (the `exact` family) and a closed-form M-step
argmax_theta E_q[log p(x, h; theta)] for the two mixtures; its ELBO never decreases.

The batch functions here (`bounds`, `mean_elbo`) pass params=(params, q_params) to
`vdm.elbo.bound_report`, whose jit traces them and keys on the model (a frozen dataclass,
static through `vdm.static_fn`): one compilation per model and shapes, no parameters baked into
compiled code. Likewise every enumeration inside a model (log p(x), log Z) passes params=, and
`iwae_bounds` passes params=(params, q_params) to `vdm.elbo.iwae_bound`.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from vdm import checks
from vdm.elbo.enumerate import StateSpace, bound_report, log_evidence
from vdm.elbo.iwae import iwae_bound

Params = Any

# Enumerating 2**H states inside every call of an `exact` log_q is allowed up to this size.
MAX_EXACT_Q_LATENTS = 16
# Exact sampling of an RBM enumerates 2**num_hidden hidden states.
MAX_RBM_SAMPLE_HIDDEN = 20

LIKELIHOODS = ("bernoulli", "gaussian")
RBM_PARTITION_LAYERS = ("auto", "hidden", "visible")


# ----------------------------------------------------------------------------------------------
# Validation and small helpers
# ----------------------------------------------------------------------------------------------


def _check_widths(name: str, value) -> tuple:
  """Hidden layer widths: a tuple (hashable: models are jit static arguments) of integers
  >= 1, each checked by `vdm.checks.positive_int` as name[i]."""
  if not isinstance(value, tuple):
    raise ValueError(f"{name} must be a tuple of hidden layer widths (integers >= 1), got "
                     f"{value!r} ({type(value).__name__})")
  return tuple(checks.positive_int(f"{name}[{i}]", v) for i, v in enumerate(value))


def _cast(tree, dtype):
  return jax.tree_util.tree_map(lambda a: jnp.asarray(a, dtype), tree)


def _q_family(q_params) -> str:
  if not isinstance(q_params, dict) or len(q_params) != 1 or not (
      "encoder" in q_params or "exact" in q_params):
    keys = list(q_params) if isinstance(q_params, dict) else type(q_params).__name__
    raise ValueError(f"q_params must be a dict with exactly one key in ['encoder', 'exact'] "
                     f"(from init_q or exact_posterior_q), got {keys}")
  return next(iter(q_params))


@jax.custom_jvp
def softplus(x):
  """log(1 + e^x) = max(x, 0) + log(1 + e^{-|x|}), elementwise.

  Absolute error at most about one ulp of 1 (log(1 + e) for tiny e rounds to 0 instead of e),
  i.e. 1e-16 in float64; about 2x faster on CPU than jax.nn.softplus (which adds
  NaN-propagation selects and log1p). Derivative: sigmoid(x) (a custom JVP, exact at x = 0).
  """
  return jnp.maximum(x, 0) + jnp.log(1 + jnp.exp(-jnp.abs(x)))


@softplus.defjvp
def _softplus_jvp(primals, tangents):
  (x,), (t,) = primals, tangents
  return softplus(x), jax.nn.sigmoid(x) * t


# Factors per product in `sum_softplus`: each factor is in (1, 2], so a product of 64 is at most
# 2**64, far from overflow in float32 (3.4e38) and float64.
_SOFTPLUS_GROUP = 64


@jax.custom_jvp
def sum_softplus(x):
  """sum over the last axis of softplus(x), with one log per group of 64 entries.

  sum_d softplus(x_d) = sum_d max(x_d, 0) + log prod_d (1 + e^{-|x_d|}); the product is taken
  over groups of at most 64 factors in (1, 2] (no overflow), so the cost per entry is one exp
  instead of an exp and a log. The rounding error is that of the sum it replaces (a product of
  n factors has relative error ~n ulp). x [..., D] -> [...]. About 1.5x faster on CPU than
  summing `softplus`, which matters where it runs once per enumerated state. Derivative:
  sigmoid(x) (custom JVP).
  """
  d = x.shape[-1]
  factors = 1 + jnp.exp(-jnp.abs(x))
  if d > _SOFTPLUS_GROUP:
    groups = -(-d // _SOFTPLUS_GROUP)
    pad = [(0, 0)] * (x.ndim - 1) + [(0, groups * _SOFTPLUS_GROUP - d)]
    factors = jnp.pad(factors, pad, constant_values=1).reshape(
        x.shape[:-1] + (groups, _SOFTPLUS_GROUP))
    log_prod = jnp.sum(jnp.log(jnp.prod(factors, axis=-1)), axis=-1)
  else:
    log_prod = jnp.log(jnp.prod(factors, axis=-1))
  return jnp.sum(jnp.maximum(x, 0), axis=-1) + log_prod


@sum_softplus.defjvp
def _sum_softplus_jvp(primals, tangents):
  (x,), (t,) = primals, tangents
  return sum_softplus(x), jnp.sum(jax.nn.sigmoid(x) * t, axis=-1)


def bernoulli_log_prob(logits, y):
  """log Bernoulli(y; sigmoid(logits)) = y*logits - softplus(logits), elementwise, nats."""
  return y * logits - softplus(logits)


def normal_log_prob(x, mean, log_scale):
  """log N(x; mean, exp(log_scale)**2), elementwise, nats."""
  z = (x - mean) * jnp.exp(-log_scale)
  return -0.5 * z * z - log_scale - 0.5 * jnp.log(2.0 * jnp.pi)


class MLP(nn.Module):
  """tanh MLP: [..., in] -> [..., out]; `hidden` gives the widths of the hidden layers."""
  hidden: tuple
  out: int

  @nn.compact
  def __call__(self, x):
    for width in self.hidden:
      x = jnp.tanh(nn.Dense(width)(x))
    return nn.Dense(self.out)(x)


def _factorized_bernoulli_log_q(logits, h):
  """log prod_j Bernoulli(h_j; sigmoid(logits_j)) = h.logits - sum_j softplus(logits_j).

  logits [H], h int [H] -> scalar (or h [S, H] -> [S]). Written as a dot product plus a term
  free of h, so that under the (state, example) vmaps the coupling is one matmul and softplus
  runs once per x.
  """
  return jnp.dot(h.astype(logits.dtype), logits) - sum_softplus(logits)


def _open_uniform(key, shape, dtype):
  """Uniform draws on the open interval (0, 1): (i + 1/2) 2**-m for m-bit random integers i
  (m = 23 in float32, 52 in float64), so never exactly 0 or 1.

  Used to sample a probability p as u < p: p below 2**-(m+1) is then never drawn (rather than
  drawn at the rate 2**-m at which a [0, 1) uniform is exactly 0), so a state that q gives a tiny
  probability is never drawn far more often than q says; that would give one enormous
  importance weight p(x, h) / q(h | x) and an upward-biased bound.
  """
  dtype = jnp.dtype(dtype)
  m = jnp.finfo(dtype).nmant
  nbits = 8 * dtype.itemsize
  bits = jax.random.bits(key, shape, jnp.uint64 if nbits == 64 else jnp.uint32)
  ints = bits >> (nbits - m)
  return (ints.astype(dtype) + 0.5) * (2.0 ** -m)


def _float_dtype(logits):
  return jnp.result_type(logits.dtype, jnp.float32)


def _sample_factorized_bernoulli(logits, key):
  """h_j ~ Bern(sigmoid(logits_j)) independently: logits [H] -> int32 [H]."""
  dtype = _float_dtype(logits)
  u = _open_uniform(key, logits.shape, dtype)
  return (u < jax.nn.sigmoid(logits.astype(dtype))).astype(jnp.int32)


def _sample_categorical_by_cdf(logits, key):
  """One index i ~ softmax(logits) by inverse-CDF sampling: logits [S] -> int32 scalar.

  The cumulative sum is computed once for all draws that share the logits (under a vmap over
  keys), and a draw costs a binary search, not S random numbers as the Gumbel-max trick would.
  States whose probability is below the rounding of the cumulative sum (~1e-7 of the total in
  float32, ~1e-16 in float64) are drawn with up to twice their probability or not at all.
  """
  dtype = _float_dtype(logits)
  logits = logits.astype(dtype)
  cdf = jnp.cumsum(jnp.exp(logits - jnp.max(logits)))
  u = _open_uniform(key, (), dtype) * cdf[-1]
  index = jnp.searchsorted(cdf, u, side="right")
  return jnp.minimum(index, logits.shape[0] - 1).astype(jnp.int32)


def _log_posterior_by_enumeration(model, params, x, h):
  """log p(h|x) = log p(x,h) - log sum_h' p(x,h') (the sum does not depend on h)."""
  log_px = log_evidence(model.log_joint, x, model.state_space(), params=params)
  return model.log_joint(params, x, h) - log_px


class _Base:
  """Methods shared by every model (each subclass is a frozen dataclass)."""

  num_categories = 2

  def state_space(self) -> StateSpace:
    return StateSpace(self.num_latents, self.num_categories)

  def init(self, key, dtype=jnp.float32):
    """(params, q_params) from one key (jitted)."""
    key_p, key_q = jax.random.split(key)
    return self.init_params(key_p, dtype), self.init_q(key_q, dtype)

  def init_params(self, key, dtype=jnp.float32):
    """Model parameters (a dict of arrays of `dtype`; jitted)."""
    return _init_params_jit(self, key, checks.float_dtype("dtype", dtype))

  def init_q(self, key, dtype=jnp.float32):
    """Amortized q: {"encoder": Flax MLP params mapping x [data_dim] to logits} (jitted)."""
    return _init_q_jit(self, key, checks.float_dtype("dtype", dtype))

  def sample(self, key, params, n: int):
    """(x [n, data_dim], h [n, num_latents] int32), exact draws from p(x, h) (jitted)."""
    checks.positive_int("n", n)
    return _sample_jit(self, key, params, n)

  def _init_q(self, key, dtype):
    enc = self._encoder().init(key, jnp.zeros((self.data_dim,), dtype))
    return {"encoder": _cast(enc, dtype)}

  def _encoder(self) -> MLP:
    return MLP(self.encoder_hidden, self._encoder_out())

  def _encoder_out(self) -> int:
    return self.num_latents

  def exact_posterior_q(self, params):
    """q_params for which log_q(q_params, x, h) = log p(h | x; params)."""
    return {"exact": params}

  def encoder_logits(self, q_params, x):
    return self._encoder().apply(q_params["encoder"], x)

  def log_q(self, q_params, x, h):
    """log q(h | x) in nats; x [data_dim], h int [num_latents]."""
    if _q_family(q_params) == "exact":
      return self.log_posterior(q_params["exact"], x, h)
    return self._log_q_encoder(self.encoder_logits(q_params, x), h)

  def _log_q_encoder(self, logits, h):
    return _factorized_bernoulli_log_q(logits, h)

  def sample_q(self, q_params, x, key):
    """One draw h ~ q(h | x) from either q family: int32 [num_latents] (a row of
    `enumerate_states`); x [data_dim], key a PRNG key. exp(log_q(q_params, x, h)) is the
    probability of drawing h (up to the rounding documented in `_open_uniform` and
    `sample_posterior`). The `sample_q(params, x, key)` of `vdm.elbo.iwae_bound`."""
    if _q_family(q_params) == "exact":
      return self.sample_posterior(q_params["exact"], x, key)
    return self._sample_q_encoder(self.encoder_logits(q_params, x), key)

  def _sample_q_encoder(self, logits, key):
    return _sample_factorized_bernoulli(logits, key)

  def sample_posterior(self, params, x, key):
    """One exact draw h ~ p(h | x; params), int32 [num_latents], by enumerating all states:
    inverse-CDF sampling of softmax_h log p(x, h) (`_sample_categorical_by_cdf`), unless a
    subclass has a closed form."""
    if self.num_latents > MAX_EXACT_Q_LATENTS:
      raise ValueError(
          f"sampling the exact posterior enumerates 2**num_latents states per example; "
          f"num_latents={self.num_latents} exceeds {MAX_EXACT_Q_LATENTS}")
    space = self.state_space()
    states = space.states_from_index(jnp.arange(space.num_states, dtype=jnp.int32))
    log_joint = jax.vmap(lambda h: self.log_joint(params, x, h))(states)
    index = _sample_categorical_by_cdf(log_joint, key)
    return space.states_from_index(index[None])[0].astype(jnp.int32)

  def log_posterior(self, params, x, h):
    """log p(h | x) in nats (by enumeration unless a subclass has a closed form)."""
    if self.num_latents > MAX_EXACT_Q_LATENTS:
      raise ValueError(
          f"the exact posterior q enumerates 2**num_latents states per example; num_latents="
          f"{self.num_latents} exceeds {MAX_EXACT_Q_LATENTS}")
    return _log_posterior_by_enumeration(self, params, x, h)

  def log_marginal(self, params, x, chunk_size=None):
    """log p(x) in nats for one example x [data_dim] (by enumeration)."""
    return log_evidence(self.log_joint, x, self.state_space(), chunk_size, params=params)

  # Factors of p(x, h) = p(h) p(x | h) one at a time (for entropy coding, `vdm.coding`).

  def all_states(self):
    """int32 [S, num_latents]: every state, in `state_space()` order (row i = state index i)."""
    space = self.state_space()
    return space.states_from_index(jnp.arange(space.num_states, dtype=jnp.int32))

  def log_prior_states(self, params):
    """[S] log p(h) in nats for every state h of `all_states()` (sums to 1 in probability)."""
    raise NotImplementedError(f"{type(self).__name__} has no log_prior_states")

  def prior_bit_logits(self, params):
    """[num_latents] logits of a factorized Bernoulli prior p(h) = prod_j Bern(h_j), or None
    when the prior does not factorize over the latents."""
    del params
    return None

  def likelihood_logits(self, params, h):
    """Bernoulli logits of p(x_d = 1 | h): h int [..., num_latents] -> [..., data_dim].

    log p(x | h) = sum_d x_d l_d - softplus(l_d) with l = likelihood_logits(params, h), so that
    log_prior_states(params)[i] + log p(x | state i) == log_joint(params, x, state i). Only for
    models of binary data."""
    raise ValueError(f"{type(self).__name__} has continuous data x; p(x | h) is a density, not "
                     f"a distribution over binary x")


# ----------------------------------------------------------------------------------------------
# Mixtures: one categorical latent (num_latents = 1, num_categories = K)
# ----------------------------------------------------------------------------------------------


class _Mixture(_Base):
  num_latents = 1

  @property
  def num_categories(self):  # noqa: D401 - property overriding the base class attribute
    return self.num_components

  def _encoder_out(self) -> int:
    return self.num_components

  def component_log_joint(self, params, x):
    """[K]: log p(x, h = k) for every component k."""
    raise NotImplementedError

  def log_joint(self, params, x, h):
    """log p(x, h) = log pi_h + log p(x | h) in nats; h int [1] holds the component."""
    return self.component_log_joint(params, x)[h[0]]

  def log_posterior(self, params, x, h):
    """Closed form: log softmax_k log p(x, k), at k = h[0]."""
    return jax.nn.log_softmax(self.component_log_joint(params, x))[h[0]]

  def log_marginal(self, params, x, chunk_size=None):
    """Closed form: log p(x) = logsumexp_k log p(x, k)."""
    del chunk_size
    return jax.scipy.special.logsumexp(self.component_log_joint(params, x))

  def _log_q_encoder(self, logits, h):
    return jax.nn.log_softmax(logits)[h[0]]

  def _sample_q_encoder(self, logits, key):
    """h = [k], k ~ softmax(logits) (the encoder's categorical q): int32 [1]."""
    return jax.random.categorical(key, logits)[None].astype(jnp.int32)

  def sample_posterior(self, params, x, key):
    """Closed form: h = [k], k ~ softmax_k log p(x, k): int32 [1]."""
    return jax.random.categorical(key, self.component_log_joint(params, x))[None].astype(
        jnp.int32)

  def responsibilities(self, params, xs):
    """[N, K] posterior p(h = k | x_n) for a batch xs [N, data_dim]."""
    return jax.nn.softmax(jax.vmap(lambda x: self.component_log_joint(params, x))(xs), axis=-1)

  def log_prior_states(self, params):
    """[K] log pi_k = log_softmax(mixture_logits) (state index k = component k)."""
    return jax.nn.log_softmax(params["mixture_logits"])


@dataclasses.dataclass(frozen=True)
class BernoulliMixture(_Mixture):
  """p(h = k) = softmax(mixture_logits)_k; p(x | h = k) = prod_d Bern(x_d; sigmoid(logits[k, d])).

  x binary float [data_dim]; params {"mixture_logits": [K], "logits": [K, D]}.
  """
  num_components: int
  data_dim: int
  encoder_hidden: tuple = (32,)
  min_prob: float = 1e-6  # M-step clips the Bernoulli means to [min_prob, 1 - min_prob]

  def __post_init__(self):
    checks.positive_int("num_components", self.num_components)
    checks.positive_int("data_dim", self.data_dim)
    _check_widths("encoder_hidden", self.encoder_hidden)

  def _init_params(self, key, dtype):
    return {"mixture_logits": jnp.zeros((self.num_components,), dtype),
            "logits": jax.random.normal(key, (self.num_components, self.data_dim), dtype)}

  def component_log_joint(self, params, x):
    log_pi = jax.nn.log_softmax(params["mixture_logits"])
    return log_pi + jnp.sum(bernoulli_log_prob(params["logits"], x[None, :]), axis=-1)

  def likelihood_logits(self, params, h):
    """logits[h_0]: h int [..., 1] -> [..., D] (the Bernoulli logits of component h_0)."""
    return params["logits"][h[..., 0]]

  def _sample(self, key, params, n):
    key_h, key_x = jax.random.split(key)
    k = jax.random.categorical(key_h, params["mixture_logits"], shape=(n,))
    x = jax.random.bernoulli(key_x, jax.nn.sigmoid(params["logits"][k]))
    return x.astype(params["logits"].dtype), k[:, None].astype(jnp.int32)

  def m_step(self, params, xs, resp):
    """argmax_theta sum_n sum_k resp[n, k] log p(x_n, k; theta), with means clipped."""
    del params
    counts = jnp.sum(resp, axis=0)                                       # [K]
    pi = counts / xs.shape[0]
    mean = (resp.T @ xs) / counts[:, None]
    mean = jnp.clip(mean, self.min_prob, 1.0 - self.min_prob)
    tiny = jnp.finfo(pi.dtype).tiny
    return {"mixture_logits": jnp.log(jnp.maximum(pi, tiny)),
            "logits": jnp.log(mean) - jnp.log1p(-mean)}


@dataclasses.dataclass(frozen=True)
class GaussianMixture(_Mixture):
  """p(h = k) = softmax(mixture_logits)_k; p(x | h = k) = N(x; means[k], diag(exp(2 log_scales[k]))).

  x continuous float [data_dim]; params {"mixture_logits" [K], "means" [K, D],
  "log_scales" [K, D]}.
  """
  num_components: int
  data_dim: int
  encoder_hidden: tuple = (32,)
  min_variance: float = 1e-4  # M-step floor on each variance

  def __post_init__(self):
    checks.positive_int("num_components", self.num_components)
    checks.positive_int("data_dim", self.data_dim)
    _check_widths("encoder_hidden", self.encoder_hidden)
    checks.number("min_variance", self.min_variance, low=0, low_open=True)

  def _init_params(self, key, dtype):
    return {"mixture_logits": jnp.zeros((self.num_components,), dtype),
            "means": jax.random.normal(key, (self.num_components, self.data_dim), dtype),
            "log_scales": jnp.zeros((self.num_components, self.data_dim), dtype)}

  def component_log_joint(self, params, x):
    log_pi = jax.nn.log_softmax(params["mixture_logits"])
    return log_pi + jnp.sum(normal_log_prob(x[None, :], params["means"], params["log_scales"]),
                            axis=-1)

  def _sample(self, key, params, n):
    key_h, key_x = jax.random.split(key)
    k = jax.random.categorical(key_h, params["mixture_logits"], shape=(n,))
    noise = jax.random.normal(key_x, (n, self.data_dim), params["means"].dtype)
    x = params["means"][k] + jnp.exp(params["log_scales"][k]) * noise
    return x, k[:, None].astype(jnp.int32)

  def m_step(self, params, xs, resp):
    """argmax_theta sum_n sum_k resp[n, k] log p(x_n, k; theta), variances >= min_variance."""
    del params
    counts = jnp.sum(resp, axis=0)
    pi = counts / xs.shape[0]
    means = (resp.T @ xs) / counts[:, None]
    diff = xs[None, :, :] - means[:, None, :]                               # [K, N, D]
    var = jnp.einsum("nk,knd->kd", resp, diff * diff) / counts[:, None]
    var = jnp.maximum(var, self.min_variance)
    tiny = jnp.finfo(pi.dtype).tiny
    return {"mixture_logits": jnp.log(jnp.maximum(pi, tiny)), "means": means,
            "log_scales": 0.5 * jnp.log(var)}


# ----------------------------------------------------------------------------------------------
# Sigmoid belief network: binary h [H] -> binary x [D]
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SigmoidBeliefNet(_Base):
  """p(h) = prod_j Bern(h_j; sigmoid(prior_logits_j)); p(x|h) = prod_d Bern(x_d; sigmoid(l_d)),
  l = bias + h W (Neal 1992, one layer). params {"prior_logits" [H], "W" [H, D], "bias" [D]}.

  log p(x, h) = h.a - sum softplus(a) - sum softplus(l) + x.bias + h.(W x): the terms that
  depend only on h (l = bias + hW and sum softplus(l)) are computed once per state, W x once
  per example, and the single term that couples x and h is the dot product h.(W x) (2H flops),
  which the (state, example) vmaps turn into a matmul.
  """
  num_latents: int
  data_dim: int
  encoder_hidden: tuple = (32,)

  def __post_init__(self):
    checks.positive_int("num_latents", self.num_latents)
    checks.positive_int("data_dim", self.data_dim)
    _check_widths("encoder_hidden", self.encoder_hidden)

  def _init_params(self, key, dtype):
    k1, k2, k3 = jax.random.split(key, 3)
    return {"prior_logits": 0.5 * jax.random.normal(k1, (self.num_latents,), dtype),
            "W": jax.random.normal(k2, (self.num_latents, self.data_dim), dtype),
            "bias": 0.5 * jax.random.normal(k3, (self.data_dim,), dtype)}

  def log_joint(self, params, x, h):
    W, bias, a = params["W"], params["bias"], params["prior_logits"]
    hf = h.astype(W.dtype)
    log_prior = jnp.dot(hf, a) - sum_softplus(a)
    logits = bias + hf @ W                                   # [D], depends on h only
    # x.logits = x.bias + h.(W x): the (example, state) coupling costs 2H flops, not 2D.
    return (log_prior - sum_softplus(logits) + jnp.dot(x, bias)
            + jnp.dot(hf, W @ x))

  def log_prior_states(self, params):
    """[2**H] log p(h) = h.a - sum softplus(a) for every state h (factorized Bernoulli)."""
    return _factorized_bernoulli_log_q(params["prior_logits"], self.all_states())

  def prior_bit_logits(self, params):
    return params["prior_logits"]

  def likelihood_logits(self, params, h):
    """bias + h W: h [..., H] -> [..., D]."""
    return params["bias"] + h.astype(params["W"].dtype) @ params["W"]

  def _sample(self, key, params, n):
    key_h, key_x = jax.random.split(key)
    h = jax.random.bernoulli(key_h, jax.nn.sigmoid(params["prior_logits"]),
                             (n, self.num_latents))
    logits = params["bias"] + h.astype(params["W"].dtype) @ params["W"]
    x = jax.random.bernoulli(key_x, jax.nn.sigmoid(logits))
    return x.astype(params["W"].dtype), h.astype(jnp.int32)


# ----------------------------------------------------------------------------------------------
# Restricted Boltzmann machine: binary visible x [D], binary hidden h [H]
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RBM(_Base):
  """E(v, h) = -b.v - c.h - v^T W h; p(v, h) = exp(-E(v, h)) / Z (Smolensky 1986; Hinton 2002).

  params {"W": [D, H], "visible_bias" b [D], "hidden_bias" c [H]}. The latents are h, x = v.
  Free energy F(v) = -b.v - sum_j softplus(c_j + (v W)_j), so log p(v) = -F(v) - log Z, and
  p(h|v) = prod_j Bern(h_j; sigmoid(c_j + (v W)_j)) exactly (the closed-form `exact` q).
  log Z sums exp(-F) over the smaller layer (2**min(D, H) states), streamed in chunks.
  """
  num_latents: int
  data_dim: int
  encoder_hidden: tuple = (32,)
  partition_chunk_size: Optional[int] = None  # chunk size of the log Z enumeration

  def __post_init__(self):
    checks.positive_int("num_latents", self.num_latents)
    checks.positive_int("data_dim", self.data_dim)
    _check_widths("encoder_hidden", self.encoder_hidden)
    checks.optional_positive_int("partition_chunk_size", self.partition_chunk_size)

  @property
  def num_hidden(self) -> int:
    return self.num_latents

  def _init_params(self, key, dtype):
    k1, k2, k3 = jax.random.split(key, 3)
    return {"W": 0.5 * jax.random.normal(k1, (self.data_dim, self.num_latents), dtype),
            "visible_bias": 0.5 * jax.random.normal(k2, (self.data_dim,), dtype),
            "hidden_bias": 0.5 * jax.random.normal(k3, (self.num_latents,), dtype)}

  def energy(self, params, v, h):
    """E(v, h) in nats; v [D] (0/1 float), h [H] (0/1 int or float)."""
    hf = h.astype(params["W"].dtype)
    return -(jnp.dot(v, params["visible_bias"]) + jnp.dot(hf, params["hidden_bias"])
             + jnp.dot(v @ params["W"], hf))

  def free_energy(self, params, v):
    """F(v) = -log sum_h exp(-E(v, h)) = -b.v - sum_j softplus(c_j + (v W)_j); v [D]."""
    return -(jnp.dot(v, params["visible_bias"])
             + sum_softplus(params["hidden_bias"] + v @ params["W"]))

  def hidden_free_energy(self, params, h):
    """F_h(h) = -log sum_v exp(-E(v, h)) = -c.h - sum_d softplus(b_d + (W h)_d); h [H]."""
    hf = h.astype(params["W"].dtype)
    return -(jnp.dot(hf, params["hidden_bias"])
             + sum_softplus(params["visible_bias"] + params["W"] @ hf))

  def log_partition(self, params, layer: str = "auto", chunk_size=None):
    """log Z = log sum_{v,h} exp(-E(v, h)), by enumerating one layer exactly (nats).

    layer: "hidden" sums exp(-F_h(h)) over 2**H states, "visible" sums exp(-F(v)) over 2**D
    states, "auto" the smaller. chunk_size (default `partition_chunk_size`) streams the states.
    """
    checks.choice("layer", layer, RBM_PARTITION_LAYERS)
    if layer == "auto":
      layer = "hidden" if self.num_latents <= self.data_dim else "visible"
    chunk_size = self.partition_chunk_size if chunk_size is None else chunk_size
    dummy = jnp.zeros((), params["W"].dtype)  # the "example" of a sum that has none
    if layer == "hidden":
      term = lambda p, _, h: -self.hidden_free_energy(p, h)
      space = StateSpace(self.num_latents)
    else:
      term = lambda p, _, v: -self.free_energy(p, v.astype(p["W"].dtype))
      space = StateSpace(self.data_dim)
    return log_evidence(term, dummy, space, chunk_size, params=params)

  def log_joint(self, params, x, h):
    """log p(x, h) = -E(x, h) - log Z (log Z does not depend on x or h: vmaps leave it
    unbatched)."""
    return -self.energy(params, x, h) - self.log_partition(params)

  def log_marginal(self, params, x, chunk_size=None):
    """Exact log p(x) = -F(x) - log Z through the free energy."""
    return -self.free_energy(params, x) - self.log_partition(params, chunk_size=chunk_size)

  def hidden_logits(self, params, v):
    """c + v W: logits of p(h_j = 1 | v); v [..., D] -> [..., H]."""
    return params["hidden_bias"] + v @ params["W"]

  def visible_logits(self, params, h):
    """b + W h: logits of p(v_d = 1 | h); h [..., H] -> [..., D]."""
    return params["visible_bias"] + h.astype(params["W"].dtype) @ params["W"].T

  def log_prior_states(self, params):
    """[2**H] the marginal log p(h) = -F_h(h) - log Z for every hidden state (enumerated)."""
    states = self.all_states()
    return (-jax.vmap(lambda h: self.hidden_free_energy(params, h))(states)
            - self.log_partition(params))

  def likelihood_logits(self, params, h):
    """p(v | h) = prod_d Bern(v_d; sigmoid(b + W h)): `visible_logits`, [..., D]."""
    return self.visible_logits(params, h)

  def log_posterior(self, params, x, h):
    """Closed form: p(h|x) = prod_j Bern(h_j; sigmoid(c_j + (x W)_j))."""
    return _factorized_bernoulli_log_q(self.hidden_logits(params, x), h)

  def sample_posterior(self, params, x, key):
    """Closed form: h_j ~ Bern(sigmoid(c_j + (x W)_j)) independently: int32 [num_latents]."""
    return _sample_factorized_bernoulli(self.hidden_logits(params, x), key)

  def _sample(self, key, params, n):
    """Exact samples: h from its marginal p(h) ∝ exp(-F_h(h)) by enumeration, then v | h."""
    if self.num_latents > MAX_RBM_SAMPLE_HIDDEN:
      raise ValueError(f"exact RBM sampling enumerates 2**num_latents hidden states; "
                       f"num_latents={self.num_latents} exceeds {MAX_RBM_SAMPLE_HIDDEN}")
    key_h, key_x = jax.random.split(key)
    space = self.state_space()
    states = space.states_from_index(jnp.arange(space.num_states, dtype=jnp.int32))
    logits = -jax.vmap(lambda h: self.hidden_free_energy(params, h))(states)
    idx = jax.random.categorical(key_h, logits, shape=(n,))
    h = states[idx]
    x = jax.random.bernoulli(key_x, jax.nn.sigmoid(self.visible_logits(params, h)))
    return x.astype(params["W"].dtype), h.astype(jnp.int32)


# ----------------------------------------------------------------------------------------------
# VAE with a few binary latents
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class BinaryLatentVAE(_Base):
  """p(h) = prod_j Bern(h_j; sigmoid(prior_logits_j)); p(x|h) from a Flax MLP decoder:
  Bernoulli logits [D] (likelihood "bernoulli", binary x) or a mean and log-scale [2D] of a
  diagonal Gaussian (likelihood "gaussian", continuous x). q(h|x): a factorized Bernoulli from an
  MLP encoder (Kingma & Welling 2014, with discrete h summed exactly instead of reparameterized).

  params {"prior_logits": [H], "decoder": flax params}.
  """
  num_latents: int
  data_dim: int
  likelihood: str = "bernoulli"
  encoder_hidden: tuple = (32,)
  decoder_hidden: tuple = (32,)

  def __post_init__(self):
    checks.positive_int("num_latents", self.num_latents)
    checks.positive_int("data_dim", self.data_dim)
    checks.choice("likelihood", self.likelihood, LIKELIHOODS)
    _check_widths("encoder_hidden", self.encoder_hidden)
    _check_widths("decoder_hidden", self.decoder_hidden)

  def _decoder(self) -> MLP:
    out = self.data_dim * (1 if self.likelihood == "bernoulli" else 2)
    return MLP(self.decoder_hidden, out)

  def _init_params(self, key, dtype):
    k1, k2 = jax.random.split(key)
    dec = self._decoder().init(k2, jnp.zeros((self.num_latents,), dtype))
    return {"prior_logits": 0.5 * jax.random.normal(k1, (self.num_latents,), dtype),
            "decoder": _cast(dec, dtype)}

  def decode(self, params, h):
    """Decoder output for h [..., H]: logits [..., D] or (mean, log_scale) each [..., D]."""
    out = self._decoder().apply(params["decoder"], h.astype(params["prior_logits"].dtype))
    if self.likelihood == "bernoulli":
      return out
    return out[..., :self.data_dim], out[..., self.data_dim:]

  def log_joint(self, params, x, h):
    a = params["prior_logits"]
    log_prior = jnp.sum(bernoulli_log_prob(a, h.astype(a.dtype)))
    if self.likelihood == "bernoulli":  # x.logits - sum softplus(logits): softplus per state
      logits = self.decode(params, h)
      return log_prior + jnp.dot(x, logits) - sum_softplus(logits)
    mean, log_scale = self.decode(params, h)
    return log_prior + jnp.sum(normal_log_prob(x, mean, log_scale))

  def log_prior_states(self, params):
    """[2**H] log p(h) = h.a - sum softplus(a) for every state h (factorized Bernoulli)."""
    return _factorized_bernoulli_log_q(params["prior_logits"], self.all_states())

  def prior_bit_logits(self, params):
    return params["prior_logits"]

  def likelihood_logits(self, params, h):
    """The decoder's Bernoulli logits [..., D] (likelihood 'bernoulli' only)."""
    if self.likelihood != "bernoulli":
      return super().likelihood_logits(params, h)
    return self.decode(params, h)

  def _sample(self, key, params, n):
    key_h, key_x = jax.random.split(key)
    h = jax.random.bernoulli(key_h, jax.nn.sigmoid(params["prior_logits"]),
                             (n, self.num_latents)).astype(jnp.int32)
    dtype = params["prior_logits"].dtype
    if self.likelihood == "bernoulli":
      x = jax.random.bernoulli(key_x, jax.nn.sigmoid(self.decode(params, h))).astype(dtype)
    else:
      mean, log_scale = self.decode(params, h)
      x = mean + jnp.exp(log_scale) * jax.random.normal(key_x, mean.shape, dtype)
    return x, h


_init_params_jit = jax.jit(lambda model, key, dtype: model._init_params(key, dtype),
                           static_argnums=(0, 2))
_init_q_jit = jax.jit(lambda model, key, dtype: model._init_q(key, dtype), static_argnums=(0, 2))
_sample_jit = jax.jit(lambda model, key, params, n: model._sample(key, params, n),
                      static_argnums=(0, 3))

MODELS = {
    "bernoulli_mixture": BernoulliMixture,
    "gaussian_mixture": GaussianMixture,
    "sbn": SigmoidBeliefNet,
    "rbm": RBM,
    "vae": BinaryLatentVAE,
}


# ----------------------------------------------------------------------------------------------
# Batch bounds with params as traced arguments
# ----------------------------------------------------------------------------------------------


def _pair_log_joint(model, pair, x, h):
  """log p(x, h) with pair = (params, q_params) (bound_report's params convention)."""
  return model.log_joint(pair[0], x, h)


def _pair_log_q(model, pair, x, h):
  """log q(h | x) with pair = (params, q_params)."""
  return model.log_q(pair[1], x, h)


def _report(model, params, q_params, xs, chunk_size):
  return bound_report(functools.partial(_pair_log_joint, model),
                      functools.partial(_pair_log_q, model), xs, model.state_space(),
                      chunk_size, params=(params, q_params))


def _pair_sample_q(model, pair, x, key):
  """One h ~ q(h | x) with pair = (params, q_params) (iwae_bound's params convention)."""
  return model.sample_q(pair[1], x, key)


def iwae_bounds(model, params, q_params, xs, key, num_samples: int, chunk_size=None,
                alpha: float = 0.0) -> dict:
  """`vdm.elbo.iwae_bound` of the model with q = (model.log_q, model.sample_q) at q_params,
  for a batch xs [B, data_dim]: dict of [B] arrays bound, iwae, elbo (nats), log_weight_var
  (nats^2), ess. K = num_samples draws per example; compiled once per model, K, chunk_size,
  alpha and shapes (params and q_params are traced)."""
  return iwae_bound(functools.partial(_pair_log_joint, model),
                    functools.partial(_pair_log_q, model),
                    functools.partial(_pair_sample_q, model), xs, key, num_samples,
                    params=(params, q_params), chunk_size=chunk_size, alpha=alpha)


def bounds(model, params, q_params, xs, chunk_size=None) -> dict:
  """`bound_report` of the model for a batch xs [B, data_dim]: dict of [B] arrays
  log_evidence, elbo, kl, q_mass, nan_count (nats). Compiled once per model and shapes
  (bound_report's jit; params and q_params are traced)."""
  return _report(model, params, q_params, xs, chunk_size)


def mean_elbo(model, params, q_params, xs, chunk_size=None):
  """Mean exact ELBO over the batch xs [B, data_dim] in nats (differentiable, jit-able)."""
  return jnp.mean(_report(model, params, q_params, xs, chunk_size)["elbo"])


# ----------------------------------------------------------------------------------------------
# Fitting
# ----------------------------------------------------------------------------------------------


class FitResult(NamedTuple):
  params: Params
  q_params: Params
  elbo_history: np.ndarray  # [num_steps + 1] mean ELBO (nats) before each step, then final


def fit(model, params, q_params, data, num_steps: int,
        optimizer: optax.GradientTransformation, chunk_size=None, train_model: bool = True,
        train_q: bool = True) -> FitResult:
  """Maximize the mean exact ELBO over `data` [N, data_dim] (full batch) with `optimizer`.

  The gradient of the enumerated ELBO w.r.t. model and q parameters is exact. The steps run in
  one jitted `lax.scan`. `train_model` / `train_q` freeze either set (e.g. fit q alone).
  Note that q_params from `exact_posterior_q` hold their own copy of the model parameters: the
  q is the posterior of that copy, not of the parameters being trained.
  """
  checks.positive_int("num_steps", num_steps)
  if not (train_model or train_q):
    raise ValueError("fit needs train_model or train_q to be True")
  data = jnp.asarray(data)
  trainable = (params if train_model else None, q_params if train_q else None)

  def objective(train):
    p = train[0] if train_model else params
    q = train[1] if train_q else q_params
    return -mean_elbo(model, p, q, data, chunk_size)

  def step(carry, _):
    train, opt_state = carry
    loss, grads = jax.value_and_grad(objective)(train)
    updates, opt_state = optimizer.update(grads, opt_state, train)
    return (optax.apply_updates(train, updates), opt_state), -loss

  @jax.jit
  def run(train):
    (train, _), history = jax.lax.scan(step, (train, optimizer.init(train)), None,
                                       length=num_steps)
    return train, jnp.concatenate([history, -objective(train)[None]])

  train, history = run(trainable)
  new_params = train[0] if train_model else params
  new_q = train[1] if train_q else q_params
  return FitResult(new_params, new_q, np.asarray(history))


class EMResult(NamedTuple):
  params: Params
  elbo_history: np.ndarray  # [2 * num_iters + 1]: initial log p, then after each M and E step


def variational_em(model, params, data, num_iters: int) -> EMResult:
  """Variational EM with exact E-steps and closed-form M-steps (mixtures).

  E-step: q := p(h | x; theta_t) (the `exact` family at frozen parameters), so ELBO = log p(x).
  M-step: theta_{t+1} = argmax_theta E_q[log p(x, h; theta)] (`model.m_step`).
  elbo_history alternates mean ELBO(q_t, theta_t) = log p(x; theta_t) (after an E-step) and
  ELBO(q_t, theta_{t+1}) (after the M-step); the sequence is non-decreasing.
  """
  checks.positive_int("num_iters", num_iters)
  if not hasattr(model, "m_step"):
    raise ValueError(f"variational_em needs a closed-form M-step; model "
                     f"{type(model).__name__} has none (allowed: BernoulliMixture, "
                     f"GaussianMixture). Use fit() for the other models.")
  data = jnp.asarray(data)

  @jax.jit
  def iteration(p):
    q = model.exact_posterior_q(p)                      # E-step (q frozen at p)
    after_e = mean_elbo(model, p, q, data)
    new_p = model.m_step(p, data, model.responsibilities(p, data))   # M-step
    after_m = mean_elbo(model, new_p, q, data)
    return new_p, after_e, after_m

  history = []
  for _ in range(num_iters):
    params, after_e, after_m = iteration(params)
    history += [float(after_e), float(after_m)]
  history.append(float(mean_elbo(model, params, model.exact_posterior_q(params), data)))
  return EMResult(params, np.asarray(history))
