"""Timestep samplers for training against the bound: uniform and loss-aware importance sampling.

Both return (t, weights) with weights = 1 / (T p_t), so that for any per-timestep loss L_t
    E_{t ~ p}[weights * T * L_t] = sum_t p_t / (T p_t) * T * L_t = sum_t L_t,
i.e. the weighted estimate of the bound is unbiased whatever p is.

The importance sampler is that of Nichol & Dhariwal (2021), Sec. 3.3: keep the last `history`
(default 10) losses of every timestep, sample uniformly until every timestep has `history`
losses, then sample p_t proportional to sqrt(E[L_t^2]), mixed with probability
`uniform_prob` (default 0.001) of the uniform distribution. The sampler is scale invariant, so
feed it the unweighted per-example term (e.g. `training_losses(...)['vb']`).

The state is a pytree of arrays (`ImportanceState`), updated functionally, so the functions work
under jit, vmap and pmap. Multi-device use (as in improved-diffusion, where all ranks share
one history): keep the state replicated; on each device sample with its own key
(fold_in(key, axis_index)); after the step all-gather the batch,
    t_all = jax.lax.all_gather(t, axis_name).reshape(-1)
    l_all = jax.lax.all_gather(losses, axis_name).reshape(-1)
    state = update(state, t_all, l_all)
so every replica applies the same update and the replicas stay identical.
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from vdm import checks


class ImportanceState(NamedTuple):
  """State of the loss-second-moment sampler.

  loss_history: float [T, history] ring buffer of the most recent losses of each timestep.
  counts: int32 [T] number of losses seen per timestep (the next slot is counts % history).
  """
  loss_history: jax.Array
  counts: jax.Array


def _check_uniform_prob(uniform_prob) -> float:
  """A number in [0, 1] -> float (`vdm.checks.number`)."""
  return checks.number("uniform_prob", uniform_prob, 0.0, 1.0)


def uniform_sample(key, num_timesteps: int, batch_size: int):
  """t ~ Uniform{0..T-1}: (t int32 [B], weights float32 [B] of ones)."""
  num_timesteps = checks.positive_int("num_timesteps", num_timesteps)
  batch_size = checks.positive_int("batch_size", batch_size)
  t = jax.random.randint(key, (batch_size,), 0, num_timesteps, dtype=jnp.int32)
  return t, jnp.ones((batch_size,), jnp.float32)


def init(num_timesteps: int, history: int = 10, dtype=jnp.float32) -> ImportanceState:
  """An empty importance-sampler state for T = num_timesteps timesteps (losses in `dtype`)."""
  num_timesteps = checks.positive_int("num_timesteps", num_timesteps)
  history = checks.positive_int("history", history)
  if not jnp.issubdtype(dtype, jnp.floating):
    raise ValueError(f"dtype must be a float dtype, got {dtype!r}")
  return ImportanceState(loss_history=jnp.zeros((num_timesteps, history), dtype),
                         counts=jnp.zeros((num_timesteps,), jnp.int32))


def is_warm(state: ImportanceState):
  """bool scalar: every timestep has a full history."""
  return jnp.all(state.counts >= state.loss_history.shape[-1])


def probabilities(state: ImportanceState, uniform_prob: float = 0.001):
  """Sampling distribution p [T] (dtype of the history): uniform until warm, then
  (1 - uniform_prob) * sqrt(E[L_t^2]) / sum_t' sqrt(E[L_t'^2]) + uniform_prob / T."""
  uniform_prob = _check_uniform_prob(uniform_prob)
  T = state.loss_history.shape[-2]
  rms = jnp.sqrt(jnp.mean(jnp.square(state.loss_history), axis=-1))
  total = jnp.sum(rms, axis=-1, keepdims=True)
  # All-zero losses (e.g. a perfect model) fall back to uniform rather than 0/0.
  p = jnp.where(total > 0, rms / jnp.where(total > 0, total, 1.0), 1.0 / T)
  p = p * (1.0 - uniform_prob) + uniform_prob / T
  uniform = jnp.full_like(p, 1.0 / T)
  warm = jnp.all(state.counts >= state.loss_history.shape[-1], axis=-1, keepdims=True)
  return jnp.where(warm, p, uniform)


def sample(state: ImportanceState, key, batch_size: int, uniform_prob: float = 0.001):
  """Draw B timesteps from `probabilities(state)`.

  Returns (t int32 [B], weights [B] in the history's dtype) with weights = 1 / (T p_t).
  """
  batch_size = checks.positive_int("batch_size", batch_size)
  return _sample_jit(state, key, batch_size, _check_uniform_prob(uniform_prob))


@functools.partial(jax.jit, static_argnums=(2, 3))
def _sample_jit(state, key, batch_size, uniform_prob):
  p = probabilities(state, uniform_prob)
  T = p.shape[-1]
  t = jax.random.categorical(key, jnp.log(p), shape=(batch_size,)).astype(jnp.int32)
  return t, 1.0 / (T * p[t])


def update(state: ImportanceState, t, losses) -> ImportanceState:
  """Record the losses of a batch, in order: losses[i] becomes the newest loss of t[i].

  t: int [N]; losses: float [N] (N may be the all-gathered batch of every device). Out-of-range
  t are an error when t is concrete. Returns the new state.
  """
  t = jnp.asarray(t)
  losses = jnp.asarray(losses)
  if t.ndim != 1 or losses.shape != t.shape:
    raise ValueError(f"t and losses must both have shape [N], got {t.shape} and {losses.shape}")
  if not jnp.issubdtype(t.dtype, jnp.integer):
    raise ValueError(f"t must be an integer array, got dtype {t.dtype}")
  T, H = state.loss_history.shape[-2:]
  if not isinstance(t, jax.core.Tracer) and t.size:
    lo, hi = int(jnp.min(t)), int(jnp.max(t))
    if lo < 0 or hi >= T:
      raise ValueError(f"t must lie in [0, {T - 1}], got values in [{lo}, {hi}]")

  return _update_jit(state, t.astype(jnp.int32), losses)


def _record_one(carry, t_and_loss):
  hist, counts = carry
  ti, li = t_and_loss
  slot = counts[ti] % hist.shape[-1]
  hist = hist.at[ti, slot].set(li.astype(hist.dtype))
  counts = counts.at[ti].add(1)
  return (hist, counts), None


@jax.jit
def _update_jit(state, t, losses):
  # Sequential over the batch (a scan), so repeated timesteps keep their order.
  (hist, counts), _ = jax.lax.scan(_record_one, (state.loss_history, state.counts), (t, losses))
  return ImportanceState(loss_history=hist, counts=counts)
