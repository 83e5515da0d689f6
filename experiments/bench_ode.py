r"""Probability-flow ODE likelihood: our jitted diffrax solve against score_sde's host loop.

Data: the first B scikit-learn digits (8x8x1, K = 17 levels), uniformly dequantized
(`vdm.diffusion.encoding.dequantize`) onto the model scale [-1, 1]. Process: DDPM's linear
schedule, T = 1000, as the continuous VP process `vdm.diffusion.ode.DDPMProcess` (eps
prediction). Networks, randomly initialized (seed 1; no training: the bench times the solver,
and both implementations see the same drift):
  unet         vdm.models.unet.UNet(ch=16, ch_mult=(1, 2), num_res_blocks=1, no attention,
               num_groups=8) on [B, 8, 8, 1], conv_impl="lax" (the default, as trained). On
               XLA:CPU (jaxlib 0.10.2) the input gradients of lax convolutions run ~3x slower
               inside a while loop (every ODE solver's) than in a top-level program: one drift
               + divergence of this U-Net took 25 ms in a lax.fori_loop against 8 ms alone,
               while the matmul form took 7 ms in the loop. So vdm solves it as
               `vdm.objectives.solver_net(net)` (what --mode=ode_nll does: on CPU the same
               U-Net with conv_impl="matmul", same parameters), and the host loop calls the
               lax form, its fastest, as a top-level program per evaluation;
  unet_matmul  conv_impl="matmul" (3x3 convolutions as im2col GEMMs) on both sides;
  mlp          vdm.models.mlp.MLPDenoiser(hidden=64, num_blocks=2) on the flattened 64
               pixels [B, 64] (a cheap network: the per-evaluation overhead of a host loop
               shows).
Divergence: Hutchinson with one Rademacher probe per example, the same probes (drawn by
`vdm.diffusion.ode.draw_probes` from one key) in both implementations; rtol = atol = 1e-5 and
t0 = 1e-5, score_sde's defaults.

Implementations, alternated call by call in one process (DESIGN.md, Benchmarks):
  vdm_dopri5_batch       `vdm.diffusion.ode.log_likelihood(..., solver="dopri5",
                         per_example=False)`: one jitted diffrax.diffeqsolve of the stacked
                         batch state with a PID (I) controller: Dormand-Prince 5(4), the
                         tableau of scipy's RK45, with an RMS error norm over the whole batch
                         state as solve_ivp's: the equal-NFE peer of the host loop.
  vdm_dopri5_per_example the default `log_likelihood` (Dopri5, per_example=True: a vmapped
                         solve with each example's own step sizes; `nfe` is the max over the
                         batch, the iterations of the batched loop; `nfe_mean` the mean).
  scipy_rk45             score_sde's `likelihood.get_likelihood_fn`: scipy.integrate.solve_ivp(
                         method="RK45") on the host over the flattened float64 state
                         [x, delta_logp], each evaluation one jitted call computing drift and
                         divergence (`vdm.diffusion.ode.drift_and_divergence`; score_sde makes
                         two calls, drift and divergence: merged here, a stronger baseline),
                         the state copied host -> device -> host around it.

One JSON object per line per (case, vdm implementation), with the host loop's numbers beside:
bench, case, batch, impl, median_s, items_per_s, nfe, time_per_nfe_ms, scipy_median_s,
scipy_items_per_s, scipy_nfe, scipy_time_per_nfe_ms, ratio (= scipy_median_s / median_s, the
speedup), per_nfe_ratio (the speedup per function evaluation), eval_floor_ms (one drift +
divergence of vdm's network with no dispatch: jitted lax.fori_loops of 40 and 20 chained
evaluations, the difference of their times / 20, alternated with the solves), equal_nfe_ceiling (= scipy_median_s / (scipy_nfe *
eval_floor): the largest speedup a solver making scipy's number of evaluations could reach
if its steps cost nothing beyond the network; near 1 when the network dominates the host
loop's time), bpd_mean, scipy_bpd_mean,
bpd_max_abs_diff, and the provenance keys of experiments/common.py (jax, jaxlib, XLA_FLAGS,
machine, command).

  python -m experiments.bench_ode [--quick] [--cases=unet,unet_matmul,mlp] [--reps=3]
                                  [--batch=16] [--tol=1e-5]

`ode_case(quick)` returns the records (experiments/bench_likelihood.py calls it).
"""
from __future__ import annotations

import functools
import math
import time

import numpy as np
from absl import app, flags

from experiments import common

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The command-line flags: defined only when run as a script, so that importing this
  module defines none (absl refuses a flag defined twice in one process)."""
  flags.DEFINE_bool("quick", False, "Short run for tests: the MLP case, B = 4, rtol = atol = 1e-3, "
                    "2 repetitions.")
  flags.DEFINE_list("cases", ["unet", "unet_matmul", "mlp"], "Networks: unet, unet_matmul, mlp.")
  flags.DEFINE_integer("reps", 3, "Timed calls per implementation (alternated), after one "
                       "warm-up call.")
  flags.DEFINE_integer("batch", 16, "Batch size B (digits).")
  flags.DEFINE_float("tol", 1e-5, "rtol = atol of every solver.")


CASES = ("unet", "unet_matmul", "mlp")
NUM_LEVELS = 17
T0 = 1e-5


def _digits(batch: int, key):
  import jax.numpy as jnp
  from sklearn.datasets import load_digits
  from vdm.diffusion.encoding import dequantize
  images = load_digits().images.astype(np.int32)
  if batch > images.shape[0]:
    raise ValueError(f"batch must be at most {images.shape[0]}, got {batch}")
  v = jnp.asarray(images[:batch].reshape(batch, 8, 8, 1))
  return dequantize(key, v, NUM_LEVELS, jnp.float32)


def _apply(net, p, z, s):
  return net.apply({"params": p}, z, s)


def _network(case: str, x, quick: bool):
  """(ours model_fn(params, x_t, s), the host loop's model_fn, params, x) for the case; x
  reshaped to the network's input."""
  import functools
  import jax
  import jax.numpy as jnp
  from vdm.models.mlp import MLPDenoiser
  from vdm.models.unet import UNet
  from vdm.objectives import solver_net
  if case in ("unet", "unet_matmul"):
    net = UNet(ch=8 if quick else 16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(),
               dropout=0.0, num_groups=8, conv_impl="matmul" if case == "unet_matmul" else "lax")
  elif case == "mlp":
    net = MLPDenoiser(hidden=32 if quick else 64, num_blocks=1 if quick else 2)
    x = x.reshape(x.shape[0], -1)
  else:
    raise ValueError(f"case must be one of {list(CASES)}, got {case!r}")
  params = jax.jit(net.init)(jax.random.PRNGKey(1), x[:1], jnp.zeros((1,)))["params"]
  return (functools.partial(_apply, solver_net(net)), functools.partial(_apply, net), params,
          x)


def _scipy_likelihood(model_fn, params, x, key, process, tol):
  """score_sde's likelihood: solve_ivp(RK45) on the host calling a jitted drift + divergence.

  Returns (log_likelihood [B] float64 NumPy, nfe)."""
  import jax.numpy as jnp
  from scipy import integrate
  b, shape = x.shape[0], x.shape
  d = int(np.prod(shape[1:]))
  flat = _scipy_drift_fn(model_fn, shape)

  def ode_func(t, y):
    return np.asarray(flat(params, jnp.asarray(y, jnp.float32), jnp.float32(t), key, process),
                      np.float64)

  y0 = np.concatenate([np.asarray(x, np.float64).reshape(-1), np.zeros(b)])
  sol = integrate.solve_ivp(ode_func, (T0, 1.0), y0, rtol=tol, atol=tol, method="RK45")
  if not sol.success:
    raise RuntimeError(f"solve_ivp failed: {sol.message}")
  y1 = sol.y[:, -1]
  z, delta = y1[:-b].reshape(b, -1), y1[-b:]
  prior = -0.5 * np.sum(z**2, -1) - 0.5 * d * math.log(2 * math.pi)
  return prior + delta, int(sol.nfev)


_SCIPY_FNS = {}
EVAL_LOOP = 20


def _flat_drift(model_fn, shape, params, y, t, key, process):
  """(flat state [B*D + B], t) -> flat [drift, divergence] (one Hutchinson probe)."""
  import jax.numpy as jnp
  from vdm.diffusion import ode
  x = y[:-shape[0]].reshape(shape)
  v, div = ode.drift_and_divergence(model_fn, params, x, t, process, key,
                                    divergence="hutchinson", probe="rademacher", num_probes=1)
  return jnp.concatenate([v.reshape(-1), div])


def _eval_loop(model_fn, shape, n):
  """A jitted (params, y0, key, process) -> n chained evaluations in one lax.fori_loop."""
  import jax

  @jax.jit
  def loop(params, y0, key, process):
    def body(i, y):
      t = 0.5 + 0.01 * i
      return y + 1e-3 * _flat_drift(model_fn, shape, params, y, t, key, process)
    return jax.lax.fori_loop(0, n, body, y0)
  return loop


def _scipy_drift_fn(model_fn, shape):
  """A jitted (params, flat state [B*D + B], t, key, process) -> flat [drift, divergence]."""
  import jax
  cache_key = (id(model_fn), shape)
  if cache_key not in _SCIPY_FNS:
    b = shape[0]

    _SCIPY_FNS[cache_key] = jax.jit(functools.partial(_flat_drift, model_fn, shape))
  return _SCIPY_FNS[cache_key]


def _one_case(case: str, quick: bool, batch: int, reps: int, tol: float) -> list[dict]:
  import jax
  from vdm.diffusion import ode
  from vdm.diffusion.schedules import get_beta_schedule
  key_data, key_probe = jax.random.split(jax.random.PRNGKey(0))
  model_fn, host_model_fn, params, x = _network(case, _digits(batch, key_data), quick)
  process = ode.DDPMProcess(get_beta_schedule("linear", 1000))
  d = int(np.prod(x.shape[1:]))
  variants = {
      "vdm_dopri5_batch": dict(solver="dopri5", per_example=False),
      "vdm_dopri5_per_example": dict(solver="dopri5", per_example=True),
  }

  def ours(opts):
    out = ode.log_likelihood(model_fn, params, x, key_probe, process, divergence="hutchinson",
                             probe="rademacher", num_probes=1, rtol=tol, atol=tol, t0=T0,
                             max_steps=20000, **opts)
    return jax.block_until_ready(out)

  def scipy_run():
    return _scipy_likelihood(host_model_fn, params, x, key_probe, process, tol)

  loops = [_eval_loop(model_fn, x.shape, n) for n in (EVAL_LOOP, 2 * EVAL_LOOP)]
  y0 = jax.numpy.concatenate([x.reshape(-1), jax.numpy.zeros((x.shape[0],), x.dtype)])

  def eval_floor():
    """Seconds per drift + divergence of vdm's network inside one program: the difference of
    loops of 2n and n evaluations over n (the call's fixed cost cancels)."""
    ts = []
    for loop in loops:
      t = time.perf_counter()
      jax.block_until_ready(loop(params, y0, key_probe, process))
      ts.append(time.perf_counter() - t)
    return max(ts[1] - ts[0], 1e-9) / EVAL_LOOP

  eval_floor()

  # Warm-up (compilation) of every implementation, then alternate them call by call.
  results = {name: ours(opts) for name, opts in variants.items()}
  scipy_ll, scipy_nfe = scipy_run()
  times = {name: [] for name in list(variants) + ["scipy_rk45", "eval_floor"]}
  for _ in range(reps):
    for name, opts in variants.items():
      t = time.perf_counter()
      results[name] = ours(opts)
      times[name].append(time.perf_counter() - t)
    t = time.perf_counter()
    scipy_ll, scipy_nfe = scipy_run()
    times["scipy_rk45"].append(time.perf_counter() - t)
    times["eval_floor"].append(eval_floor())

  scipy_bpd = -scipy_ll / (d * math.log(2))
  scipy_s = common.median(times["scipy_rk45"])
  floor_s = common.median(times["eval_floor"])
  env = common.env_info()
  shape = "x".join(str(s) for s in x.shape[1:])
  records = []
  for name in variants:
    out = results[name]
    nfe = np.asarray(out["nfe"])
    med = common.median(times[name])
    bpd = np.asarray(out["bpd"], np.float64)
    records.append({
        "bench": "ode_likelihood", "case": f"{case}_{shape}", "network": case,
        "batch": int(x.shape[0]),
        "impl": name, "median_s": med, "items_per_s": x.shape[0] / med,
        "nfe": int(nfe.max()), "nfe_mean": float(nfe.mean()),
        "time_per_nfe_ms": 1e3 * med / int(nfe.max()),
        "scipy_median_s": scipy_s, "scipy_items_per_s": x.shape[0] / scipy_s,
        "scipy_nfe": scipy_nfe, "scipy_time_per_nfe_ms": 1e3 * scipy_s / scipy_nfe,
        "ratio": scipy_s / med,
        "per_nfe_ratio": (scipy_s / scipy_nfe) / (med / int(nfe.max())),
        "eval_floor_ms": 1e3 * floor_s, "equal_nfe_ceiling": scipy_s / (scipy_nfe * floor_s),
        "bpd_mean": float(bpd.mean()), "scipy_bpd_mean": float(scipy_bpd.mean()),
        "bpd_max_abs_diff": float(np.abs(bpd - scipy_bpd).max()),
        "divergence": "hutchinson", "probe": "rademacher", "num_probes": 1, "rtol": tol,
        "atol": tol, "t0": T0, "reps": reps, "times_s": times[name],
        "scipy_times_s": times["scipy_rk45"], **env})
  return records


def ode_case(quick: bool, cases=None, batch=None, reps=None, tol=None) -> list[dict]:
  """Time the ODE likelihood of a batch of digits, ours against score_sde's host loop.

  quick: the short test version (MLP only, B = 4, rtol = atol = 1e-3, 2 repetitions) unless
  the other arguments say otherwise. Returns one record (dict) per (case, vdm implementation),
  with the fields of the module docstring.
  """
  if cases is None:
    cases = ("mlp",) if quick else CASES
  batch = batch or (4 if quick else 16)
  reps = reps or (2 if quick else 3)
  tol = tol or (1e-3 if quick else 1e-5)
  records = []
  for case in cases:
    records += _one_case(case, quick, batch, reps, tol)
  return records


def main(argv):
  del argv
  if FLAGS.quick:
    records = ode_case(True)
  else:
    records = ode_case(False, cases=tuple(FLAGS.cases), batch=FLAGS.batch, reps=FLAGS.reps,
                       tol=FLAGS.tol)
  for r in records:
    common.print_json(r)


if __name__ == "__main__":
  define_flags()
  app.run(main)
