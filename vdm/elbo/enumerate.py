"""Exact variational bounds by enumerating discrete latent states.

For one example x and a model p(x, h) over discrete h in a finite set H (|H| = S states):

  log p(x)      = log sum_h p(x, h)                                     (total probability)
  ELBO(q)       = sum_h q(h|x) [log p(x, h) - log q(h|x)]                (Jensen)
  KL(q || post) = sum_h q(h|x) [log q(h|x) - log p(h|x)] = log p(x) - ELBO.

All three are computed exactly by visiting every state. `chunk_size` streams the states in
chunks of that many through a running logsumexp (and running sums for the ELBO), inside one
`lax.scan`, so the memory is O(chunk_size * batch) whatever S is; states can be generated on
the fly from their index (`StateSpace`), so 2**24 states never exist at once.

Conventions: `log_joint(x, h)` -> log p(x, h) and `log_q(x, h)` -> log q(h | x) take ONE
example x and ONE state h (an int32 row of the state table) and return scalars in nats.
Everything is a pure function of arrays: jit-, vmap- and grad-compatible. Work that depends
only on h (e.g. W h in a sigmoid belief net) is computed once per state and shared across
the examples of a batch, because the batch is an inner vmap that does not touch it.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, NamedTuple, Union

import jax
import jax.numpy as jnp
import numpy as np

# Bytes a fully materialized enumeration may take before we insist on chunk_size.
MAX_MATERIALIZED_BYTES = 1 << 30
# Default number of states per chunk when streaming.
DEFAULT_CHUNK_SIZE = 1 << 14


def _check_int(name: str, value, minimum: int) -> int:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
    raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
  return int(value)


@dataclasses.dataclass(frozen=True)
class StateSpace:
  """All num_categories**num_vars assignments of num_vars categorical variables, lazily.

  State i is the base-`num_categories` expansion of i, most significant digit first (the same
  order as `enumerate_states`). Chunks are generated from their indices inside jitted code,
  so no table of all states is ever built.
  """
  num_vars: int
  num_categories: int = 2

  def __post_init__(self):
    _check_int("num_vars", self.num_vars, 1)
    _check_int("num_categories", self.num_categories, 2)
    if self.num_categories**self.num_vars > np.iinfo(np.int32).max:
      raise ValueError(
          f"num_categories**num_vars = {self.num_categories}**{self.num_vars} states do not fit "
          f"int32 state indices (at most {np.iinfo(np.int32).max}); enumerate fewer variables")

  @property
  def num_states(self) -> int:
    return self.num_categories**self.num_vars

  def states_from_index(self, index):
    """int32 [C] state indices -> int32 [C, num_vars] states (digits, most significant first)."""
    k = self.num_categories
    if k & (k - 1) == 0:  # a power of two: shifts and masks instead of (unvectorized) division
      bits = k.bit_length() - 1
      shifts = jnp.asarray((bits * np.arange(self.num_vars - 1, -1, -1)).astype(np.int32))
      return (index[:, None] >> shifts[None, :]) & (k - 1)
    powers = self.num_categories ** np.arange(self.num_vars - 1, -1, -1, dtype=np.int64)
    powers = jnp.asarray(powers.astype(np.int32))
    return (index[:, None] // powers[None, :]) % self.num_categories


def enumerate_states(num_vars: int, num_categories: int = 2,
                     max_bytes: int = MAX_MATERIALIZED_BYTES) -> jnp.ndarray:
  """Every assignment of num_vars variables with num_categories values each.

  Returns:
    int32 [num_categories**num_vars, num_vars]; row i is i written in base num_categories,
    most significant digit first.
  Raises:
    ValueError before allocating when the table would exceed max_bytes; stream the states
    with `StateSpace(num_vars, num_categories)` and a `chunk_size` instead.
  """
  space = StateSpace(num_vars, num_categories)
  nbytes = space.num_states * space.num_vars * 4
  if nbytes > max_bytes:
    raise ValueError(
        f"enumerate_states(num_vars={num_vars}, num_categories={num_categories}) would allocate "
        f"{nbytes / 2**30:.2f} GiB for {space.num_states} states (limit max_bytes="
        f"{max_bytes / 2**30:.2f} GiB); pass states=vdm.elbo.StateSpace({num_vars}, "
        f"{num_categories}) with a chunk_size to stream them instead")
  return space.states_from_index(jnp.arange(space.num_states, dtype=jnp.int32))


States = Union[jnp.ndarray, np.ndarray, StateSpace]


def _validate_states(states: States) -> tuple[int, int]:
  """Returns (num_states, num_vars); raises on a bad state table."""
  if isinstance(states, StateSpace):
    return states.num_states, states.num_vars
  if not hasattr(states, "shape") or not hasattr(states, "dtype"):
    raise ValueError(f"states must be an integer array [S, num_vars] or a StateSpace, got "
                     f"{type(states).__name__}")
  if len(states.shape) != 2 or states.shape[0] < 1:
    raise ValueError(f"states must have shape [num_states, num_vars] with num_states >= 1, got "
                     f"shape {tuple(states.shape)}")
  if not jnp.issubdtype(states.dtype, jnp.integer):
    raise ValueError(f"states must have an integer dtype (int32 from enumerate_states), got "
                     f"{states.dtype}")
  return int(states.shape[0]), int(states.shape[1])


def _plan_chunks(states: States, chunk_size) -> tuple[int, int]:
  """Returns (chunk_size, num_chunks) after validating the request against memory."""
  num_states, num_vars = _validate_states(states)
  if chunk_size is None:
    nbytes = num_states * (num_vars * 4 + 16)
    if nbytes > MAX_MATERIALIZED_BYTES:
      raise ValueError(
          f"{num_states} states would need about {nbytes / 2**30:.2f} GiB at once; pass a "
          f"chunk_size (e.g. {DEFAULT_CHUNK_SIZE}) to stream them")
    return num_states, 1
  chunk_size = _check_int("chunk_size", chunk_size, 1)
  chunk_size = min(chunk_size, num_states)
  return chunk_size, -(-num_states // chunk_size)


def _chunk_states(states: States, start, chunk_size: int):
  """int32 [chunk_size, num_vars] states beginning at `start`, and a validity mask [chunk_size].

  Indices past the end are clamped to the last state and masked out.
  """
  num_states, _ = _validate_states(states)
  index = start + jnp.arange(chunk_size, dtype=jnp.int32)
  valid = index < num_states
  index = jnp.minimum(index, num_states - 1)
  if isinstance(states, StateSpace):
    return states.states_from_index(index), valid
  return jnp.take(jnp.asarray(states), index, axis=0), valid


class _Accum(NamedTuple):
  """Running per-example sums over the states seen so far (each [B])."""
  max_log_joint: jnp.ndarray   # running max m of log p(x, h)
  sum_exp: jnp.ndarray         # sum_h exp(log p(x, h) - m)
  elbo: jnp.ndarray            # sum_h q(h|x) (log p(x, h) - log q(h|x))
  q_mass: jnp.ndarray          # sum_h q(h|x)
  nan_count: jnp.ndarray       # states where log p or log q is NaN


def _pairwise(fn: Callable, xs, hs):
  """fn over every (state, example) pair: [C] states x [B] examples -> [C, B].

  The example vmap is innermost, so computation that depends only on h runs once per state.
  """
  return jax.vmap(lambda h: jax.vmap(lambda x: fn(x, h))(xs))(hs)


def _stream(log_joint, log_q, xs, states, chunk_size):
  """One pass over all states for a batch xs [B, ...]; returns the final _Accum."""
  chunk_size, num_chunks = _plan_chunks(states, chunk_size)
  batch = jax.tree_util.tree_leaves(xs)[0].shape[0]
  probe = jax.eval_shape(lambda: log_joint(jax.tree_util.tree_map(lambda a: a[0], xs),
                                            _chunk_states(states, 0, 1)[0][0]))
  dtype = jnp.result_type(probe.dtype, jnp.float32)

  def body(acc: _Accum, chunk_index):
    hs, valid = _chunk_states(states, chunk_index * chunk_size, chunk_size)
    lj = _pairwise(log_joint, xs, hs).astype(dtype)                        # [C, B]
    lq = (_pairwise(log_q, xs, hs).astype(dtype) if log_q is not None
          else jnp.zeros_like(lj))
    valid = valid[:, None]
    nan = valid & (jnp.isnan(lj) | jnp.isnan(lq))
    lj = jnp.where(valid, lj, -jnp.inf)
    # Streaming logsumexp (the shift m is a constant for the gradient: logsumexp does not
    # depend on it).
    chunk_max = jnp.max(lj, axis=0)
    new_max = jax.lax.stop_gradient(jnp.maximum(acc.max_log_joint, chunk_max))
    safe_max = jnp.where(jnp.isfinite(new_max), new_max, 0.0)
    sum_exp = (acc.sum_exp * jnp.exp(acc.max_log_joint - safe_max)
               + jnp.sum(jnp.exp(lj - safe_max), axis=0))
    # ELBO terms q (log p - log q); states with q = 0 contribute exactly 0.
    q = jnp.where(valid, jnp.exp(lq), 0.0)
    has_q = q > 0
    term = jnp.where(has_q, q * (jnp.where(has_q, lj, 0.0) - jnp.where(has_q, lq, 0.0)), 0.0)
    return _Accum(new_max, sum_exp, acc.elbo + jnp.sum(term, axis=0),
                  acc.q_mass + jnp.sum(q, axis=0),
                  acc.nan_count + jnp.sum(nan, axis=0, dtype=jnp.int32)), None

  init = _Accum(jnp.full((batch,), -jnp.inf, dtype), jnp.zeros((batch,), dtype),
                jnp.zeros((batch,), dtype), jnp.zeros((batch,), dtype),
                jnp.zeros((batch,), jnp.int32))
  acc, _ = jax.lax.scan(body, init, jnp.arange(num_chunks, dtype=jnp.int32))
  return acc


def _log_evidence_from(acc: _Accum):
  safe_max = jnp.where(jnp.isfinite(acc.max_log_joint), acc.max_log_joint, 0.0)
  return safe_max + jnp.log(acc.sum_exp)


def _batch1(x):
  return jax.tree_util.tree_map(lambda a: jnp.asarray(a)[None], x)


def log_evidence(log_joint: Callable, x, states: States, chunk_size=None):
  """log p(x) = logsumexp_h log p(x, h) over every state, in nats. Scalar."""
  return _log_evidence_from(_stream(log_joint, None, _batch1(x), states, chunk_size))[0]


def elbo(log_joint: Callable, log_q: Callable, x, states: States, chunk_size=None):
  """E_q[log p(x, h) - log q(h|x)] summed exactly over every state, in nats. Scalar."""
  return _stream(log_joint, log_q, _batch1(x), states, chunk_size).elbo[0]


def _pass_kl(log_joint, log_q, xs, states, chunk_size, log_px):
  """Second pass: sum_h q(h|x) [log q(h|x) - (log p(x, h) - log p(x))] per example [B]."""
  chunk_size, num_chunks = _plan_chunks(states, chunk_size)

  def body(kl, chunk_index):
    hs, valid = _chunk_states(states, chunk_index * chunk_size, chunk_size)
    lj = _pairwise(log_joint, xs, hs)
    lq = _pairwise(log_q, xs, hs)
    q = jnp.where(valid[:, None], jnp.exp(lq), 0.0)
    has_q = q > 0
    log_ratio = jnp.where(has_q, lq, 0.0) - (jnp.where(has_q, lj, 0.0) - log_px[None, :])
    return kl + jnp.sum(jnp.where(has_q, q * log_ratio, 0.0), axis=0), None

  kl, _ = jax.lax.scan(body, jnp.zeros_like(log_px), jnp.arange(num_chunks, dtype=jnp.int32))
  return kl


def kl_to_posterior(log_joint: Callable, log_q: Callable, x, states: States, chunk_size=None):
  """KL(q(h|x) || p(h|x)) in nats, scalar.

  Computed directly as sum_h q (log q - log p(h|x)) with log p(h|x) = log p(x, h) - log p(x)
  (two passes: log p(x) first), which keeps a small KL accurate; `bound_report` gets the same
  quantity in one pass as q_mass * log p(x) - ELBO.
  """
  xs = _batch1(x)
  log_px = _log_evidence_from(_stream(log_joint, None, xs, states, chunk_size))
  return _pass_kl(log_joint, log_q, xs, states, chunk_size, log_px)[0]


def posterior(log_joint: Callable, x, states: States, chunk_size=None):
  """p(h | x) for every state, float [S] (sums to 1). Needs memory for S probabilities."""
  num_states, _ = _validate_states(states)
  xs = _batch1(x)
  log_px = _log_evidence_from(_stream(log_joint, None, xs, states, chunk_size))[0]
  size, num_chunks = _plan_chunks(states, chunk_size)

  def chunk(chunk_index):
    hs, _ = _chunk_states(states, chunk_index * size, size)
    return jax.vmap(lambda h: log_joint(jax.tree_util.tree_map(lambda a: a[0], xs), h))(hs)

  log_post = jax.lax.map(chunk, jnp.arange(num_chunks, dtype=jnp.int32)).reshape(-1)
  return jnp.exp(log_post[:num_states] - log_px)


def _bound_report(log_joint, log_q, xs, states, chunk_size):
  acc = _stream(log_joint, log_q, xs, states, chunk_size)
  log_px = _log_evidence_from(acc)
  return {
      "log_evidence": log_px,
      "elbo": acc.elbo,
      "kl": acc.q_mass * log_px - acc.elbo,
      "q_mass": acc.q_mass,
      "nan_count": acc.nan_count,
  }


_bound_report_lazy = jax.jit(_bound_report, static_argnums=(0, 1, 3, 4))
_bound_report_table = jax.jit(_bound_report, static_argnums=(0, 1, 4))


def bound_report(log_joint: Callable, log_q: Callable, xs, states: States, chunk_size=None):
  """Exact log p(x), ELBO and KL(q || p(h|x)) for a batch, in nats; jitted, vmapped over xs.

  Args:
    log_joint, log_q: per-example, per-state functions (module docstring).
    xs: a batch of examples [B, ...] (or a pytree whose leaves lead with B).
    states: int array [S, num_vars] (e.g. `enumerate_states`) or a `StateSpace`.
    chunk_size: states per chunk (None = all at once when that fits in memory).
  Returns:
    dict of [B] arrays: `log_evidence`, `elbo`, `kl` (= q_mass * log p(x) - elbo; equals
    KL(q || p(h|x)) when q normalizes), `q_mass` (sum_h q(h|x), 1 for a normalized q),
    `nan_count` (states where log_joint or log_q was NaN). `check_report` turns the last two
    into errors.
  """
  _plan_chunks(states, chunk_size)  # validate before tracing
  if isinstance(states, StateSpace):
    return _bound_report_lazy(log_joint, log_q, xs, states, chunk_size)
  return _bound_report_table(log_joint, log_q, xs, jnp.asarray(states), chunk_size)


def check_report(report: dict, atol: float = 1e-4) -> dict:
  """Raise a ValueError naming the first bad example of a `bound_report`; else return it.

  Bad: a NaN from log_joint or log_q, or a q whose mass over the states is not 1 within atol
  (so that log_q is not a normalized distribution over the enumerated states).
  """
  nan_count = np.asarray(report["nan_count"])
  q_mass = np.asarray(report["q_mass"])
  bad = np.flatnonzero(nan_count > 0)
  if bad.size:
    i = int(bad[0])
    raise ValueError(f"example {i}: log_joint or log_q returned NaN at {int(nan_count[i])} "
                     f"states ({bad.size} examples affected)")
  bad = np.flatnonzero(~(np.abs(q_mass - 1.0) <= atol))
  if bad.size:
    i = int(bad[0])
    raise ValueError(f"example {i}: q(h|x) sums to {q_mass[i]:.6g} over the enumerated states, "
                     f"not 1 (atol {atol}); log_q must be a normalized log-probability over the "
                     f"same states ({bad.size} examples affected)")
  return report
