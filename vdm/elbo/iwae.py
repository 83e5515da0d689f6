"""Importance-weighted bounds on log p(x) from K samples of q(h|x).

For one example x, a model p(x, h), a proposal q(h|x) and K iid draws h_1..h_K ~ q(h|x), the
log importance weights are

  log w_k = log p(x, h_k) - log q(h_k | x)                                           (1)

and, in nats,

  L_K     = log (1/K) sum_k w_k                  (Burda et al. 2016, eq. 8: IWAE)        (2)
  L_alpha = 1/(1-alpha) log (1/K) sum_k w_k^(1-alpha),  alpha in [0, 1)
                                                 (Li & Turner 2016, eq. 5, the Monte Carlo
                                                  estimate of the Renyi bound)           (3)
  ELBO_K  = (1/K) sum_k log w_k                  (an unbiased estimate of the ELBO)      (4)

E[L_K] <= log p(x) for every K, E[L_K] is non-decreasing in K and tends to log p(x)
(Burda et al. 2016, Thm. 1); E[L_1] = E[ELBO_K] = ELBO. For a fixed set of draws, L_alpha is
the log of the power mean of order 1 - alpha of the weights, so ELBO_K <= L_alpha <= L_K,
L_alpha is non-increasing in alpha, L_0 = L_K, and L_alpha -> ELBO_K as alpha -> 1. With q the
exact posterior p(h|x) every weight equals p(x), so L_K = L_alpha = ELBO_K = log p(x) for every
draw.

Conventions (those of `vdm.elbo.enumerate`, params form only). The user functions handle ONE
example x and ONE latent h:

  log_joint(params, x, h) -> log p(x, h)   scalar, nats
  log_q(params, x, h)     -> log q(h | x)  scalar, nats
  sample_q(params, x, key) -> h            one draw from q(h | x) (any pytree of arrays; an
                                           int32 [num_latents] state for `vdm.elbo.models`)

All three receive the same `params` pytree (e.g. (model_params, q_params)), a traced argument:
new values reuse the compiled program. The functions are static arguments keyed by their code
and closed-over values (`vdm.static_fn`), so a fresh lambda with the same code does too.
There is no two-argument form here: with params=None the functions still receive params = ().

Random numbers. Example b of the batch (its position in xs) uses key_b = fold_in(key, b), and
its sample k (k = 0..K-1) uses fold_in(key_b, k). So the draws of an example depend only on
(key, b, k): not on the batch size, not on chunk_size, and the K = 100 draws are the first 100
of the K = 1000 draws with the same key.

Memory. The K samples are visited chunk_size at a time inside one `lax.scan`, with a streaming
logsumexp (running max and rescaled sums) for (2) and (3), a streaming sum of squared weights
for the effective sample size, and a streaming mean and sum of squared deviations (Chan et al.
1979 pairwise update) for (4) and the variance of the log weights. Memory is
O(B * chunk_size) times the size of one sample's intermediates, whatever K is.
"""
from __future__ import annotations

import functools
import math
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from vdm import checks
from vdm.static_fn import static_fn

# chunk_size=None: chunks of max(1, DEFAULT_CHUNK_ELEMENTS // B) samples (at most K), i.e.
# about this many (example, sample) pairs per chunk: small enough to stay in cache on a CPU
# (about 2x faster than one chunk of all K = 1000 samples for B = 32 in the benchmark
# experiments/bench_likelihood.py), large enough to keep the per-chunk overhead small.
DEFAULT_CHUNK_ELEMENTS = 8192


class _Accum(NamedTuple):
  """Running per-example statistics of the log weights seen so far (each [B])."""
  max_log_weight: jnp.ndarray  # running max m of log w
  sum_w: jnp.ndarray           # sum_k exp(log w_k - m)
  sum_w2: jnp.ndarray          # sum_k exp(2 (log w_k - m))      (effective sample size)
  sum_w_renyi: jnp.ndarray     # sum_k exp((1 - alpha)(log w_k - m))   (alpha > 0 only)
  mean: jnp.ndarray            # mean of the log weights so far
  m2: jnp.ndarray              # sum of squared deviations of the log weights from the mean


def _log_weights(log_joint, log_q, sample_q, params, x, key_b, sample_index, dtype):
  """log w_k (1) for one example x and the samples sample_index [C] -> [C].

  The vmap runs over the samples only, so work that depends on x alone (an encoder, an
  enumerated posterior) is computed once per example, not once per sample.
  """
  def one(k):
    h = sample_q(params, x, jax.random.fold_in(key_b, k))
    lj = jnp.asarray(log_joint(params, x, h))
    lq = jnp.asarray(log_q(params, x, h))
    return lj.astype(dtype) - lq.astype(dtype)
  return jax.vmap(one)(sample_index)


def _check_scalar(name, shape_dtype):
  if not hasattr(shape_dtype, "shape") or shape_dtype.shape != ():
    shape = getattr(shape_dtype, "shape", type(shape_dtype).__name__)
    raise ValueError(f"{name}(params, x, h) must return a scalar (nats) for one example and "
                     f"one sample, got shape {shape}")


def _iwae_impl(log_joint, log_q, sample_q, num_samples, chunk_size, alpha, params, xs, key):
  """The jitted body; see `iwae_bound`. Static: the three functions, K, chunk size, alpha."""
  batch = jax.tree_util.tree_leaves(xs)[0].shape[0]
  x0 = jax.tree_util.tree_map(lambda a: a[0], xs)

  def probe():
    h = sample_q(params, x0, key)
    return log_joint(params, x0, h), log_q(params, x0, h)

  probe_lj, probe_lq = jax.eval_shape(probe)
  _check_scalar("log_joint", probe_lj)
  _check_scalar("log_q", probe_lq)
  dtype = jnp.result_type(probe_lj.dtype, probe_lq.dtype, jnp.float32)
  num_chunks = -(-num_samples // chunk_size)
  power = 1.0 - alpha
  keys = jax.vmap(lambda b: jax.random.fold_in(key, b))(jnp.arange(batch, dtype=jnp.int32))

  # Only a last chunk that K does not fill has samples to mask out (static).
  ragged = num_samples % chunk_size != 0

  def body(acc: _Accum, chunk_index):
    start = chunk_index * chunk_size
    index = start + jnp.arange(chunk_size, dtype=jnp.int32)                 # [C]
    lw = jax.vmap(lambda x, k: _log_weights(log_joint, log_q, sample_q, params, x, k, index,
                                            dtype))(xs, keys)               # [B, C]
    if ragged:
      valid = (index < num_samples)[None, :]
      lw = jnp.where(valid, lw, -jnp.inf)
      n_chunk = jnp.minimum(num_samples - start, chunk_size).astype(dtype)
    else:
      n_chunk = jnp.asarray(chunk_size, dtype)
    # Streaming logsumexp; the shift is a constant for the gradient (the bound does not
    # depend on it).
    new_max = jax.lax.stop_gradient(jnp.maximum(acc.max_log_weight, jnp.max(lw, axis=1)))
    safe_max = jnp.where(jnp.isfinite(new_max), new_max, 0.0)
    old_shift = acc.max_log_weight - safe_max                               # <= 0 or -inf
    centered = lw - safe_max[:, None]
    sum_w = acc.sum_w * jnp.exp(old_shift) + jnp.sum(jnp.exp(centered), axis=1)
    sum_w2 = acc.sum_w2 * jnp.exp(2 * old_shift) + jnp.sum(jnp.exp(2 * centered), axis=1)
    if alpha == 0.0:
      sum_w_renyi = acc.sum_w_renyi
    else:
      sum_w_renyi = (acc.sum_w_renyi * jnp.exp(power * old_shift)
                     + jnp.sum(jnp.exp(power * centered), axis=1))
    # Mean and squared deviations of the log weights, merged chunk by chunk (Chan et al.).
    n_old = start.astype(dtype)
    n_new = n_old + n_chunk
    lw_valid = jnp.where(valid, lw, 0.0) if ragged else lw
    chunk_mean = jnp.sum(lw_valid, axis=1) / n_chunk
    dev = lw - chunk_mean[:, None]
    if ragged:
      dev = jnp.where(valid, dev, 0.0)
    chunk_m2 = jnp.sum(dev * dev, axis=1)
    delta = chunk_mean - acc.mean
    mean = acc.mean + delta * (n_chunk / n_new)
    m2 = acc.m2 + chunk_m2 + delta * delta * (n_old * n_chunk / n_new)
    return _Accum(new_max, sum_w, sum_w2, sum_w_renyi, mean, m2), None

  zeros = jnp.zeros((batch,), dtype)
  init = _Accum(jnp.full((batch,), -jnp.inf, dtype), zeros, zeros, zeros, zeros, zeros)
  acc, _ = jax.lax.scan(body, init, jnp.arange(num_chunks, dtype=jnp.int32))
  safe_max = jnp.where(jnp.isfinite(acc.max_log_weight), acc.max_log_weight, 0.0)
  log_k = jnp.asarray(math.log(num_samples), dtype)
  iwae = safe_max + jnp.log(acc.sum_w) - log_k                                       # (2)
  if alpha == 0.0:
    bound = iwae
  else:
    bound = (power * safe_max + jnp.log(acc.sum_w_renyi) - log_k) / power            # (3)
  return {
      "bound": bound,
      "iwae": iwae,
      "elbo": acc.mean,                                                              # (4)
      "log_weight_var": acc.m2 / num_samples,
      "ess": acc.sum_w * acc.sum_w / acc.sum_w2,
  }


# inline=True, as in vdm.elbo.enumerate: inside another trace the computation is inlined; at
# top level it is compiled and cached per (functions, K, chunk_size, alpha, shapes, dtypes).
_iwae_jit = functools.partial(jax.jit, static_argnums=(0, 1, 2, 3, 4, 5),
                              inline=True)(_iwae_impl)


def _check_function(name: str, fn, signature: str) -> Callable:
  if not callable(fn):
    raise ValueError(f"{name} must be a function {signature}, got {fn!r} "
                     f"({type(fn).__name__})")
  return static_fn(fn)


def _check_key(key):
  dtype = getattr(key, "dtype", None)
  shape = getattr(key, "shape", None)
  if dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
    if shape != ():
      raise ValueError(f"key must be a single PRNG key (jax.random.key(seed) or "
                       f"jax.random.PRNGKey(seed)), got a key array of shape {shape}")
    return key
  if dtype is None or shape != (2,) or dtype != np.uint32:
    raise ValueError(f"key must be a single PRNG key (jax.random.key(seed) or "
                     f"jax.random.PRNGKey(seed), uint32 [2]), got {type(key).__name__} with "
                     f"shape {shape} and dtype {dtype}")
  return key


def _check_batch(xs) -> int:
  leaves = jax.tree_util.tree_leaves(xs)
  if not leaves or any(not hasattr(a, "shape") for a in leaves):
    raise ValueError(f"xs must be an array [B, ...] (or a pytree of arrays whose leaves lead "
                     f"with the batch size B), got {type(xs).__name__}")
  sizes = {a.shape[0] if len(a.shape) else None for a in leaves}
  if None in sizes or len(sizes) != 1 or 0 in sizes:
    raise ValueError(f"xs must have a leading batch axis B >= 1 shared by every leaf, got "
                     f"shapes {[tuple(a.shape) for a in leaves]}")
  return sizes.pop()


def iwae_bound(log_joint: Callable, log_q: Callable, sample_q: Callable, xs, key,
               num_samples: int, params: Any = None, chunk_size: Optional[int] = None,
               alpha: float = 0.0) -> dict:
  """K-sample importance-weighted bound L_K (2) or Renyi bound L_alpha (3) for a batch, nats.

  Jitted once per (functions, num_samples, chunk_size, alpha, shapes and dtypes); params, xs
  and key are traced. Vmapped over the batch; the K samples are streamed in chunks (module
  docstring), so K = 10**4 runs in bounded memory.

  Args:
    log_joint: log_joint(params, x, h) -> log p(x, h), a scalar in nats.
    log_q: log_q(params, x, h) -> log q(h | x), a scalar in nats (normalized over h).
    sample_q: sample_q(params, x, key) -> one h ~ q(h | x) (what log_joint and log_q take).
    xs: a batch of examples [B, ...] (or a pytree whose leaves lead with B).
    key: one PRNG key (jax.random.key or jax.random.PRNGKey). Example b uses
      fold_in(key, b) and its sample k fold_in(fold_in(key, b), k).
    num_samples: K >= 1, samples per example.
    params: any pytree handed to the three functions as their first argument (traced);
      None means () (the functions still take it: there is no two-argument form here).
    chunk_size: samples per chunk, >= 1 (None: max(1, DEFAULT_CHUNK_ELEMENTS // B), 256 for
      B = 32); values >= K mean one chunk. Memory grows with B * chunk_size; only the rounding
      of the result depends on it, not the samples.
    alpha: Renyi order in [0, 1); 0 (the default) is IWAE, and then bound == iwae exactly.
  Returns:
    dict of [B] arrays (dtype of log_joint's result, at least float32):
      bound           L_alpha (3) (= L_K (2) for alpha = 0), nats
      iwae            L_K (2), nats, whatever alpha is
      elbo            ELBO_K (4) = mean of the K log weights, an unbiased ELBO estimate, nats
      log_weight_var  (1/K) sum_k (log w_k - ELBO_K)^2, nats^2 (0 for K = 1)
      ess             effective sample size (sum_k w_k)^2 / sum_k w_k^2 of the normalized
                      weights (Kong 1992), in [1, K] (NaN if every weight is 0)
  Raises:
    ValueError naming the argument, before any computation, for a non-callable function,
    num_samples or chunk_size not an integer >= 1, alpha outside [0, 1), a bad key or xs.
  """
  log_joint = _check_function("log_joint", log_joint, "log_joint(params, x, h) -> log p(x, h)")
  log_q = _check_function("log_q", log_q, "log_q(params, x, h) -> log q(h | x)")
  sample_q = _check_function("sample_q", sample_q, "sample_q(params, x, key) -> h ~ q(h | x)")
  num_samples = checks.positive_int("num_samples", num_samples)
  chunk_size = checks.optional_positive_int("chunk_size", chunk_size)
  alpha = checks.number("alpha", alpha, low=0.0, high=1.0, high_open=True)
  batch = _check_batch(xs)
  key = _check_key(key)
  if chunk_size is None:
    chunk_size = max(1, DEFAULT_CHUNK_ELEMENTS // batch)
  chunk_size = min(num_samples, chunk_size)
  return _iwae_jit(log_joint, log_q, sample_q, num_samples, chunk_size, alpha,
                   () if params is None else params, xs, key)
