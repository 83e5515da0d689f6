"""Exact variational bounds by enumerating discrete latent states.

For one example x and a model p(x, h) over discrete h in a finite set H (|H| = S states):

  log p(x)      = log sum_h p(x, h)                                     (1, total probability)
  ELBO(q)       = sum_h q(h|x) [log p(x, h) - log q(h|x)]                (2, Jensen: <= (1))
  KL(q || post) = sum_h q(h|x) [log q(h|x) - log p(h|x)] = (1) - (2)     (3)

with p(h|x) = p(x, h) / p(x) (Bayes). All three are computed exactly by visiting every state,
in nats. `chunk_size` streams the states in chunks of that many through a running logsumexp
(and running sums for the ELBO), inside one `lax.scan`, so the memory is O(chunk_size * batch)
whatever S is; states can be generated on the fly from their index (`StateSpace`), so 2**24
states never exist at once.

Conventions. The user functions take ONE example x and ONE state h (an int32 row
[num_vars] of the state table) and return a scalar in nats:

  params form (fast path), with `params=` given to the entry point:
    log_joint(params, x, h) -> log p(x, h),  log_q(params, x, h) -> log q(h | x).
    `params` is any pytree of arrays (e.g. a tuple (model_params, q_params); both functions
    receive the same pytree). It is a traced argument of the jitted entry point, and the
    functions are static arguments keyed by their code and closed-over values
    (`vdm.static_fn`), so new parameter values, or a fresh lambda with the same code, reuse
    the compiled program.
  two-argument form (slow path), params=None:
    log_joint(x, h), log_q(x, h). Arrays the functions close over are baked into the compiled
    program as constants, and a closure over new values compiles again. Internally it is the
    params form with params = () (`_without_params`), so both forms share one code path.

Every entry point (`log_evidence`, `elbo`, `kl_to_posterior`, `posterior`, `bound_report`) is
one module-level jax.jit; each is a pure function of arrays: vmap- and grad-compatible, and
callable inside the user's own jit. Work that depends only on h (e.g. W h in a sigmoid belief
net) is computed once per state and shared across the examples of a batch, because the batch
is an inner vmap that does not touch it.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, NamedTuple, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np

from vdm import checks
from vdm.static_fn import static_fn

# Bytes a fully materialized enumeration may take before we insist on chunk_size.
MAX_MATERIALIZED_BYTES = 1 << 30
# Default number of states per chunk when streaming.
DEFAULT_CHUNK_SIZE = 1 << 14


@jax.tree_util.register_static
@dataclasses.dataclass(frozen=True)
class StateSpace:
  """All num_categories**num_vars assignments of num_vars categorical variables, lazily.

  State i is the base-`num_categories` expansion of i, most significant digit first (the same
  order as `enumerate_states`). Chunks are generated from their indices inside jitted code,
  so no table of all states is ever built. A pytree with no leaves (`register_static`): jax.jit
  keys on its two integers, so it travels in the same argument as a traced state table.
  """
  num_vars: int
  num_categories: int = 2

  def __post_init__(self):
    checks.positive_int("num_vars", self.num_vars)
    checks.integer("num_categories", self.num_categories, minimum=2)
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
  chunk_size = min(checks.positive_int("chunk_size", chunk_size), num_states)
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


def _pairwise(fn: Callable, params, xs, hs):
  """fn(params, x, h) over every (state, example) pair: [C] states x [B] examples -> [C, B].

  The example vmap is innermost, so computation that depends only on h runs once per state.
  """
  return jax.vmap(lambda h: jax.vmap(lambda x: fn(params, x, h))(xs))(hs)


def _stream(log_joint, log_q, params, xs, states, chunk_size):
  """One pass over all states for a batch xs [B, ...]; returns the final _Accum."""
  chunk_size, num_chunks = _plan_chunks(states, chunk_size)
  batch = jax.tree_util.tree_leaves(xs)[0].shape[0]
  probe = jax.eval_shape(lambda: log_joint(params, jax.tree_util.tree_map(lambda a: a[0], xs),
                                            _chunk_states(states, 0, 1)[0][0]))
  dtype = jnp.result_type(probe.dtype, jnp.float32)

  def body(acc: _Accum, chunk_index):
    hs, valid = _chunk_states(states, chunk_index * chunk_size, chunk_size)
    lj = _pairwise(log_joint, params, xs, hs).astype(dtype)                # [C, B]
    lq = (_pairwise(log_q, params, xs, hs).astype(dtype) if log_q is not None
          else jnp.zeros_like(lj))
    valid = valid[:, None]
    nan = valid & (jnp.isnan(lj) | jnp.isnan(lq))
    lj = jnp.where(valid, lj, -jnp.inf)
    # Streaming logsumexp of (1) (the shift m is a constant for the gradient: logsumexp does
    # not depend on it).
    chunk_max = jnp.max(lj, axis=0)
    new_max = jax.lax.stop_gradient(jnp.maximum(acc.max_log_joint, chunk_max))
    safe_max = jnp.where(jnp.isfinite(new_max), new_max, 0.0)
    sum_exp = (acc.sum_exp * jnp.exp(acc.max_log_joint - safe_max)
               + jnp.sum(jnp.exp(lj - safe_max), axis=0))
    # ELBO (2) terms q (log p - log q); states with q = 0 contribute exactly 0.
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


def _pass_kl(log_joint, log_q, params, xs, states, chunk_size, log_px):
  """Second pass: (3) as sum_h q(h|x) [log q(h|x) - (log p(x, h) - log p(x))], per example [B]."""
  chunk_size, num_chunks = _plan_chunks(states, chunk_size)

  def body(kl, chunk_index):
    hs, valid = _chunk_states(states, chunk_index * chunk_size, chunk_size)
    lj = _pairwise(log_joint, params, xs, hs)
    lq = _pairwise(log_q, params, xs, hs)
    q = jnp.where(valid[:, None], jnp.exp(lq), 0.0)
    has_q = q > 0
    log_ratio = jnp.where(has_q, lq, 0.0) - (jnp.where(has_q, lj, 0.0) - log_px[None, :])
    return kl + jnp.sum(jnp.where(has_q, q * log_ratio, 0.0), axis=0), None

  kl, _ = jax.lax.scan(body, jnp.zeros_like(log_px), jnp.arange(num_chunks, dtype=jnp.int32))
  return kl


# ----------------------------------------------------------------------------------------------
# The jitted implementations. One signature for all: (log_joint, log_q, chunk_size) static
# (the functions as vdm.static_fn.StaticFn in the params form; log_q None where unused),
# (params, x or xs, states) traced (a StateSpace is a pytree without leaves, hence static).
# ----------------------------------------------------------------------------------------------


def _log_evidence_impl(log_joint, log_q, chunk_size, params, x, states):
  del log_q
  acc = _stream(log_joint, None, params, _batch1(x), states, chunk_size)
  return _log_evidence_from(acc)[0]


def _elbo_impl(log_joint, log_q, chunk_size, params, x, states):
  return _stream(log_joint, log_q, params, _batch1(x), states, chunk_size).elbo[0]


def _kl_to_posterior_impl(log_joint, log_q, chunk_size, params, x, states):
  xs = _batch1(x)
  log_px = _log_evidence_from(_stream(log_joint, None, params, xs, states, chunk_size))
  return _pass_kl(log_joint, log_q, params, xs, states, chunk_size, log_px)[0]


def _posterior_impl(log_joint, log_q, chunk_size, params, x, states):
  del log_q
  num_states, _ = _validate_states(states)
  xs = _batch1(x)
  log_px = _log_evidence_from(_stream(log_joint, None, params, xs, states, chunk_size))[0]
  size, num_chunks = _plan_chunks(states, chunk_size)
  x = jax.tree_util.tree_map(lambda a: a[0], xs)

  def chunk(chunk_index):
    hs, _ = _chunk_states(states, chunk_index * size, size)
    return jax.vmap(lambda h: log_joint(params, x, h))(hs)

  log_post = jax.lax.map(chunk, jnp.arange(num_chunks, dtype=jnp.int32)).reshape(-1)
  return jnp.exp(log_post[:num_states] - log_px)   # p(h|x) = p(x, h) / p(x)


def _bound_report_impl(log_joint, log_q, chunk_size, params, xs, states):
  acc = _stream(log_joint, log_q, params, xs, states, chunk_size)
  log_px = _log_evidence_from(acc)
  return {
      "log_evidence": log_px,
      "elbo": acc.elbo,
      "kl": acc.q_mass * log_px - acc.elbo,   # (3) = (1) - (2) for a normalized q
      "q_mass": acc.q_mass,
      "nan_count": acc.nan_count,
  }


# inline=True: called inside another trace (the user's jit, a model's log_joint evaluated per
# (state, example) pair under vmap and grad), the computation is inlined rather than nested as
# a jit call, which XLA runs and compiles faster there (about 1.5x on a gradient step of
# vdm.elbo.models with a log Z or an exact-posterior q enumerated per pair); called at top
# level, it is compiled and cached as usual.
_STATIC = (0, 1, 2)
_jit = functools.partial(jax.jit, static_argnums=_STATIC, inline=True)
_log_evidence_jit = _jit(_log_evidence_impl)
_elbo_jit = _jit(_elbo_impl)
_kl_to_posterior_jit = _jit(_kl_to_posterior_impl)
_posterior_jit = _jit(_posterior_impl)
_bound_report_jit = _jit(_bound_report_impl)


def _without_params(fn, params, x, h):
  """The two-argument form fn(x, h) in the params form; params (always ()) is unused."""
  del params
  return fn(x, h)


def _params_form(name: str, fn: Callable, params) -> Callable:
  """fn as a jit static argument in the params form fn(params, x, h).

  With params None, fn is the two-argument fn(x, h), wrapped in `_without_params`; the
  wrapper's key holds fn's key (`vdm.static_fn.function_key`), so it shares fn's caching.
  """
  if not callable(fn):
    raise ValueError(f"{name} must be a function ({name}(params, x, h) with params=..., or "
                     f"{name}(x, h) without), got {fn!r} ({type(fn).__name__})")
  if params is None:
    return static_fn(functools.partial(_without_params, static_fn(fn)))
  return static_fn(fn)


def _run(jitted, functions: dict, data, states: States, chunk_size, params):
  """Check the arguments on the host, then call `jitted` (one of the jits above).

  functions: {"log_joint": fn} or {"log_joint": fn, "log_q": fn}, in that order.
  """
  _plan_chunks(states, chunk_size)  # states, chunk_size and the memory they need
  chunk_size = checks.optional_positive_int("chunk_size", chunk_size)
  log_joint, log_q = ([_params_form(name, fn, params) for name, fn in functions.items()]
                      + [None])[:2]
  if not isinstance(states, StateSpace):
    states = jnp.asarray(states)
  return jitted(log_joint, log_q, chunk_size, () if params is None else params, data, states)


def log_evidence(log_joint: Callable, x, states: States, chunk_size: Optional[int] = None,
                 params: Any = None):
  """log p(x) = logsumexp_h log p(x, h) over every state (1), in nats. Scalar.

  Args:
    log_joint: log_joint(params, x, h) with `params` given, else log_joint(x, h) (module
      docstring); a scalar in nats for one example and one state h (int32 [num_vars]).
    x: one example (an array or a pytree of arrays, no batch axis).
    states: int array [S, num_vars] (e.g. `enumerate_states`) or a `StateSpace`.
    chunk_size: states per chunk (None = all at once when that fits in memory).
    params: pytree passed to log_joint as a traced argument (None: the two-argument form).
  """
  return _run(_log_evidence_jit, {"log_joint": log_joint}, x, states, chunk_size, params)


def elbo(log_joint: Callable, log_q: Callable, x, states: States,
         chunk_size: Optional[int] = None, params: Any = None):
  """ELBO (2) = E_q[log p(x, h) - log q(h|x)] summed exactly over every state, nats. Scalar.

  Arguments as in `log_evidence`; log_q(params, x, h) (or log_q(x, h)) -> log q(h|x) in nats
  receives the same params as log_joint.
  """
  return _run(_elbo_jit, {"log_joint": log_joint, "log_q": log_q}, x, states, chunk_size, params)


def kl_to_posterior(log_joint: Callable, log_q: Callable, x, states: States,
                    chunk_size: Optional[int] = None, params: Any = None):
  """KL(q(h|x) || p(h|x)) (3) in nats, scalar.

  Computed directly as sum_h q (log q - log p(h|x)) with log p(h|x) = log p(x, h) - log p(x)
  (two passes: log p(x) first), which keeps a small KL accurate; `bound_report` gets the same
  quantity in one pass as q_mass * log p(x) - ELBO. Arguments as in `elbo`.
  """
  return _run(_kl_to_posterior_jit, {"log_joint": log_joint, "log_q": log_q}, x, states,
              chunk_size, params)


def posterior(log_joint: Callable, x, states: States, chunk_size: Optional[int] = None,
              params: Any = None):
  """p(h | x) = p(x, h) / p(x) for every state, float [S] (sums to 1; probabilities, not
  logs). Needs memory for S probabilities. Arguments as in `log_evidence`."""
  return _run(_posterior_jit, {"log_joint": log_joint}, x, states, chunk_size, params)


def bound_report(log_joint: Callable, log_q: Callable, xs, states: States,
                 chunk_size: Optional[int] = None, params: Any = None):
  """Exact log p(x), ELBO and KL(q || p(h|x)) for a batch, in nats; jitted, vmapped over xs.

  Args:
    log_joint, log_q: per-example, per-state functions (module docstring): with `params`
      given, log_joint(params, x, h) -> log p(x, h) and log_q(params, x, h) -> log q(h|x);
      without, log_joint(x, h) and log_q(x, h). Scalars in nats.
    xs: a batch of examples [B, ...] (or a pytree whose leaves lead with B).
    states: int array [S, num_vars] (e.g. `enumerate_states`) or a `StateSpace`.
    chunk_size: states per chunk (None = all at once when that fits in memory).
    params: any pytree (e.g. (model_params, q_params)), a traced argument: new values reuse
      the compiled program. None: the two-argument form, which bakes closed-over arrays in and
      compiles again for a closure over new values.
  Returns:
    dict of [B] arrays: `log_evidence` (1), `elbo` (2), `kl` (= q_mass * log p(x) - elbo; equals
    KL(q || p(h|x)) (3) when q normalizes), `q_mass` (sum_h q(h|x), 1 for a normalized q),
    `nan_count` (states where log_joint or log_q was NaN). `check_report` turns the last two
    into errors.
  """
  return _run(_bound_report_jit, {"log_joint": log_joint, "log_q": log_q}, xs, states,
              chunk_size, params)


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
