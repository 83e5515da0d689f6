"""The per-device programs: the train step (a lax.scan of substeps) and the eval step."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from vdm import objectives as objectives_lib
from vdm import random_streams as streams
from vdm.train.devices import AXIS
from vdm.train.state import TrainState, all_finite


def batch_info(step_key, per_device: int, global_batch: int) -> objectives_lib.BatchInfo:
  """This device's place in the global batch.

  The global index of example i on the device with pmap index a is a * per_device + i
  (processes hold contiguous slices of the global batch, and pmap numbers devices
  process-major), so per-example draws do not depend on the number of devices or hosts.
  """
  first = jax.lax.axis_index(AXIS) * per_device
  return objectives_lib.BatchInfo(step_key, first + jnp.arange(per_device, dtype=jnp.int32),
                                  global_batch)


def unroll_substeps(config) -> bool:
  """Whether the lax.scan over substeps is unrolled (`training.unroll_substeps`; None = on CPU).

  XLA:CPU (jaxlib 0.10) compiles the weight-gradient convolution inside a while loop to a
  naive kernel, 30-100x slower than the same convolution outside a loop (measured here:
  3x3 conv, 64 channels, batch 64 at 8x8: 0.05 s vs 1.8 s; a whole digits U-Net step 0.3 s vs
  20 s). Unrolling removes the loop.
  """
  unroll = config.training.unroll_substeps
  return jax.default_backend() == "cpu" if unroll is None else bool(unroll)


def make_train_step(objective, optimizer, ema_rate: float, schedule: optax.Schedule,
                    unroll: bool = False):
  """(state, batch [substeps, per_device, ...]) -> (state, metrics [substeps]) for one device.

  metrics["state_finite"] is 1.0 when the updated parameters, EMA parameters and optimizer
  state are all finite: the loop stops at the first step whose update is not, before saving.
  """

  def one_step(state: TrainState, v):
    per_device = v.shape[0]
    step_key = jax.random.fold_in(state.rng, state.step)
    info = batch_info(step_key, per_device, per_device * jax.lax.psum(1, AXIS))
    dropout_key = jax.random.fold_in(jax.random.fold_in(step_key, streams.DROPOUT),
                                     jax.lax.axis_index(AXIS))
    x = objective.encode(v, info.keys(streams.DEQUANTIZE))

    def loss_fn(params):
      per_example, aux = objective.loss(params, x, info, dropout_key, state.sampler_state)
      return jnp.mean(per_example), (per_example, aux)

    (loss, (per_example, aux)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    grads = jax.lax.pmean(grads, AXIS)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    ema = jax.tree_util.tree_map(lambda e, p: ema_rate * e + (1.0 - ema_rate) * p,
                                 state.ema_params, params)
    sampler_state = state.sampler_state
    if jax.tree_util.tree_leaves(sampler_state):
      t_all = jax.lax.all_gather(aux["t"], AXIS).reshape(-1)
      vb_all = jax.lax.all_gather(aux["vb"], AXIS).reshape(-1)
      sampler_state = objective.update_sampler(sampler_state, t_all, vb_all)
    # Metrics: global means over the batch, and per timestep quartile.
    count = jax.lax.psum(jnp.float32(per_device), AXIS)
    metrics = {"loss": jax.lax.pmean(loss, AXIS),
               "grad_norm": optax.tree.norm(grads),
               "learning_rate": schedule(state.step),
               "state_finite": all_finite((params, ema, opt_state)).astype(jnp.float32)}
    for name in objective.report_keys:
      metrics[name] = jax.lax.psum(jnp.sum(aux[name]), AXIS) / count
    if "quartile" in aux:
      onehot = jax.nn.one_hot(aux["quartile"], 4, dtype=jnp.float32)      # [B, 4]
      sums = jax.lax.psum(onehot.T @ per_example.astype(jnp.float32), AXIS)
      counts = jax.lax.psum(jnp.sum(onehot, axis=0), AXIS)
      for q in range(4):
        metrics[f"loss_q{q}"] = sums[q] / jnp.maximum(counts[q], 1.0)
    new_state = state.replace(step=state.step + 1, params=params, ema_params=ema,
                              opt_state=opt_state, sampler_state=sampler_state)
    return new_state, metrics

  def train_step(state, batch):
    if not unroll:
      return jax.lax.scan(one_step, state, batch)
    # A Python loop, not scan(unroll=True): jax still emits a while loop for a length-1 scan.
    metrics = []
    for i in range(batch.shape[0]):
      state, m = one_step(state, batch[i])
      metrics.append(m)
    return state, jax.tree_util.tree_map(lambda *ms: jnp.stack(ms), *metrics)

  return train_step


def make_eval_step(objective):
  """(params, v [per_device, ...], mask [per_device], key) -> summed bound terms (psum'd)."""

  def eval_step(params, v, mask, key):
    info = batch_info(key, v.shape[0], v.shape[0] * jax.lax.psum(1, AXIS))
    x = objective.encode(v, info.keys(streams.DEQUANTIZE))
    # One key per example (from its global index): the bound does not depend on the layout.
    terms = jax.vmap(lambda k, xi: objective.bound(params, xi[None], k))(
        info.keys(streams.BOUND), x)
    terms = jax.tree_util.tree_map(lambda a: a[:, 0], terms)
    w = mask.astype(jnp.float32)
    sums = {k: jax.lax.psum(jnp.tensordot(w, a.astype(jnp.float32), axes=(0, 0)), AXIS)
            for k, a in terms.items()}
    sums["count"] = jax.lax.psum(jnp.sum(w), AXIS)
    return sums

  return eval_step
