"""The train state and the optimizer: everything a resume restores, and how it is updated."""
from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from vdm import random_streams

OPTIMIZERS = ("adam", "adamw")
LR_SCHEDULES = ("constant", "cosine")


class TrainState(flax.struct.PyTreeNode):
  """Everything a resume restores. All leaves are arrays (checkpointed by orbax)."""
  step: jnp.ndarray          # int32 [] optimizer steps taken
  params: Any
  ema_params: Any
  opt_state: Any
  sampler_state: Any         # timestep-sampler state (() for uniform timesteps)
  rng: jnp.ndarray           # uint32 [2] base key; step keys are fold_in(rng, step)


def learning_rate_schedule(opt_config, num_steps: int) -> optax.Schedule:
  """Linear warmup to optimizer.learning_rate, then constant or cosine decay to 0."""
  lr, warmup = opt_config.learning_rate, int(opt_config.warmup_steps)
  if opt_config.schedule == "cosine":
    return optax.warmup_cosine_decay_schedule(0.0, lr, max(warmup, 1) if warmup else 0,
                                              max(num_steps, warmup + 1))
  if warmup:
    return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup),
                                 optax.constant_schedule(lr)], [warmup])
  return optax.constant_schedule(lr)


def decay_mask(params):
  """True for parameters that get weight decay: kernels (ndim > 1), not biases or norm scales."""
  return jax.tree_util.tree_map(lambda p: p.ndim > 1, params)


def create_optimizer(opt_config, num_steps: int) -> optax.GradientTransformation:
  """optax chain: clip by global norm (optimizer.grad_clip > 0), then Adam or AdamW."""
  schedule = learning_rate_schedule(opt_config, num_steps)
  kw = dict(b1=opt_config.b1, b2=opt_config.b2, eps=opt_config.eps)
  if opt_config.name == "adamw":
    opt = optax.adamw(schedule, weight_decay=opt_config.weight_decay, mask=decay_mask, **kw)
  else:
    opt = optax.adam(schedule, **kw)
  clip = opt_config.grad_clip
  return optax.chain(optax.clip_by_global_norm(clip), opt) if clip > 0 else opt


def init_state(objective, optimizer, seed: int) -> TrainState:
  """A fresh state on the host (same on every process: it depends only on the seed)."""
  rng = jax.random.PRNGKey(seed)
  params = jax.jit(objective.init)(jax.random.fold_in(rng, random_streams.INIT))
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    ema_params=jax.tree_util.tree_map(jnp.copy, params),
                    opt_state=optimizer.init(params), sampler_state=objective.init_sampler(),
                    rng=rng)


def all_finite(tree) -> jnp.ndarray:
  """bool []: every floating leaf of tree is finite (traceable; integer leaves are ignored)."""
  leaves = [jnp.all(jnp.isfinite(a)) for a in jax.tree_util.tree_leaves(tree)
            if jnp.issubdtype(jnp.asarray(a).dtype, jnp.inexact)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)


def non_finite_leaves(tree) -> list:
  """Host check: the key paths ('params/Dense_0/kernel', ...) of floating leaves with a NaN or
  inf. Empty for a finite state."""
  bad = []
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    a = np.asarray(leaf)
    if np.issubdtype(a.dtype, np.inexact) and not np.all(np.isfinite(a)):
      bad.append(jax.tree_util.keystr(path))
  return bad
