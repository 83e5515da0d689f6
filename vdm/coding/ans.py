"""A thin stack of entropy-coded symbols over `constriction`'s ANS coder; it knows nothing of models.

A `Message` wraps a `constriction.stream.stack.AnsCoder` (Duda 2009; 32-bit words, 24-bit
fixed-point probabilities, 64-bit state). `push_*` encodes symbols onto the top of the stack
(the message grows by about -log2 P(symbol) bits), `pop_*` decodes symbols off the top with a
given model (the message shrinks by about -log2 P(symbol) bits). Popping with a distribution
that was not used to push the top symbols is how bits-back coding draws latent samples from
the message (Townsend et al. 2019, "Practical lossless compression with latent variables
using bits back coding", Sec. 2): the popped symbols are then a deterministic function of the
message's bits, distributed (nearly) as the model says when those bits are random.

Conventions of every push/pop pair here:
- `push_X(message, symbols, params...)` then `pop_X(message, params...)` with the same params
  returns the same symbols in the same order, and leaves the message as it was.
- Symbols are 1-D arrays [N] (any integer dtype; passed to constriction as int32); parameters
  have a leading axis [N] (categorical probabilities [N, S]).
- Sizes are in bits.

Determinism rule. The decoder must hand constriction bitwise the same model parameters as the
encoder did, or decoding goes wrong from that symbol on. Every parameter therefore goes through
a `canonical_*` function before it reaches constriction: it is converted to float64 NumPy and
rounded onto a fixed grid,
- Gaussian means to multiples of `MEAN_QUANTUM` = 2**-8 grid units,
- Gaussian stds to the relative grid 2**(j * 2**-10) (log2 std rounded to multiples of
  `LOG2_QUANTUM`), clamped to [`MIN_STD`, `MAX_STD`] grid units,
- Bernoulli logits to multiples of `LOG2_QUANTUM` / log2(e) nats (i.e. the odds on the relative
  grid 2**(j * 2**-10)), clipped to +-`MAX_LOGIT`,
- categorical log-probabilities (after subtracting the row maximum) to multiples of
  `LOG2_QUANTUM` in log2 units, floored at `MIN_LOG2_PROB` (constriction normalizes the row).
Each `canonical_*` function is idempotent, so canonical values may be passed again.
The rounding moves each log2-probability by at most 2**-11 bits (a relative 0.03%; its expected
cost, a KL, is below 1e-7 bits per symbol, and `*_log2prob` include it exactly), and removes
float noise smaller than the grid (e.g. float32 vs
float64 arithmetic, a different summation order), except for a value that lies within that
noise of a rounding boundary. It is a safeguard, not the guarantee: the callers in
`vdm.coding` also compute every parameter with the same compiled function on bitwise the same
inputs (the same batch shapes) in the encoder and the decoder. The ideal codelengths
(`*_log2prob`) are computed from the same canonical parameters.

constriction facts (version 0.5) that shape this module: symbols must be int32; model
parameters may be float32 or float64; `QuantizedGaussian(lo, hi)` truncates the Gaussian to
[lo - 1/2, hi + 1/2], renormalizes and integrates over unit bins, and a std of 0 makes the Rust
code panic (a `BaseException`, not an `Exception`), so stds are clamped here; every symbol of a
model's range gets at least the smallest probability 2**-24 ("leaky" quantization);
`Categorical` normalizes its rows; `perfect=False` is passed explicitly (the default warns);
encoding a symbol outside the range raises KeyError; decoding from an exhausted coder does not
raise but returns the lowest symbols; an `AnsCoder` refuses compressed data that end in a zero
word.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import constriction
import numpy as np
from scipy import special as _special

from vdm import checks

_stack = constriction.stream.stack
_model = constriction.stream.model

# Canonicalization grids (module docstring).
MEAN_QUANTUM = 2.0**-8           # grid units
LOG2_QUANTUM = 2.0**-10          # log2 units (a relative step of 0.07%)
MIN_STD = 2.0**-4                # grid units
MAX_STD = 2.0**30                # grid units
MAX_LOGIT = 60.0                 # nats; sigmoid(60) = 1 - 9e-27
MIN_LOG2_PROB = -200.0           # log2 units, relative to the most probable symbol of a row
# constriction's AnsCoder: 24-bit probabilities, so at most this many symbols per model.
PROBABILITY_BITS = 24
# Symbols of a Uniform model: at most 2**UNIFORM_BITS values per symbol (constriction: < 2**24).
UNIFORM_BITS = 16
# A state holding fewer bits than this after a pop has run dry (see `Message.ran_dry`).
MIN_VALID_BITS = 32


class MessageError(ValueError):
  """A message that cannot be what the encoder produced (too short, truncated, corrupted)."""


class Message:
  """A stack of 32-bit words under an ANS state (a `constriction` AnsCoder), mutable.

  Build one with `Message.seeded(num_words, seed)` (random words, the bits that the first pops
  of bits-back coding draw from), `Message.from_words(words)` (a message read back) or
  `Message()` (empty). `num_bits()` is the exact size in bits (not rounded up to words),
  `words()` a copy of the compressed words (np.uint32 [num_words]; the top of the stack is at
  the end).
  """

  def __init__(self, coder=None):
    self.coder = _stack.AnsCoder() if coder is None else coder

  @classmethod
  def seeded(cls, num_words: int, seed: int) -> "Message":
    """num_words >= 2 uniformly random uint32 words from np.random.default_rng(seed).

    The last word is replaced by 1 if the generator gave 0 (constriction refuses data ending in
    a zero word; probability 2**-32), so the seed always holds at least 33 valid bits.
    """
    num_words = checks.integer("num_words", num_words, minimum=2)
    seed = checks.nonnegative_int("seed", seed)
    words = np.random.default_rng(seed).integers(0, 2**32, size=num_words, dtype=np.uint32)
    words[-1] = max(int(words[-1]), 1)
    return cls.from_words(words)

  @classmethod
  def from_words(cls, words) -> "Message":
    """A message from compressed words (1-D, uint32 values, last word nonzero)."""
    arr = np.asarray(words)
    if arr.ndim != 1 or not (np.issubdtype(arr.dtype, np.integer)):
      raise ValueError(f"words must be a 1-D array of uint32 words, got dtype {arr.dtype} and "
                       f"shape {arr.shape}")
    if arr.size and (arr.min() < 0 or arr.max() >= 2**32):
      raise ValueError("words must be uint32 values in [0, 2**32)")
    arr = np.ascontiguousarray(arr, dtype=np.uint32)
    if arr.size and arr[-1] == 0:
      raise MessageError("words: an ANS message never ends in a zero word; the message was "
                         "truncated or corrupted")
    return cls(_stack.AnsCoder(arr.copy(), seal=False))

  def words(self) -> np.ndarray:
    """A copy of the compressed data: np.uint32 [num_words], top of the stack last."""
    return np.asarray(self.coder.get_compressed(), dtype=np.uint32).copy()

  def num_bits(self) -> int:
    """Exact size in bits (constriction's num_valid_bits: not rounded up to whole words)."""
    return int(self.coder.num_valid_bits())

  def num_words(self) -> int:
    return int(self.coder.num_words())

  def copy(self) -> "Message":
    return Message(self.coder.clone())

  def ran_dry(self) -> bool:
    """True when the ANS state holds fewer than MIN_VALID_BITS bits: pops have consumed more
    than the message held, so the symbols popped last were not drawn from the message's bits
    (constriction then returns the lowest symbols instead of raising)."""
    return self.num_bits() < MIN_VALID_BITS

  def __len__(self):
    return self.num_words()

  def __repr__(self):
    return f"Message({self.num_bits()} bits in {self.num_words()} words)"


def _check_message(message):
  if not isinstance(message, Message):
    raise ValueError(f"message must be a vdm.coding.Message, got {type(message).__name__}")
  return message


# ----------------------------------------------------------------------------------------------
# Canonical parameters (module docstring: determinism rule)
# ----------------------------------------------------------------------------------------------


def _f64(name, a, ndim=None):
  a = np.asarray(a, dtype=np.float64)
  if ndim is not None and a.ndim != ndim:
    raise ValueError(f"{name} must be a {ndim}-D array, got shape {a.shape}")
  if not np.all(np.isfinite(a) | (a == -np.inf)):
    raise ValueError(f"{name} must be finite (or -inf for log-probabilities)")
  return a


def canonical_mean(mean) -> np.ndarray:
  """Gaussian means in grid units -> float64 multiples of MEAN_QUANTUM."""
  mean = _f64("mean", mean)
  if not np.all(np.isfinite(mean)):
    raise ValueError("mean must be finite")
  return np.round(mean / MEAN_QUANTUM) * MEAN_QUANTUM


def canonical_std(std) -> np.ndarray:
  """Gaussian stds in grid units -> float64 on the relative grid 2**(j LOG2_QUANTUM), clamped
  to [MIN_STD, MAX_STD]."""
  std = _f64("std", std)
  if not np.all(np.isfinite(std)) or np.any(std < 0):
    raise ValueError("std must be finite and >= 0")
  log2 = np.log2(np.clip(std, MIN_STD, MAX_STD))
  return np.exp2(np.round(log2 / LOG2_QUANTUM) * LOG2_QUANTUM)


def canonical_logits(logits) -> np.ndarray:
  """Bernoulli logits (nats, log p/(1-p)) -> float64 on the grid, clipped to +-MAX_LOGIT."""
  logits = _f64("logits", logits)
  if np.any(np.isnan(logits)):
    raise ValueError("logits must not be NaN")
  q = LOG2_QUANTUM * math.log(2.0)
  return np.round(np.clip(logits, -MAX_LOGIT, MAX_LOGIT) / q) * q


def probs_to_logits(probs) -> np.ndarray:
  """Bernoulli probabilities p in [0, 1] -> logits log p - log(1 - p) (+-inf at the ends)."""
  p = _f64("probs", probs)
  if np.any((p < 0) | (p > 1)) or np.any(np.isnan(p)):
    raise ValueError("probs must lie in [0, 1]")
  with np.errstate(divide="ignore"):
    return np.log(p) - np.log1p(-p)


def canonical_log2_probs(log_probs=None, probs=None, log2_probs=None) -> np.ndarray:
  """Categorical rows [N, S] -> float64 log2-probabilities on the grid, row maximum 0.

  Exactly one of log_probs (natural log), log2_probs (base 2) or probs (nonnegative); rows may
  be unnormalized. The row maximum is subtracted, the log2 values are rounded to multiples of
  LOG2_QUANTUM and floored at MIN_LOG2_PROB. The result is not normalized: constriction
  normalizes exp2 of it, and `categorical_log2prob` does the same in float64. Idempotent, so
  canonical values may be passed again (as log2_probs).
  """
  if sum(a is not None for a in (log_probs, probs, log2_probs)) != 1:
    raise ValueError("give exactly one of log_probs, log2_probs or probs")
  if probs is not None:
    p = _f64("probs", probs, ndim=2)
    if np.any(p < 0) or np.any(np.isnan(p)):
      raise ValueError("probs must be nonnegative")
    with np.errstate(divide="ignore"):
      l2 = np.log2(p)
  else:
    name = "log_probs" if log_probs is not None else "log2_probs"
    lp = _f64(name, log_probs if log_probs is not None else log2_probs, ndim=2)
    if np.any(np.isnan(lp)) or np.any(lp == np.inf):
      raise ValueError(f"{name} must not be NaN or +inf")
    l2 = lp / math.log(2.0) if log_probs is not None else lp
  if l2.shape[1] < 2 or l2.shape[1] > 2**PROBABILITY_BITS - 1:
    raise ValueError(f"a categorical needs 2 to 2**{PROBABILITY_BITS} - 1 symbols per row, got "
                     f"{l2.shape[1]}")
  top = np.max(l2, axis=1, keepdims=True)
  if not np.all(np.isfinite(top)):
    raise ValueError("every row of the probabilities must have a positive (finite) entry")
  l2 = l2 - top
  return np.maximum(np.round(l2 / LOG2_QUANTUM) * LOG2_QUANTUM, MIN_LOG2_PROB)


# ----------------------------------------------------------------------------------------------
# Ideal codelengths (float64, from canonical parameters)
# ----------------------------------------------------------------------------------------------


def _log_ndtr_diff(a, b):
  """log(Phi(b) - Phi(a)) for a < b elementwise (float64), stable in both tails."""
  a, b = np.broadcast_arrays(np.asarray(a, np.float64), np.asarray(b, np.float64))
  flip = a > 0                       # both in the upper tail: Phi(b)-Phi(a) = Phi(-a)-Phi(-b)
  lo = np.where(flip, -b, a)
  hi = np.where(flip, -a, b)
  log_hi = _special.log_ndtr(hi)
  log_lo = _special.log_ndtr(lo)
  d = np.minimum(log_lo - log_hi, 0.0)
  with np.errstate(divide="ignore"):
    tail = np.where(d > -math.log(2.0), np.log(-np.expm1(d)), np.log1p(-np.exp(d)))
  return log_hi + tail


def gaussian_log2prob(symbols, mean, std, symbol_range) -> np.ndarray:
  """log2 P(symbol) under constriction's QuantizedGaussian(lo, hi): N(mean, std^2) truncated to
  [lo - 1/2, hi + 1/2], renormalized, integrated over [k - 1/2, k + 1/2]. Symbols, mean, std in
  grid units [N]; pass canonical mean and std. Returns float64 [N] (<= 0)."""
  lo, hi = symbol_range
  k = np.asarray(symbols, np.float64)
  mean = np.asarray(mean, np.float64)
  std = np.asarray(std, np.float64)
  num = _log_ndtr_diff((k - 0.5 - mean) / std, (k + 0.5 - mean) / std)
  den = _log_ndtr_diff((lo - 0.5 - mean) / std, (hi + 0.5 - mean) / std)
  return (num - den) / math.log(2.0)


def bernoulli_log2prob(bits, logits) -> np.ndarray:
  """log2 Bern(bit; sigmoid(logit)) elementwise [N]; pass canonical logits (nats)."""
  b = np.asarray(bits, np.float64)
  l = np.asarray(logits, np.float64)
  # log sigmoid(l) for b = 1, log sigmoid(-l) for b = 0: -softplus(-s l) with s = 2b - 1.
  return -np.logaddexp(0.0, -(2.0 * b - 1.0) * l) / math.log(2.0)


def categorical_log2prob(symbols, log2_probs) -> np.ndarray:
  """log2 P(symbol) [N] from canonical (unnormalized) log2-probabilities [N, S], normalized per
  row as constriction does."""
  s = np.asarray(symbols, np.int64)
  l2 = np.asarray(log2_probs, np.float64)
  norm = np.log2(np.sum(np.exp2(l2), axis=1))
  return np.take_along_axis(l2, s[:, None], axis=1)[:, 0] - norm


# ----------------------------------------------------------------------------------------------
# Push / pop
# ----------------------------------------------------------------------------------------------


def _symbols(symbols, n=None, name="symbols"):
  s = np.asarray(symbols)
  if s.ndim != 1 or not np.issubdtype(s.dtype, np.integer):
    raise ValueError(f"{name} must be a 1-D integer array, got dtype {s.dtype}, shape {s.shape}")
  if n is not None and s.shape[0] != n:
    raise ValueError(f"{name} must have {n} entries (one per model), got {s.shape[0]}")
  return np.ascontiguousarray(s, dtype=np.int32)


def _encode(message, symbols, family, *params):
  try:
    message.coder.encode_reverse(symbols, family, *params)
  except KeyError as e:  # constriction: a symbol outside the model's range
    raise ValueError(f"symbols: a symbol lies outside the model's range ({e})") from None


def _decode(message, family, *params):
  return np.asarray(message.coder.decode(family, *params), dtype=np.int64)


def _check_range(symbol_range):
  if len(symbol_range) != 2:
    raise ValueError(f"symbol_range must be (lo, hi), got {symbol_range!r}")
  lo = checks.integer("symbol_range[0]", symbol_range[0])
  hi = checks.integer("symbol_range[1]", symbol_range[1])
  if hi <= lo or hi - lo + 1 > 2**PROBABILITY_BITS - 1:
    raise ValueError(f"symbol_range must have lo < hi and at most 2**{PROBABILITY_BITS} - 1 "
                     f"symbols, got ({lo}, {hi})")
  return lo, hi


def push_gaussian(message: Message, symbols, mean, std, symbol_range) -> None:
  """Push integer symbols [N] in [lo, hi] with QuantizedGaussian(mean [N], std [N]) (all in
  grid units; canonicalized here). Costs about -sum gaussian_log2prob bits."""
  _check_message(message)
  lo, hi = _check_range(symbol_range)
  mean, std = canonical_mean(mean).ravel(), canonical_std(std).ravel()
  sym = _symbols(symbols, mean.shape[0])
  if std.shape != mean.shape:
    raise ValueError(f"mean and std must have the same size, got {mean.shape} and {std.shape}")
  if sym.size and (sym.min() < lo or sym.max() > hi):
    raise ValueError(f"symbols must lie in symbol_range [{lo}, {hi}], got values in "
                     f"[{sym.min()}, {sym.max()}]")
  _encode(message, sym, _model.QuantizedGaussian(lo, hi), mean, std)


def pop_gaussian(message: Message, mean, std, symbol_range) -> np.ndarray:
  """Pop integer symbols [N] in [lo, hi] with QuantizedGaussian(mean, std) (grid units).
  Returns int64 [N]."""
  _check_message(message)
  lo, hi = _check_range(symbol_range)
  mean, std = canonical_mean(mean).ravel(), canonical_std(std).ravel()
  if std.shape != mean.shape:
    raise ValueError(f"mean and std must have the same size, got {mean.shape} and {std.shape}")
  return _decode(message, _model.QuantizedGaussian(lo, hi), mean, std)


def _bernoulli_p(probs, logits):
  if (probs is None) == (logits is None):
    raise ValueError("give exactly one of probs or logits")
  lg = probs_to_logits(probs) if probs is not None else _f64("logits", logits)
  lg = canonical_logits(lg).ravel()
  return lg, 1.0 / (1.0 + np.exp(-lg))


def push_bernoulli(message: Message, bits, probs=None, logits=None) -> None:
  """Push bits [N] (0/1) with P(1) = probs [N] or sigmoid(logits [N], nats); canonicalized
  through the logits. Costs about -sum bernoulli_log2prob bits."""
  _check_message(message)
  _, p = _bernoulli_p(probs, logits)
  sym = _symbols(bits, p.shape[0], "bits")
  if sym.size and (sym.min() < 0 or sym.max() > 1):
    raise ValueError("bits must be 0 or 1")
  _encode(message, sym, _model.Bernoulli(perfect=False), p)


def pop_bernoulli(message: Message, probs=None, logits=None) -> np.ndarray:
  """Pop bits [N] with P(1) = probs [N] or sigmoid(logits [N]). Returns int64 [N]."""
  _check_message(message)
  _, p = _bernoulli_p(probs, logits)
  return _decode(message, _model.Bernoulli(perfect=False), p)


def push_categorical(message: Message, symbols, probs=None, log_probs=None,
                     log2_probs=None) -> None:
  """Push symbols [N] in {0..S-1}, symbol n with the categorical of row n of probs [N, S] (or
  log_probs [N, S] in nats, or log2_probs in bits; unnormalized allowed; canonicalized by
  `canonical_log2_probs`). Costs about -sum categorical_log2prob bits."""
  _check_message(message)
  l2 = canonical_log2_probs(log_probs=log_probs, probs=probs, log2_probs=log2_probs)
  sym = _symbols(symbols, l2.shape[0])
  if sym.size and (sym.min() < 0 or sym.max() >= l2.shape[1]):
    raise ValueError(f"symbols must lie in [0, {l2.shape[1] - 1}]")
  _encode(message, sym, _model.Categorical(perfect=False), np.exp2(l2))


def pop_categorical(message: Message, probs=None, log_probs=None,
                    log2_probs=None) -> np.ndarray:
  """Pop symbols [N], symbol n with the categorical of row n of probs / log_probs / log2_probs
  [N, S]. Returns int64 [N]."""
  _check_message(message)
  l2 = canonical_log2_probs(log_probs=log_probs, probs=probs, log2_probs=log2_probs)
  return _decode(message, _model.Categorical(perfect=False), np.exp2(l2))


def push_uniform(message: Message, symbols, size: int) -> None:
  """Push symbols [N] in {0..size-1} uniformly (2 <= size <= 2**UNIFORM_BITS): log2(size) bits
  each (up to constriction's rounding)."""
  _check_message(message)
  size = checks.integer("size", size, minimum=2, maximum=2**UNIFORM_BITS)
  sym = _symbols(symbols)
  if sym.size and (sym.min() < 0 or sym.max() >= size):
    raise ValueError(f"symbols must lie in [0, {size - 1}]")
  _encode(message, sym, _model.Uniform(size))


def pop_uniform(message: Message, size: int, num: int) -> np.ndarray:
  """Pop num symbols in {0..size-1} uniformly. Returns int64 [num]."""
  _check_message(message)
  size = checks.integer("size", size, minimum=2, maximum=2**UNIFORM_BITS)
  num = checks.nonnegative_int("num", num)
  return np.asarray(message.coder.decode(_model.Uniform(size), num), dtype=np.int64)


def push_uint32(message: Message, values) -> None:
  """Push unsigned 32-bit integers [N] as two 16-bit uniform symbols each (32 bits each)."""
  v = np.asarray(values, dtype=np.uint64).ravel()
  if np.any(v >= 2**32):
    raise ValueError("values must be < 2**32")
  pairs = np.stack([v >> 16, v & 0xFFFF], axis=1).ravel().astype(np.int64)
  push_uniform(message, pairs, 2**16)


def pop_uint32(message: Message, num: int) -> np.ndarray:
  """Pop num unsigned 32-bit integers pushed by `push_uint32`. Returns int64 [num]."""
  pairs = pop_uniform(message, 2**16, 2 * num).reshape(num, 2)
  return (pairs[:, 0] << 16) | pairs[:, 1]


def check_not_dry(message: Message, what: str, encoding: bool) -> None:
  """Raise MessageError if the message ran dry after popping `what` (`Message.ran_dry`).

  While encoding this means the seed was too short (the pops drew from an empty message and
  the latents were not samples of q); while decoding, that the message is shorter than what
  the encoder produced (truncated or corrupted): every state of a correct decode is a state
  the encoder went through, and the encoder checks each of them.
  """
  if message.ran_dry():
    if encoding:
      raise MessageError(
          f"message: the seed is too short; popping {what} consumed more bits than the message "
          f"held ({message.num_bits()} bits left). Start from a longer Message.seeded(...)")
    raise MessageError(
        f"message: ran out of bits while decoding {what} ({message.num_bits()} bits left): the "
        f"message is truncated or corrupted, or was encoded with other settings")


# ----------------------------------------------------------------------------------------------
# Framing: a header on top of the stack that the decoder checks
# ----------------------------------------------------------------------------------------------

MAGIC = 0x76646D63  # "vdmc"
HEADER_BITS = 5 * 32


def crc32(*items) -> int:
  """zlib CRC-32 of the bytes of the items (str -> UTF-8, arrays -> C-order little-endian
  bytes of their dtype), chained."""
  import zlib
  c = 0
  for item in items:
    if isinstance(item, str):
      data = item.encode("utf-8")
    else:
      a = np.ascontiguousarray(item)
      data = a.astype(a.dtype.newbyteorder("<"), copy=False).tobytes()
    c = zlib.crc32(data, c)
  return c & 0xFFFFFFFF


def push_header(message: Message, config: str, num_examples: int, batch_size: int,
                data_crc: int) -> None:
  """Push the 160-bit header (magic, CRC-32 of the coding configuration `config`, num_examples,
  batch_size, CRC-32 of the data) on top of the message; `check_header` pops and checks it."""
  push_uint32(message, [MAGIC, crc32(config), num_examples, batch_size, data_crc])


def check_header(message: Message, config: str, num_examples: int, batch_size: int) -> int:
  """Pop the header and check it against the decoder's arguments; returns the data CRC-32.

  Raises MessageError when the magic number is wrong (not a vdm.coding message, or truncated
  or corrupted at the top) or when the configuration, num_examples or batch_size differ from
  those the message was encoded with.
  """
  _check_message(message)
  if message.num_bits() < HEADER_BITS:
    raise MessageError(f"message: {message.num_bits()} bits cannot hold the {HEADER_BITS}-bit "
                       f"header; the message is truncated, or was encoded without checksum")
  magic, config_crc, n, b, data_crc = (int(v) for v in pop_uint32(message, 5))
  if magic != MAGIC:
    raise MessageError("message: no vdm.coding header on top of the message (wrong magic "
                       "number): it is truncated or corrupted, or was encoded with "
                       "checksum=False")
  if config_crc != crc32(config):
    raise MessageError("message: it was encoded with another coding configuration (model, "
                       "posterior, precision_bits, R, data shape or num_levels differ)")
  if n != num_examples:
    raise MessageError(f"num_examples: the message holds {n} examples (unless it is corrupted), "
                       f"got num_examples={num_examples}")
  if b != batch_size:
    raise MessageError(f"batch_size: the message was encoded with batch_size={b} (unless it is "
                       f"corrupted), got {batch_size}")
  return data_crc


def check_data_crc(expected: int, *data) -> None:
  """Raise MessageError when the decoded data's CRC-32 differs from the header's."""
  if crc32(*data) != expected:
    raise MessageError("message: the decoded data fail the checksum: the message is corrupted, "
                       "or the model parameters differ from the encoder's")


# ----------------------------------------------------------------------------------------------
# Windowed, two-level Gaussians: a small leak for latents on a fine grid
# ----------------------------------------------------------------------------------------------
#
# constriction gives each symbol of a model's range at least 2**-24, so a QuantizedGaussian over
# a fine grid of 2N + 1 symbols (65537 at precision_bits = 12, R = 8) "leaks" (2N+1) 2**-24 =
# 0.4% of its mass uniformly over the range: a bits-back pop then lands, that often, on a grid
# point far in the tails (an off-distribution latent that the rest of the chain pays for), and a
# push costs more than it should. Two measures keep the leak small:
# - two levels: a symbol k is coded as its coarse bin m = floor(k / b) (QuantizedGaussian in
#   units of b) and then its offset inside the bin (uniform over the bin's fine symbols), with
#   one coarse step b per call, a power of two with at least BINS_PER_STD coarse bins per std
#   (b = 1 when the std is below BINS_PER_STD grid units). The coded distribution is the
#   Gaussian's mass per coarse bin spread evenly over its fine symbols: a discretization
#   within O((b / std)**2) of the fine one (about 1e-4 nats per latent at 16 bins per std);
# - a window: the coarse bin is coded as the offset from an integer center (round of the mean,
#   clipped to the range) in [-W, W], W = ceil(num_std * std / b), so a model has 2W + 1 coarse
#   symbols (about 257 at 16 bins per std and num_std = 8: a leak of 1.5e-5, confined to +-8
#   std).
# Pops from a window always land in it; a push of an arbitrary symbol (the model's p need not
# cover it) first sends an escape flag per symbol (P(escape) = 2**-24: 9e-8 bits for a symbol
# inside its window, 24 bits outside) and codes an escaped symbol with the fine Gaussian over
# the whole range. The `*_log2prob` functions give the exact probabilities of these models.

DEFAULT_NUM_STD = 8.0
BINS_PER_STD = 16
ESCAPE_PROB = 2.0**-24


class _Window(NamedTuple):
  b: int                 # coarse step (fine symbols per coarse bin)
  w: int                 # window half-width in coarse bins
  m_lo: int              # coarse bins of the range: [m_lo, m_hi]
  m_hi: int
  mean: np.ndarray       # coarse-unit mean relative to the center [N]
  std: np.ndarray        # coarse-unit std [N]
  centers: np.ndarray    # int64 [N], coarse center


def gaussian_window(mean, std, symbol_range, num_std: float = DEFAULT_NUM_STD) -> _Window:
  """The two-level windowed model of canonical mean, std [N] (grid units) on symbol_range."""
  lo, hi = _check_range(symbol_range)
  mean = canonical_mean(mean).ravel()
  std = canonical_std(std).ravel()
  if std.shape != mean.shape:
    raise ValueError(f"mean and std must have the same size, got {mean.shape} and {std.shape}")
  min_std = float(np.min(std)) if std.size else 1.0
  b = 2**max(0, int(math.floor(math.log2(max(min_std / BINS_PER_STD, 1.0)))))
  m_lo, m_hi = lo // b, hi // b
  while m_hi - m_lo < 2 and b > 1:   # keep at least 3 coarse bins
    b //= 2
    m_lo, m_hi = lo // b, hi // b
  # Coarse bin m holds fine symbols [m b, m b + b - 1]: in fine units the interval
  # [m b - 1/2, m b + b - 1/2], i.e. u = (k + 1/2) / b - 1/2 in [m - 1/2, m + 1/2].
  cmean = (mean + 0.5) / b - 0.5
  cstd = std / b
  w = int(min(math.ceil(num_std * float(np.max(cstd))) if cstd.size else 1, (m_hi - m_lo) // 2))
  w = max(w, 1)
  centers = np.clip(np.round(cmean), m_lo + w, m_hi - w).astype(np.int64)
  return _Window(b, w, m_lo, m_hi, cmean - centers, cstd, centers)


def _bin_extent(m, b, symbol_range):
  """First fine symbol and number of fine symbols of coarse bins m (clipped to the range)."""
  lo, hi = symbol_range
  first = np.maximum(m * b, lo)
  return first, np.minimum(m * b + b - 1, hi) - first + 1


def _pop_window(message, win, symbol_range, select=None):
  sel = slice(None) if select is None else select
  s = _decode(message, _model.QuantizedGaussian(-win.w, win.w), win.mean[sel], win.std[sel])
  m = s + win.centers[sel]
  first, size = _bin_extent(m, win.b, symbol_range)
  k = first.copy()
  multi = size > 1
  if np.any(multi):
    k[multi] += _decode(message, _model.Uniform(), size[multi].astype(np.int32))
  return k


def _push_window(message, win, symbols, symbol_range, select=None):
  sel = slice(None) if select is None else select
  m = np.floor_divide(symbols, win.b)
  first, size = _bin_extent(m, win.b, symbol_range)
  multi = size > 1
  if np.any(multi):   # pushed after the coarse symbol is popped: pushed first here
    _encode(message, (symbols - first)[multi].astype(np.int32), _model.Uniform(),
            size[multi].astype(np.int32))
  _encode(message, (m - win.centers[sel]).astype(np.int32),
          _model.QuantizedGaussian(-win.w, win.w), win.mean[sel], win.std[sel])


def _window_log2prob(win, symbols, symbol_range):
  k = np.asarray(symbols, np.int64)
  m = np.floor_divide(k, win.b)
  s = m - win.centers
  _, size = _bin_extent(m, win.b, symbol_range)
  lp = gaussian_log2prob(s, win.mean, win.std, (-win.w, win.w)) - np.log2(size)
  return np.where(np.abs(s) <= win.w, lp, -np.inf)


def pop_gaussian_windowed(message: Message, mean, std, symbol_range,
                          num_std: float = DEFAULT_NUM_STD) -> np.ndarray:
  """Pop symbols [N] (int64) from the windowed two-level Gaussian (mean, std in grid units)."""
  _check_message(message)
  return _pop_window(message, gaussian_window(mean, std, symbol_range, num_std),
                     _check_range(symbol_range))


def push_gaussian_windowed(message: Message, symbols, mean, std, symbol_range,
                           num_std: float = DEFAULT_NUM_STD) -> None:
  """Push symbols [N] that lie in their windows (e.g. popped by `pop_gaussian_windowed`)."""
  _check_message(message)
  win = gaussian_window(mean, std, symbol_range, num_std)
  rng = _check_range(symbol_range)
  sym = _symbols(symbols, win.mean.shape[0]).astype(np.int64)
  if sym.size and (np.max(np.abs(np.floor_divide(sym, win.b) - win.centers)) > win.w
                   or sym.min() < rng[0] or sym.max() > rng[1]):
    raise ValueError("symbols must lie in their windows; use push_gaussian_escaped for "
                     "arbitrary symbols")
  _push_window(message, win, sym, rng)


def windowed_gaussian_log2prob(symbols, mean, std, symbol_range,
                               num_std: float = DEFAULT_NUM_STD) -> np.ndarray:
  """log2 P(symbol) [N] under the windowed model (exact float64; -inf outside the window)."""
  return _window_log2prob(gaussian_window(mean, std, symbol_range, num_std), symbols,
                          _check_range(symbol_range))


def _escapes(win, sym):
  return np.abs(np.floor_divide(sym, win.b) - win.centers) > win.w


def push_gaussian_escaped(message: Message, symbols, mean, std, symbol_range,
                          num_std: float = DEFAULT_NUM_STD) -> None:
  """Push arbitrary symbols [N] in symbol_range: those in their window with the windowed model,
  the others with the fine Gaussian over the whole range, then one escape flag each."""
  _check_message(message)
  lo, hi = _check_range(symbol_range)
  win = gaussian_window(mean, std, symbol_range, num_std)
  sym = _symbols(symbols, win.mean.shape[0]).astype(np.int64)
  if sym.size and (sym.min() < lo or sym.max() > hi):
    raise ValueError(f"symbols must lie in symbol_range [{lo}, {hi}]")
  out = _escapes(win, sym)
  inside = ~out
  if np.any(inside):
    _push_window(message, win, sym[inside], (lo, hi), inside)
  if np.any(out):
    fine_mean = canonical_mean(mean).ravel()[out]
    _encode(message, sym[out].astype(np.int32), _model.QuantizedGaussian(lo, hi), fine_mean,
            canonical_std(std).ravel()[out])
  _encode(message, out.astype(np.int32), _model.Bernoulli(perfect=False),
          np.full(sym.shape, ESCAPE_PROB))


def pop_gaussian_escaped(message: Message, mean, std, symbol_range,
                         num_std: float = DEFAULT_NUM_STD) -> np.ndarray:
  """The inverse of `push_gaussian_escaped`: symbols [N] int64."""
  _check_message(message)
  lo, hi = _check_range(symbol_range)
  win = gaussian_window(mean, std, symbol_range, num_std)
  n = win.mean.shape[0]
  out = _decode(message, _model.Bernoulli(perfect=False), np.full(n, ESCAPE_PROB)) == 1
  sym = np.zeros(n, np.int64)
  if np.any(out):
    sym[out] = _decode(message, _model.QuantizedGaussian(lo, hi),
                       canonical_mean(mean).ravel()[out], canonical_std(std).ravel()[out])
  inside = ~out
  if np.any(inside):
    sym[inside] = _pop_window(message, win, (lo, hi), inside)
  return sym


def escaped_gaussian_log2prob(symbols, mean, std, symbol_range,
                              num_std: float = DEFAULT_NUM_STD) -> np.ndarray:
  """log2 P(symbol) [N] under `push_gaussian_escaped`'s model (exact float64): the flag plus
  the windowed model or the fine whole-range Gaussian."""
  win = gaussian_window(mean, std, symbol_range, num_std)
  s = np.asarray(symbols, np.int64)
  out = _escapes(win, s)
  full = gaussian_log2prob(s, canonical_mean(mean).ravel(), canonical_std(std).ravel(),
                           symbol_range)
  with np.errstate(invalid="ignore"):
    return np.where(out, math.log2(ESCAPE_PROB) + full,
                    math.log2(1.0 - ESCAPE_PROB) + _window_log2prob(win, s, symbol_range))
