"""Bits-back coding of discrete data through the latent chain of a diffusion model.

The chain. Data x_0 are integer levels v in {0..K-1}, encoded x = 2v/(K-1) - 1 (DESIGN.md).
The latents y_0, ..., y_{L-1} form a Markov chain under the forward process q, and the model's
reverse process p runs y_{L-1} -> ... -> y_0 -> x:
- DDPM (`encode` / `decode`, `vdm.diffusion.ddpm.GaussianDiffusion`): L = T, y_j = the paper's
  x_{j+1}; q(y_j | y_{j-1}) = N(sqrt(1 - beta_{j+1}) y_{j-1}, beta_{j+1}) (Ho et al. eq. 2; y_{-1}
  = x); p(y_{j-1} | y_j) from `p_mean_variance(model_fn(params, y_j, t=j), y_j, j)` (code
  timestep j), and for j = 0 the discretized-Gaussian decoder p(x | y_0) over the K levels
  (`decoder_log_likelihood` at every level); prior N(0, I) on y_{T-1} = x_T.
- VDM (`encode_vdm` / `decode_vdm`, `vdm.diffusion.vdm`, T discrete steps): L = T + 1, y_j =
  z_{j/T}; q(z_0 | x) = N(alpha_0 x, sigma_0^2), q(z_t | z_s) = N(alpha_t/alpha_s z_s,
  sigma_t^2 (-expm1(gamma_s - gamma_t))) for s = t - 1/T; p(z_s | z_t) from `p_step_mean_std`
  with eps_hat = denoise_fn(params, z_t, gamma_t); decoder p(x | z_0) = `decoder_logits`
  (no network call); prior N(0, I) on z_1 (Kingma et al. 2021, eqs. 11, 15).

Bits-back order (Markov, "BitSwap": Kingma, Abbeel & Ho 2019; Townsend et al. 2020). ENCODE, for
j = 0..L-1: pop y_j with q(y_j | y_{j-1}); push y_{j-1} with p(y_{j-1} | y_j) (for j = 0: push
x with the decoder); finally push y_{L-1} with the prior. DECODE reverses it: pop y_{L-1} with
the prior; for j = L-1..0: pop y_{j-1} with p(. | y_j) (for j = 0: pop x with the decoder),
push y_j with q(y_j | y_{j-1}). Each pop after the first is paid for by the bits just pushed,
so only about one step's worth of seed ("clean") bits is needed, not L steps' worth. The
message grows by
    -log2 p(x | y_0) - sum_j log2 p(y_{j-1} | y_j) - log2 p(y_{L-1}) + sum_j log2 q(y_j | y_{j-1})
bits, whose expectation over the popped trajectory is the negative ELBO (in bits) of the chain
with discretized latents, i.e. `calc_bpd`'s total_bpd * D (or the VDM bound with T steps) up to
the latent discretization.

Latent discretization. Latents live on the grid delta * k, delta = 2**-precision_bits, k an
integer in [-N, N], N = floor(R / delta); they are coded as integer symbols with constriction's
QuantizedGaussian in grid units (mean / delta, std / delta), which truncates the Gaussian to
[-N - 1/2, N + 1/2] and integrates over unit bins. The grid's log(delta) terms cancel between
the pops and pushes of a latent, so the rate approximates the continuous bound when delta is
small against the smallest std of the chain (sqrt(beta_1) = 0.01 for DDPM's linear schedule is
41 grid units at the default precision_bits = 12); the cost of the discretization itself is
O((delta / std)^2) per latent and dimension.

constriction's probabilities have 24 bits and every symbol of a model's range gets at least
2**-24, so a Gaussian over all 2N + 1 = 65537 grid symbols (the defaults) would leak 0.4% of its
mass over the whole range: bits-back pops would then land on far-off latents that often.
Latents are therefore coded with `vdm.coding.ans`'s windowed two-level Gaussians (a coarse bin
with at least 16 bins per std inside +-8 std of the mean, then the offset in the bin, uniform):
a pop from q always lands within 8 std, and a push under p of a latent outside its window
sends an escape flag (24 bits) and codes the latent over the whole grid. `ideal_bits` is the
exact float64 codelength of the coded trajectory under these coded distributions (canonical
parameters); the coder's own overhead, measured - ideal, was 0.001-0.003 bits/dim at T = 20,
D = 8 (tests/test_coding_diffusion.py asserts < 0.02). Escapes are where constriction's 2**-24
floor makes the coder cheaper than `ideal_bits` (a latent 10 std away costs about 48 bits, not
its exact 70): they happen when the model's p is narrower than the spread of the latents it
must code (e.g. fixed_small with a posterior over x_0 that is still multimodal).

Seed ("clean") bits: the first batch's first pops draw from the message's initial contents.
With message=None a fresh `Message.seeded` is sized by `seed_bits_needed` (the largest running
deficit of one batch along the chain, plus 25%); the seed is recovered exactly by decoding and
is reported as `seed_bits`, apart from the net `measured_bits`.

Lockstep batches: a batch of B examples is coded together, each network evaluation serving the
whole batch ([B, ...], jitted with params traced): L network calls (T for either model) per
batch for encode and for decode. Batches go onto the message one after another; decoding takes
them in reverse and returns the examples in their original order. Every parameter goes through
`vdm.coding.ans`'s canonicalization; encoder and decoder compute it with the same jitted
function on the same latents (exact grid values) and batch shapes.

Units: bits (`ideal_bits` per example, message sizes); divide by D for bits/dim.
"""
from __future__ import annotations

import functools
import math
from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from vdm import checks
from vdm.coding import ans
from vdm.diffusion.ddpm import GaussianDiffusion
from vdm.diffusion import vdm as _vdm
from vdm.diffusion.schedules import alpha_sigma_from_gamma
from vdm.static_fn import static_fn

MIN_PRECISION_BITS = 2
MAX_PRECISION_BITS = 16
# At most this many grid symbols (2N + 1): an escaped latent is coded with the fine Gaussian
# over the whole grid, whose leak (2N+1) 2**-24 stays below 1/4.
MAX_GRID_SYMBOLS = 2**22 + 1


class EncodeResult(NamedTuple):
  """What `encode` / `encode_vdm` did (sizes in bits).

  ideal_bits: float64 [N], the codelength of each example's coded trajectory under the exact
    discretized probabilities (float64, from the canonical parameters given to the coder): the
    -log2 of every probability pushed minus those popped. One draw of the (discretized-latent)
    negative ELBO in bits; divide by D for bits/dim.
  measured_bits: int, the message's net growth from the examples (header excluded).
  batch_measured_bits: int64 [num_batches], the growth per batch.
  header_bits: bits of the checksum header (0 without checksum).
  seed_bits: the message's size before encoding.
  message: the message (the one passed in, modified in place).
  seed_words: with message=None, the words of the fresh `Message.seeded(seed_words, seed)`
    (what a full decode leaves); 0 when a message was passed in.
  untouched_words: the bottom words of the message that no pop reached (less a margin of two
    words): decoding never reads them either, so `Message.from_words(words()[u:])` decodes
    the same examples and ends with the initial words less those u (the unused part of a
    generous seed need not be stored).
  """
  ideal_bits: np.ndarray
  measured_bits: int
  batch_measured_bits: np.ndarray
  header_bits: int
  seed_bits: int
  message: ans.Message
  seed_words: int = 0
  untouched_words: int = 0


# ----------------------------------------------------------------------------------------------
# Chains: forward tables (float64 NumPy) and jitted reverse steps
# ----------------------------------------------------------------------------------------------


class _Chain:
  """L latents; forward_coef/forward_std [L] (y_j | y_{j-1}: mean coef * y_{j-1}, data units);
  proxy_std [L]: a lower proxy of p(y_{j-1} | y_j)'s std (the forward posterior's), for the
  seed estimate; `decoder(k0)` -> log-probs [B, ..., K]; `reverse(j, kj)` -> (mean, std)."""
  num_latents: int
  num_levels: int
  forward_coef: np.ndarray
  forward_std: np.ndarray
  proxy_std: np.ndarray


class _DDPMChain(_Chain):

  def __init__(self, diffusion, model_fn, params, delta, dtype, clip_denoised=False):
    self.d, self.fn, self.params, self.delta, self.dtype = (diffusion, static_fn(model_fn),
                                                            params, delta, dtype)
    self.clip = bool(clip_denoised)
    self.num_latents = diffusion.num_timesteps
    self.num_levels = diffusion.num_levels
    self.forward_coef = np.sqrt(1.0 - diffusion.betas)
    self.forward_std = np.sqrt(diffusion.betas)
    # q(x_{s-1} | x_s, x_0) has variance beta~_s (code index s-1); p's cross-entropy is larger.
    self.proxy_std = np.sqrt(np.maximum(diffusion.posterior_variance, 1e-300))

  def decoder(self, k0):
    return _ddpm_decoder(self.d, self.fn, self.params, k0, self.delta, self.dtype, self.clip)

  def reverse(self, j, kj):
    return _ddpm_reverse(self.d, self.fn, self.params, kj, jnp.int32(j), self.delta, self.dtype,
                         self.clip)


def _grid_to_x(k, delta, dtype):
  return k.astype(dtype) * jnp.asarray(delta, dtype)


def _level_values(num_levels, dtype):
  k1 = num_levels - 1
  return (2.0 * jnp.arange(num_levels, dtype=dtype) - k1) / k1


@functools.partial(jax.jit, static_argnums=(0, 1, 4, 5, 6))
def _ddpm_decoder(diffusion, model_fn, params, k0, delta, dtype, clip):
  """log p(x = level | y_0) for every level: [B, ..., K] nats (Ho et al. eq. 13)."""
  x1 = _grid_to_x(k0, delta, dtype)
  t = jnp.zeros((k0.shape[0],), jnp.int32)
  out = diffusion.p_mean_variance(model_fn(params, x1, t), x1, t, clip)
  K = diffusion.num_levels
  shape = x1.shape + (K,)
  levels = jnp.broadcast_to(_level_values(K, dtype), shape)
  mean = jnp.broadcast_to(out["mean"][..., None], shape)
  logvar = jnp.broadcast_to(out["log_variance"][..., None], shape)
  return diffusion.decoder_log_likelihood(levels, mean, logvar)


@functools.partial(jax.jit, static_argnums=(0, 1, 5, 6, 7))
def _ddpm_reverse(diffusion, model_fn, params, kj, j, delta, dtype, clip):
  """p(y_{j-1} | y_j) at code timestep j: (mean, std) in grid units, [B, ...] each; clip: the
  mean from pred_x0 clipped to [-1, 1] (calc_bpd's clip_denoised)."""
  xj = _grid_to_x(kj, delta, dtype)
  t = jnp.full((kj.shape[0],), j, jnp.int32)
  out = diffusion.p_mean_variance(model_fn(params, xj, t), xj, t, clip)
  std = jnp.broadcast_to(jnp.exp(0.5 * out["log_variance"]), xj.shape)
  return out["mean"] / delta, std / delta


class _VDMChain(_Chain):

  def __init__(self, denoise_fn, params, gamma_fn, gamma_params, T, num_levels, delta, dtype):
    self.fn, self.params, self.delta, self.dtype = static_fn(denoise_fn), params, delta, dtype
    self.num_latents = T + 1
    self.num_levels = num_levels
    # gamma at t_j = j / T, j = 0..T, in the compute dtype; the tables below take these values.
    g = jnp.asarray(gamma_fn(gamma_params, jnp.arange(T + 1, dtype=dtype) / T), dtype)
    if g.shape != (T + 1,):
      raise ValueError(f"gamma_fn must map t [T+1] elementwise to gamma [T+1], got {g.shape}")
    self.gammas = g
    g64 = np.asarray(g, np.float64)
    if not np.all(np.isfinite(g64)) or np.any(np.diff(g64) <= 0):
      raise ValueError("gamma_fn must be finite and strictly increasing on t = 0, 1/T, ..., 1")
    alpha2 = 1.0 / (1.0 + np.exp(g64))             # sigmoid(-gamma)
    sigma2 = 1.0 / (1.0 + np.exp(-g64))            # sigmoid(gamma)
    alpha, sigma = np.sqrt(alpha2), np.sqrt(sigma2)
    c = -np.expm1(g64[:-1] - g64[1:])              # 1 - SNR(t)/SNR(s), s = t - 1/T
    self.forward_coef = np.concatenate([[alpha[0]], alpha[1:] / alpha[:-1]])
    self.forward_std = np.concatenate([[sigma[0]], sigma[1:] * np.sqrt(c)])
    # p(z_s | z_t) has exactly the forward posterior's std sigma_s sqrt(c); the decoder none.
    self.proxy_std = np.concatenate([[np.inf], sigma[:-1] * np.sqrt(c)])

  def decoder(self, k0):
    return _vdm_decoder(k0, self.gammas[0], self.num_levels, self.delta, self.dtype)

  def reverse(self, j, kj):
    return _vdm_reverse(self.fn, self.params, kj, self.gammas[j], self.gammas[j - 1],
                        self.delta, self.dtype)


@functools.partial(jax.jit, static_argnums=(2, 3, 4))
def _vdm_decoder(k0, gamma_0, num_levels, delta, dtype):
  """log p(x = level | z_0): [B, ..., K] nats (VDM Sec. 3.3, `decoder_logits`)."""
  z0 = _grid_to_x(k0, delta, dtype)
  alpha_0, _ = alpha_sigma_from_gamma(gamma_0)
  return _vdm.decoder_logits(z0 / alpha_0, gamma_0, num_levels)


@functools.partial(jax.jit, static_argnums=(0, 5, 6))
def _vdm_reverse(denoise_fn, params, kj, gamma_t, gamma_s, delta, dtype):
  """p(z_s | z_t) (`p_step_mean_std`): (mean, std) in grid units, [B, ...] each."""
  zt = _grid_to_x(kj, delta, dtype)
  eps_hat = denoise_fn(params, zt, jnp.full((kj.shape[0],), gamma_t, dtype))
  mean, std = _vdm.p_step_mean_std(zt, eps_hat, gamma_t, gamma_s)
  return mean / delta, jnp.broadcast_to(std, zt.shape) / delta


# ----------------------------------------------------------------------------------------------
# Checks
# ----------------------------------------------------------------------------------------------


def _check_grid(precision_bits, R):
  precision_bits = checks.integer("precision_bits", precision_bits, MIN_PRECISION_BITS,
                                  MAX_PRECISION_BITS)
  R = checks.number("R", R, low=0.0, low_open=True)
  delta = 2.0**-precision_bits
  n = int(math.floor(R / delta))
  if n < 1:
    raise ValueError(f"R must be at least one grid step delta = 2**-{precision_bits}, got {R}")
  if 2 * n + 1 > MAX_GRID_SYMBOLS:
    raise ValueError(f"precision_bits={precision_bits} with R={R} gives {2 * n + 1} latent grid "
                     f"symbols, more than {MAX_GRID_SYMBOLS}; lower precision_bits or R")
  return precision_bits, R, delta, (-n, n)


def _check_levels(data, num_levels, name="data"):
  v = np.asarray(data)
  if v.ndim < 2 or v.shape[0] < 1 or 0 in v.shape:
    raise ValueError(f"{name} must have shape [N, ...] with N >= 1 and at least one data axis, "
                     f"got {v.shape}")
  if np.issubdtype(v.dtype, np.floating):
    if not np.all(np.isfinite(v)) or not np.all(v == np.round(v)):
      raise ValueError(f"{name} must hold integer levels 0..{num_levels - 1} (not the encoded "
                       f"x in [-1, 1]); got non-integer values")
  elif not np.issubdtype(v.dtype, np.integer):
    raise ValueError(f"{name} must be an integer array of levels, got dtype {v.dtype}")
  if v.min() < 0 or v.max() > num_levels - 1:
    raise ValueError(f"{name} must hold integer levels in 0..{num_levels - 1} (K = num_levels = "
                     f"{num_levels}), got values in [{v.min()}, {v.max()}]")
  return v.astype(np.int64)


def _check_dtype(dtype):
  dtype = np.dtype(jnp.asarray(0.0).dtype if dtype is None else dtype)
  if not np.issubdtype(dtype, np.floating):
    raise ValueError(f"dtype must be a float dtype, got {dtype}")
  return dtype


def _check_diffusion(diffusion):
  if not isinstance(diffusion, GaussianDiffusion):
    raise ValueError(f"diffusion must be a vdm.diffusion.ddpm.GaussianDiffusion, got "
                     f"{type(diffusion).__name__}")
  if diffusion.num_levels is None:
    raise ValueError("diffusion: num_levels is None (continuous data), which cannot be coded "
                     "losslessly; bits-back coding needs discrete data (an integer num_levels)")
  return diffusion


def _batches(n, batch_size):
  return [(s, min(s + batch_size, n)) for s in range(0, n, batch_size)]


def seed_bits_needed(chain: _Chain, delta: float, batch: int, dims: int) -> int:
  """An estimate of the seed bits the first batch needs (with a 25% + 64-bit margin).

  The deficit after popping y_j is sum_{i <= j} H_q(i) - sum_{i < j} H_p(i) per dimension,
  with H the differential entropy of a Gaussian in grid units (log2(std/delta sqrt(2 pi e)))
  and the push of y_{i-1} at step i credited with the entropy of the forward posterior (a lower
  proxy of its cost, `proxy_std`; the decoder push is credited 0). The seed must cover the
  largest deficit.
  """
  h = lambda std: np.log2(np.maximum(std / delta, 1e-300) * math.sqrt(2 * math.pi * math.e))
  pops = np.maximum(h(chain.forward_std), 0.0)
  pushes = np.where(np.isfinite(chain.proxy_std), np.maximum(h(chain.proxy_std), 0.0), 0.0)
  pushes[0] = 0.0                                  # the push at step 0 is x (categorical)
  # After the pop of y_j, the pushes of steps 1..j-1 have been made.
  deficit = np.cumsum(pops) - np.concatenate([[0.0, 0.0], np.cumsum(pushes[1:])])[:len(pops)]
  return int(math.ceil(1.25 * max(float(deficit.max()), 0.0) * batch * dims + 64))


# ----------------------------------------------------------------------------------------------
# One batch
# ----------------------------------------------------------------------------------------------


def _f64(a):
  return np.asarray(a, dtype=np.float64)


def _encode_batch(message, chain, v, delta, grid):
  """ENCODE of the module docstring for one batch of levels v [B, ...]; returns (ideal [B],
  the fewest message words after any pop of the batch)."""
  B = v.shape[0]
  K = chain.num_levels
  ideal = np.zeros(B)
  low_water = message.num_words()
  per_ex = lambda a: a.reshape(B, -1).sum(axis=1)
  prev = (2.0 * v - (K - 1)) / (K - 1) / delta            # x in grid units (float64)
  k_prev = None
  for j in range(chain.num_latents):
    mean_q = ans.canonical_mean(chain.forward_coef[j] * prev).ravel()
    std_q = ans.canonical_std(np.full(mean_q.shape, chain.forward_std[j] / delta))
    k = ans.pop_gaussian_windowed(message, mean_q, std_q, grid)
    ans.check_not_dry(message, f"latent {j} with q", True)
    low_water = min(low_water, message.num_words())
    ideal += per_ex(ans.windowed_gaussian_log2prob(k, mean_q, std_q, grid))
    kj = jnp.asarray(k.reshape(v.shape).astype(np.int32))
    if j == 0:
      l2 = ans.canonical_log2_probs(log_probs=_f64(chain.decoder(kj)).reshape(-1, K))
      ans.push_categorical(message, v.ravel(), log2_probs=l2)
      ideal -= per_ex(ans.categorical_log2prob(v.ravel(), l2))
    else:
      mean_p, std_p = chain.reverse(j, kj)
      mean_p, std_p = ans.canonical_mean(_f64(mean_p)).ravel(), ans.canonical_std(_f64(std_p))
      std_p = std_p.ravel()
      ans.push_gaussian_escaped(message, k_prev, mean_p, std_p, grid)
      ideal -= per_ex(ans.escaped_gaussian_log2prob(k_prev, mean_p, std_p, grid))
    k_prev, prev = k, k.reshape(v.shape).astype(np.float64)
  mean_0 = np.zeros(k_prev.shape)
  std_0 = ans.canonical_std(np.full(k_prev.shape, 1.0 / delta))
  ans.push_gaussian_escaped(message, k_prev, mean_0, std_0, grid)
  ideal -= per_ex(ans.escaped_gaussian_log2prob(k_prev, mean_0, std_0, grid))
  return ideal, low_water


def _decode_batch(message, chain, shape, delta, grid):
  """DECODE of the module docstring for one batch of shape [B, ...]; returns levels int64."""
  K = chain.num_levels
  size = int(np.prod(shape))
  std_0 = ans.canonical_std(np.full(size, 1.0 / delta))
  k = ans.pop_gaussian_escaped(message, np.zeros(size), std_0, grid)
  ans.check_not_dry(message, "the last latent with the prior", False)
  v = None
  for j in range(chain.num_latents - 1, -1, -1):
    kj = jnp.asarray(k.reshape(shape).astype(np.int32))
    if j == 0:
      l2 = ans.canonical_log2_probs(log_probs=_f64(chain.decoder(kj)).reshape(-1, K))
      v = ans.pop_categorical(message, log2_probs=l2).reshape(shape)
      ans.check_not_dry(message, "the data with the decoder", False)
      prev = (2.0 * v - (K - 1)) / (K - 1) / delta
      k_prev = None
    else:
      mean_p, std_p = chain.reverse(j, kj)
      mean_p, std_p = ans.canonical_mean(_f64(mean_p)).ravel(), ans.canonical_std(_f64(std_p))
      k_prev = ans.pop_gaussian_escaped(message, mean_p, std_p.ravel(), grid)
      ans.check_not_dry(message, f"latent {j - 1} with p", False)
      prev = k_prev.reshape(shape).astype(np.float64)
    mean_q = ans.canonical_mean(chain.forward_coef[j] * prev).ravel()
    std_q = ans.canonical_std(np.full(mean_q.shape, chain.forward_std[j] / delta))
    ans.push_gaussian_windowed(message, k, mean_q, std_q, grid)
    k = k_prev
  return v


def _encode(chain, data, message, config, delta, grid, batch_size, checksum, seed):
  n = data.shape[0]
  dims = int(np.prod(data.shape[1:]))
  batch_size = n if batch_size is None else checks.positive_int("batch_size", batch_size)
  seed_words = 0
  if message is None:
    need = seed_bits_needed(chain, delta, min(batch_size, n), dims)
    seed_words = max(2, -(-need // 32) + 2)
    message = ans.Message.seeded(seed_words, seed)
  ans._check_message(message)
  seed_bits = message.num_bits()
  ideal = np.zeros(n)
  batch_bits = []
  low_water = message.num_words()
  for lo, hi in _batches(n, batch_size):
    before = message.num_bits()
    ideal[lo:hi], low = _encode_batch(message, chain, data[lo:hi], delta, grid)
    low_water = min(low_water, low)
    batch_bits.append(message.num_bits() - before)
  measured = message.num_bits() - seed_bits
  header_bits = 0
  if checksum:
    before = message.num_bits()
    ans.push_header(message, config, n, batch_size,
                    ans.crc32(data.astype(np.int32)))
    header_bits = message.num_bits() - before
  return EncodeResult(ideal, int(measured), np.asarray(batch_bits, np.int64), int(header_bits),
                      int(seed_bits), message, int(seed_words), max(0, low_water - 2))


def _decode(chain, message, num_examples, data_shape, config, delta, grid, batch_size,
            checksum):
  ans._check_message(message)
  n = checks.positive_int("num_examples", num_examples)
  data_shape = tuple(checks.positive_int(f"data_shape[{i}]", s)
                     for i, s in enumerate(tuple(data_shape)))
  if not data_shape:
    raise ValueError("data_shape must be the shape of one example (at least one axis)")
  batch_size = n if batch_size is None else checks.positive_int("batch_size", batch_size)
  data_crc = None
  if checksum:
    data_crc = ans.check_header(message, config, n, batch_size)
  out = np.zeros((n,) + data_shape, np.int64)
  for lo, hi in reversed(_batches(n, batch_size)):
    try:
      out[lo:hi] = _decode_batch(message, chain, (hi - lo,) + data_shape, delta, grid)
    except ans.MessageError:
      raise
    except (ValueError, KeyError) as e:   # e.g. a decoded latent outside q's window
      raise ans.MessageError(f"message: decoding examples {lo}..{hi - 1} failed ({e}): the "
                             f"message is corrupted, or the model or settings differ from the "
                             f"encoder's") from None
  if checksum:
    ans.check_data_crc(data_crc, out.astype(np.int32))
  return out


def _ddpm_setup(diffusion, model_fn, params, precision_bits, R, dtype, checksum, data_shape,
                clip_denoised):
  _check_diffusion(diffusion)
  if not callable(model_fn):
    raise ValueError(f"model_fn must be callable, got {type(model_fn).__name__}")
  precision_bits, R, delta, grid = _check_grid(precision_bits, R)
  dtype = _check_dtype(dtype)
  checks.boolean("checksum", checksum)
  clip = checks.boolean("clip_denoised", clip_denoised)
  chain = _DDPMChain(diffusion, model_fn, params, delta, dtype, clip)
  config = (f"vdm.coding.diffusion.ddpm|{diffusion!r}|{diffusion.betas.tobytes().hex()[:64]}|"
            f"{precision_bits}|{R!r}|{dtype}|{tuple(data_shape)}" + ("|clip" if clip else ""))
  return chain, delta, grid, config


def _vdm_setup(denoise_fn, params, gamma_fn, gamma_params, T, num_levels, precision_bits, R,
               dtype, checksum, data_shape):
  if not callable(denoise_fn) or not callable(gamma_fn):
    raise ValueError("denoise_fn and gamma_fn must be callable")
  T = checks.positive_int("T", T)
  num_levels = checks.num_levels("num_levels", num_levels)
  precision_bits, R, delta, grid = _check_grid(precision_bits, R)
  dtype = _check_dtype(dtype)
  checks.boolean("checksum", checksum)
  chain = _VDMChain(denoise_fn, params, gamma_fn, gamma_params, T, num_levels, delta, dtype)
  config = (f"vdm.coding.diffusion.vdm|{T}|{num_levels}|"
            f"{ans.crc32(np.asarray(chain.gammas, np.float64))}|{precision_bits}|{R!r}|{dtype}|"
            f"{tuple(data_shape)}")
  return chain, delta, grid, config


# ----------------------------------------------------------------------------------------------
# Entry points
# ----------------------------------------------------------------------------------------------


def encode(diffusion: GaussianDiffusion, model_fn: Callable, params, data,
           message: Optional[ans.Message] = None, *, precision_bits: int = 12, R: float = 8.0,
           batch_size: Optional[int] = None, checksum: bool = True, seed: int = 0,
           dtype=None, clip_denoised: bool = False) -> EncodeResult:
  """Bits-back encode integer data through a DDPM's latent chain (module docstring).

  Args:
    diffusion: the GaussianDiffusion (any mean_type and var_type; integer num_levels K).
    model_fn: model_fn(params, x_t [B, ...], t int32 [B]) -> model output (as for calc_bpd).
    params: the model parameters (traced: new values do not recompile).
    data: [N, ...] integer levels in 0..K-1 (e.g. [N, H, W, C]).
    message: the message to push onto (modified in place); None: a fresh
      Message.seeded(words, seed) sized by `seed_bits_needed`.
    precision_bits: latent grid step delta = 2**-precision_bits, in [2, 16].
    R: latents are coded on [-R, R] (> 0).
    batch_size: examples coded in lockstep (default all N); decode needs the same.
    checksum: push a 160-bit header that `decode` checks.
    dtype: the network's input dtype (default: jax's default float).
    clip_denoised: p's mean from pred_x0 clipped to [-1, 1], as calc_bpd(clip_denoised=True).
  Returns:
    EncodeResult; `ideal_bits / D` is one draw of the bound in bits/dim (compare calc_bpd's
    total_bpd with the same clip_denoised).
  Raises:
    ValueError naming the argument (before any coding) for bad data, precision_bits, R, ...;
    `ans.MessageError` if the message's seed is too short.
  """
  checks.integer("precision_bits", precision_bits, MIN_PRECISION_BITS, MAX_PRECISION_BITS)
  data = _check_levels(data, _check_diffusion(diffusion).num_levels)
  chain, delta, grid, config = _ddpm_setup(diffusion, model_fn, params, precision_bits, R, dtype,
                                           checksum, data.shape[1:], clip_denoised)
  return _encode(chain, data, message, config, delta, grid, batch_size, checksum, seed)


def decode(diffusion: GaussianDiffusion, model_fn: Callable, params, message: ans.Message,
           num_examples: int, data_shape, *, precision_bits: int = 12, R: float = 8.0,
           batch_size: Optional[int] = None, checksum: bool = True, dtype=None,
           clip_denoised: bool = False) -> np.ndarray:
  """Decode num_examples examples of shape data_shape from `message` (the arguments of
  `encode`). Returns int64 levels [num_examples, *data_shape] in the original order; the message
  is left as it was before encoding. Raises `ans.MessageError` (a ValueError) for a truncated or
  corrupted message or other settings, ValueError for bad arguments."""
  chain, delta, grid, config = _ddpm_setup(diffusion, model_fn, params, precision_bits, R, dtype,
                                           checksum, tuple(data_shape), clip_denoised)
  return _decode(chain, message, num_examples, data_shape, config, delta, grid, batch_size,
                 checksum)


def encode_vdm(denoise_fn: Callable, params, gamma_fn: Callable, gamma_params, T: int,
               num_levels: int, data, message: Optional[ans.Message] = None, *,
               precision_bits: int = 12, R: float = 8.0, batch_size: Optional[int] = None,
               checksum: bool = True, seed: int = 0, dtype=None) -> EncodeResult:
  """Bits-back encode integer data through the T-step discrete-time VDM chain z_0 .. z_1.

  denoise_fn(params, z_t [B, ...], gamma_t [B]) -> eps_hat; gamma_fn(gamma_params, t) -> gamma(t)
  (increasing). The other arguments as for `encode`. ideal_bits is one draw of the VDM bound
  with T steps (`vdm_losses(..., T=T)`'s loss, in bits: loss / ln 2), up to the latent grid.
  T + 1 latents, T network calls per batch.
  """
  checks.integer("precision_bits", precision_bits, MIN_PRECISION_BITS, MAX_PRECISION_BITS)
  data = _check_levels(data, checks.num_levels("num_levels", num_levels))
  chain, delta, grid, config = _vdm_setup(denoise_fn, params, gamma_fn, gamma_params, T,
                                          num_levels, precision_bits, R, dtype, checksum,
                                          data.shape[1:])
  return _encode(chain, data, message, config, delta, grid, batch_size, checksum, seed)


def decode_vdm(denoise_fn: Callable, params, gamma_fn: Callable, gamma_params, T: int,
               num_levels: int, message: ans.Message, num_examples: int, data_shape, *,
               precision_bits: int = 12, R: float = 8.0, batch_size: Optional[int] = None,
               checksum: bool = True, dtype=None) -> np.ndarray:
  """The inverse of `encode_vdm` (same arguments): int64 levels [num_examples, *data_shape]."""
  chain, delta, grid, config = _vdm_setup(denoise_fn, params, gamma_fn, gamma_params, T,
                                          num_levels, precision_bits, R, dtype, checksum,
                                          tuple(data_shape))
  return _decode(chain, message, num_examples, data_shape, config, delta, grid, batch_size,
                 checksum)
