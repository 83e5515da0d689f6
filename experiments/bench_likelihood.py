r"""Likelihood estimators, timed against a reference implementation: one case per estimator.

    python -m experiments.bench_likelihood                 # every case, full size (~1-2 min)
    python -m experiments.bench_likelihood --quick         # small sizes, for tests (seconds)
    python -m experiments.bench_likelihood --cases=iwae --output=results/bench_likelihood.md

Cases (`CASES`, selected with --cases):

- `iwae`: the importance-weighted bound L_K = log (1/K) sum_k p(x, h_k) / q(h_k | x),
  h_k ~ q(h | x) (Burda et al. 2016, eq. 8), K = --num_samples (1000) per example, on a sigmoid
  belief net (`vdm.elbo.models.SigmoidBeliefNet`, D = 64 visible units, H = 16 binary latents,
  random parameters, seed 0) with its amortized factorized Bernoulli q (one hidden layer of 32
  tanh units), for a batch of --batch (32) examples drawn from the model.
    vdm      `vdm.elbo.iwae_bound` (jitted; samples streamed in chunks of --chunk_size,
             default max(1, 8192 // B)), returning L_K per example.
    numpyro  `numpyro.infer.RenyiELBO(alpha=0, num_particles=K).loss` (jitted) on the same
             model and guide written as NumPyro programs with the same parameters
             (`prior_logits`, `W`, `bias`; the same Flax encoder). RenyiELBO computes the bound
             separately for every element of the data plate and returns minus their sum, so
             -loss estimates sum_b L_K(x_b), the same quantity as vdm's sum over the batch.
  The two are called alternately, call by call, with the same fresh key per repetition (each
  uses it its own way, so the draws differ), and the ratio of median times is reported. Each
  call's value is one Monte Carlo replicate: `agree_z` = (mean_vdm - mean_numpyro) /
  sqrt(se_vdm^2 + se_numpyro^2) over the repetitions checks that both estimate the same
  number (|z| < 4). The exact log p(x) and ELBO (summed over the batch, by enumerating all 2**H
  states with `vdm.elbo.bound_report`) are printed beside them: E[L_K] lies between the two.
  items = examples x samples = B * K per call. A third timed function, `rng_floor`, draws
  only vdm's random bits (the same fold_ins and H words per sample), the part of the cost that
  neither implementation can avoid with JAX's default threefry generator; a fourth,
  `fused_floor`, is the same estimator hand-fused for this one model (one draw of all B*K*H
  uniforms, one batched matmul, no chunks, keys per sample or running statistics): about the
  least arithmetic any JAX implementation does, so NumPyro's time over it bounds what any
  library could gain over NumPyro here.

- `ode`: the probability-flow ODE likelihood (`vdm.diffusion.ode.log_likelihood`, one jitted
  diffrax solve) of a batch of digits against score_sde's approach (scipy's RK45 on the host
  calling a jitted drift) at the same tolerance and network: experiments/bench_ode.py, run as
  a subprocess (see "Adding a case" below).

Output: one JSON object per line and per (case, implementation) on stdout (keys bench, case,
batch, impl, median_s, items_per_s, jax, jaxlib, XLA_FLAGS, machine, command, ...), and a
Markdown table in --output (default results/bench_likelihood.md; none with --quick unless
--output is given) with the CPU model and the command line.

Adding a case. A case is a function run(quick: bool) -> list of rows (dicts with at least
`case`, `impl`, `batch`, `median_s`, `items_per_s`; `status` where something was skipped),
and optionally a function table(rows) -> Markdown (default `generic_table`); register it in
CASES below (the place named "ode" is kept for the ODE likelihood):

    CASES["ode"] = Case(ode_case)                    # ode_case imported from its module

The provenance keys (bench, jax, jaxlib, XLA_FLAGS, machine, command) are added to every row.
A case from a benchmark script with flags of its own (--quick, --cases, ...) runs in a
subprocess, where that script defines and parses them (each script defines its flags only
when run, as absl refuses a flag defined twice in one process):

    CASES["ode"] = Case(subprocess_case("experiments.bench_ode"))

which runs `python -m experiments.bench_ode [--quick]` and collects its JSON lines.
"""
from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import time
from typing import Callable, NamedTuple, Optional, Sequence

from absl import app, flags

from experiments import common

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The command-line flags: defined only when run as a script, so that importing this
  module defines none (absl refuses a flag defined twice in one process)."""
  flags.DEFINE_bool("quick", False, "Short run for tests: D = 16, H = 6, B = 4, K = 50, "
                    "5 repetitions.")
  flags.DEFINE_list("cases", None, "Cases to run (default: all registered cases).")
  flags.DEFINE_integer("num_samples", 1000, "iwae: K, samples per example.")
  flags.DEFINE_integer("batch", 32, "iwae: examples per call.")
  flags.DEFINE_integer("data_dim", 64, "iwae: visible units D of the sigmoid belief net.")
  flags.DEFINE_integer("latents", 16, "iwae: binary latents H.")
  flags.DEFINE_integer("chunk_size", None, "iwae: samples per chunk of vdm.elbo.iwae_bound "
                       "(default: the library's, max(1, 8192 // batch)).")
  flags.DEFINE_integer("reps", 40, "Timed calls per implementation (alternating); each call is "
                       "also one Monte Carlo replicate of the value.")
  flags.DEFINE_bool("numpyro", True, "Also time NumPyro (skipped with a note if it cannot be "
                    "imported).")
  flags.DEFINE_string("output", None, "Markdown report (default results/bench_likelihood.md; "
                      "none with --quick unless given).")


BENCH = "likelihood"


class Case(NamedTuple):
  run: Callable[[bool], list]                     # run(quick) -> rows
  table: Optional[Callable[[list], str]] = None   # table(rows) -> Markdown; None: generic_table


def generic_table(rows) -> str:
  """A Markdown table of the keys every case's rows share (and a speedup where one is given)."""
  def fmt(v, spec):
    return "-" if v is None else format(v, spec)
  lines = ["| case | impl | batch | median (s) | items/s | speedup | status |",
           "|---|---|---|---|---|---|---|"]
  for r in rows:
    speedup = r.get("vdm_speedup", r.get("ratio"))
    lines.append(f"| {r.get('case')} | {r.get('impl')} | {r.get('batch')} | "
                 f"{fmt(r.get('median_s'), '.4f')} | {fmt(r.get('items_per_s'), '.3e')} | "
                 f"{fmt(speedup, '.2f')} | {r.get('status', 'ok')} |")
  return "\n".join(lines) + "\n"


def subprocess_case(module: str, args: Sequence[str] = ()) -> Callable[[bool], list]:
  """run(quick) for a benchmark script with absl flags of its own: runs
  `python -m module [--quick] *args` from the repository root and returns the JSON objects it
  prints, one per line (provenance keys are then this command's)."""
  def run(quick: bool) -> list:
    cmd = [sys.executable, "-m", module, *(["--quick"] if quick else []), *args]
    proc = subprocess.run(cmd, cwd=common.REPO, capture_output=True, text=True)
    if proc.returncode != 0:
      tail = (proc.stderr.strip().splitlines() or ["no output"])[-1][:300]
      raise RuntimeError(f"{' '.join(cmd)} exited with {proc.returncode}: {tail}")
    return [json.loads(l) for l in proc.stdout.splitlines() if l.startswith("{")]
  return run


def _median(xs):
  return common.median(xs)


def _mean_se(values):
  import numpy as np
  v = np.asarray(values, np.float64)
  se = float(v.std(ddof=1) / np.sqrt(v.size)) if v.size > 1 else float("nan")
  return float(v.mean()), se


# ----------------------------------------------------------------------------------------------
# Case "iwae"
# ----------------------------------------------------------------------------------------------


def numpyro_available() -> tuple[bool, str]:
  try:
    import numpyro  # noqa: F401
    from numpyro.infer import RenyiELBO  # noqa: F401
  except Exception as e:  # noqa: BLE001 - any import failure means: not available
    return False, (f"numpyro not importable ({type(e).__name__}: {e}); vdm timed alone "
                   f"(pip install numpyro for the comparison)")
  return True, ""


def _numpyro_loss(model, xs, num_samples):
  """jitted (key, params, q_params) -> RenyiELBO(alpha=0, K) loss = -sum_b L_K(x_b)."""
  import jax
  import numpyro
  import numpyro.distributions as dist
  from numpyro.infer import RenyiELBO

  H = model.num_latents

  def np_model(xs, params, q_params):
    del q_params
    with numpyro.plate("data", xs.shape[0]):
      h = numpyro.sample("h", dist.Bernoulli(logits=params["prior_logits"]).expand([H])
                         .to_event(1))
      logits = params["bias"] + h.astype(params["W"].dtype) @ params["W"]
      numpyro.sample("x", dist.Bernoulli(logits=logits).to_event(1), obs=xs)

  def np_guide(xs, params, q_params):
    del params
    logits = model.encoder_logits(q_params, xs)                  # [B, H], the same encoder
    with numpyro.plate("data", xs.shape[0]):
      numpyro.sample("h", dist.Bernoulli(logits=logits).to_event(1))

  elbo = RenyiELBO(alpha=0.0, num_particles=num_samples)
  return jax.jit(lambda key, params, q_params: elbo.loss(key, {}, np_model, np_guide, xs,
                                                         params, q_params))


def run_iwae(quick: bool) -> list:
  import jax
  import jax.numpy as jnp
  from vdm import elbo as E
  from vdm.elbo import models as M

  D, H, B, K = ((16, 6, 4, 50) if quick else
                (FLAGS.data_dim, FLAGS.latents, FLAGS.batch, FLAGS.num_samples))
  reps = 5 if quick else FLAGS.reps
  for name, value in (("data_dim", D), ("latents", H), ("batch", B), ("num_samples", K),
                      ("reps", reps)):
    if value < 1:
      raise ValueError(f"--{name} must be >= 1, got {value}")
  if reps < 2:
    raise ValueError(f"--reps must be >= 2 (the Monte Carlo check needs replicates), got {reps}")
  model = M.SigmoidBeliefNet(num_latents=H, data_dim=D, encoder_hidden=(32,))
  params, q_params = model.init(jax.random.PRNGKey(0))
  xs, _ = model.sample(jax.random.PRNGKey(1), params, B)
  chunk = FLAGS.chunk_size
  log_joint = functools.partial(M._pair_log_joint, model)
  log_q = functools.partial(M._pair_log_q, model)
  sample_q = functools.partial(M._pair_sample_q, model)

  def ours(key):  # the public entry point as a user calls it (host checks, one jitted call)
    return E.iwae_bound(log_joint, log_q, sample_q, xs, key, K, params=(params, q_params),
                        chunk_size=chunk)

  @jax.jit
  def rng_floor(key):
    """The random bits of vdm's draws alone: fold_in(key, b), fold_in(., k), H words each."""
    def example(b):
      key_b = jax.random.fold_in(key, b)
      return jax.vmap(lambda k: jnp.sum(jax.random.bits(jax.random.fold_in(key_b, k), (H,))
                                        >> 31))(jnp.arange(K))
    return jnp.sum(jax.vmap(example)(jnp.arange(B)))

  @jax.jit
  def fused_floor(key):
    """The least arithmetic any implementation of L_K for this model does, hand-fused: one
    draw of all B*K*H uniforms, the Bernoulli draws, l = bias + h W, log p(x, h) - log q(h | x)
    with the same sum_softplus, and a logsumexp over K; no per-sample keys, chunks or
    running statistics. Its value is the same estimator (other random numbers)."""
    q_logits = jax.vmap(lambda x: model.encoder_logits(q_params, x))(xs)        # [B, H]
    u = jax.random.uniform(key, (B, K, H))
    hf = (u < jax.nn.sigmoid(q_logits)[:, None, :]).astype(xs.dtype)           # [B, K, H]
    a, W, bias = params["prior_logits"], params["W"], params["bias"]
    logits = bias + hf @ W                                                     # [B, K, D]
    log_joint_ = (hf @ a - M.sum_softplus(a) - M.sum_softplus(logits)
                  + jnp.einsum("bkd,bd->bk", logits, xs))
    log_q_ = jnp.einsum("bkh,bh->bk", hf, q_logits) - M.sum_softplus(q_logits)[:, None]
    return jnp.sum(jax.nn.logsumexp(log_joint_ - log_q_, axis=1) - jnp.log(K))

  keys = [jax.random.PRNGKey(1000 + r) for r in range(reps)]
  exact = M.bounds(model, params, q_params, xs, chunk_size=min(2**H, 4096))
  exact_log_px, exact_elbo = float(jnp.sum(exact["log_evidence"])), float(jnp.sum(exact["elbo"]))
  base = dict(case=f"iwae_sbn_D{D}_H{H}_K{K}", batch=B, num_samples=K, data_dim=D, latents=H,
              reps=reps, exact_log_px_sum=exact_log_px, exact_elbo_sum=exact_elbo)

  t = time.perf_counter()
  jax.block_until_ready(ours(keys[0]))
  first = {"vdm": time.perf_counter() - t}
  jax.block_until_ready(rng_floor(keys[0]))
  jax.block_until_ready(fused_floor(keys[0]))
  impls = {"vdm": ours, "rng_floor": rng_floor, "fused_floor": fused_floor}
  status = {"vdm": "ok"}
  use_numpyro, note = numpyro_available() if FLAGS.numpyro else (False, "not requested "
                                                                        "(--nonumpyro)")
  if use_numpyro:
    try:
      loss = _numpyro_loss(model, xs, K)
      theirs = lambda key: loss(key, params, q_params)
      t = time.perf_counter()
      jax.block_until_ready(theirs(keys[0]))
      first["numpyro"] = time.perf_counter() - t
      impls["numpyro"] = theirs
      status["numpyro"] = "ok"
    except Exception as e:  # noqa: BLE001 - reported in the row, vdm still timed
      status["numpyro"] = f"failed: {type(e).__name__}: {str(e).splitlines()[0][:200]}"
  else:
    status["numpyro"] = note
    print(f"# iwae: {note}", flush=True)

  times = {name: [] for name in impls}
  values = {name: [] for name in impls}
  ess = []
  for key in keys:  # alternate the implementations call by call, the same key for both
    for name, fn in impls.items():
      t = time.perf_counter()
      out = jax.block_until_ready(fn(key))
      times[name].append(time.perf_counter() - t)
      if name == "vdm":
        values[name].append(float(jnp.sum(out["bound"])))
        ess.append(float(jnp.mean(out["ess"])))
      elif name == "numpyro":  # RenyiELBO's loss is -sum_b L_K(x_b)
        values[name].append(-float(out))
      elif name == "fused_floor":
        values[name].append(float(out))

  rows = []
  for name in ("vdm", "numpyro"):
    row = dict(base, impl=name, status=status[name], median_s=None, min_s=None,
               items_per_s=None, first_call_s=None, value_mean=None, value_se=None)
    if name in times:
      med = _median(times[name])
      mean, se = _mean_se(values[name])
      row.update(median_s=med, min_s=min(times[name]), items_per_s=B * K / med,
                 first_call_s=first[name], value_mean=mean, value_se=se)
    rows.append(row)
  vdm_row, np_row = rows
  vdm_row["mean_ess"] = sum(ess) / len(ess)
  vdm_row["rng_floor_median_s"] = _median(times["rng_floor"])
  vdm_row["fused_floor_median_s"] = _median(times["fused_floor"])
  vdm_row["fused_floor_value_mean"], vdm_row["fused_floor_value_se"] = _mean_se(
      values["fused_floor"])
  vdm_row["chunk_size"] = chunk if chunk is not None else max(1, E.iwae.DEFAULT_CHUNK_ELEMENTS
                                                               // B)
  if np_row["median_s"] is not None:
    speedup = np_row["median_s"] / vdm_row["median_s"]
    z = ((vdm_row["value_mean"] - np_row["value_mean"])
         / max((vdm_row["value_se"] ** 2 + np_row["value_se"] ** 2) ** 0.5, 1e-300))
    for row in rows:
      row.update(vdm_speedup=speedup, agree_z=z, agree=bool(abs(z) < 4))
  return rows


def table_iwae(rows) -> str:
  def fmt(v, spec):
    return "-" if v is None else format(v, spec)
  r0 = rows[0]
  lines = [
      f"### iwae: IWAE bound, K = {r0['num_samples']}, sigmoid belief net D = {r0['data_dim']}, "
      f"H = {r0['latents']}, batch {r0['batch']}", "",
      f"Medians of {r0['reps']} alternating calls; value = sum over the batch of L_K (nats; one "
      "Monte Carlo replicate per call, mean +- standard error over the calls). Exact sum of "
      f"log p(x): {r0['exact_log_px_sum']:.3f}; exact sum of ELBOs: {r0['exact_elbo_sum']:.3f} "
      "(enumerating all 2^H states).", "",
      "| impl | median (s) | min (s) | samples/s | first call (s) | value (nats) | vdm speedup "
      "| status |", "|---|---|---|---|---|---|---|---|"]
  for r in rows:
    value = ("-" if r["value_mean"] is None
             else f"{r['value_mean']:.2f} +- {r['value_se']:.2f}")
    lines.append(f"| {r['impl']} | {fmt(r['median_s'], '.4f')} | {fmt(r['min_s'], '.4f')} | "
                 f"{fmt(r['items_per_s'], '.3e')} | {fmt(r['first_call_s'], '.2f')} | {value} | "
                 f"{fmt(r.get('vdm_speedup'), '.2f')} | {r['status']} |")
  lines.append("")
  if r0.get("agree_z") is not None:
    lines.append(f"Same quantity: (vdm - numpyro) / SE = {r0['agree_z']:.2f} "
                 f"({'agree' if r0['agree'] else 'DISAGREE'} within 4 SE).")
    target = 5.0
    met = "met" if r0["vdm_speedup"] >= target else "NOT met"
    lines.append(f"Goal: vdm at least {target:.0f}x faster than NumPyro's RenyiELBO: measured "
                 f"{r0['vdm_speedup']:.2f}x ({met}).")
  vdm = [r for r in rows if r["impl"] == "vdm"][0]
  lines.append(f"vdm: chunk_size {vdm['chunk_size']}, mean effective sample size "
               f"{vdm['mean_ess']:.1f} of {vdm['num_samples']}.")
  lines.append(f"Random-number floor: drawing vdm's random bits alone (per sample a fold_in and "
               f"H 32-bit words, JAX's default threefry) takes {vdm['rng_floor_median_s']:.4f} s "
               f"(median, alternated with the others), "
               f"{vdm['rng_floor_median_s'] / vdm['median_s']:.0%} of vdm's time; NumPyro "
               "draws the same number of words per particle and example.")
  floor = vdm["fused_floor_median_s"]
  line = (f"Arithmetic floor: a hand-fused jit of the same estimator for this model alone (one "
          f"draw of all B*K*H uniforms, one batched matmul, no chunks or running statistics; "
          f"value {vdm['fused_floor_value_mean']:.2f} +- {vdm['fused_floor_value_se']:.2f}) "
          f"takes {floor:.4f} s, {vdm['median_s'] / floor:.2f}x less than vdm's general "
          f"entry point")
  np_row = [r for r in rows if r["impl"] == "numpyro"][0]
  if np_row["median_s"] is not None:
    line += (f" and {np_row['median_s'] / floor:.2f}x less than NumPyro: about the most an "
             f"implementation of this estimator in JAX on this machine can gain over NumPyro "
             f"without doing less arithmetic (same draws, same densities)")
  lines.append(line + ".")
  return "\n".join(lines) + "\n"


def table_ode(rows) -> str:
  """The probability-flow ODE rows of experiments/bench_ode.py, with the equal-NFE ceiling."""
  def fmt(v, spec):
    return "-" if v is None else format(v, spec)
  lines = ["### ode: probability-flow ODE likelihood of a batch of digits, rtol = atol = "
           f"{rows[0]['rtol']:g}", "",
           "Medians of alternated calls; ours is one jitted diffrax solve, the host loop score_sde's "
           "scipy RK45 over one jitted drift + divergence per evaluation (experiments/"
           "bench_ode.py's docstring). Ceiling: scipy's time over (its NFE x one drift + "
           "divergence of the network inside a compiled loop), the most a solver making as many "
           "evaluations could gain if its steps cost nothing beyond the network.", "",
           "| case | impl | batch | median (s) | NFE | scipy (s) | scipy NFE | speedup | "
           "per NFE | ceiling at equal NFE | bpd diff |", "|---|---|---|---|---|---|---|---|---|---|---|"]
  for r in rows:
    lines.append(f"| {r['case']} | {r['impl']} | {r['batch']} | {fmt(r['median_s'], '.4f')} | "
                 f"{r['nfe']} | {fmt(r['scipy_median_s'], '.4f')} | {r['scipy_nfe']} | "
                 f"{fmt(r['ratio'], '.2f')} | {fmt(r['per_nfe_ratio'], '.2f')} | "
                 f"{fmt(r.get('equal_nfe_ceiling'), '.2f')} | "
                 f"{fmt(r['bpd_max_abs_diff'], '.1e')} |")
  lines.append("")
  target = 3.0
  for r in rows:
    if r["impl"] != "vdm_dopri5_batch":
      continue
    met = "met" if r["ratio"] >= target else "NOT met"
    lines.append(f"- {r['case']}: goal {target:.0f}x at equal NFE: measured {r['ratio']:.2f}x "
                 f"({met}); ceiling {r.get('equal_nfe_ceiling', float('nan')):.2f}x "
                 f"(one drift + divergence {r.get('eval_floor_ms', float('nan')):.2f} ms).")
  return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------
# The registry of cases
# ----------------------------------------------------------------------------------------------

CASES = {
    "iwae": Case(run_iwae, table_iwae),
    # The probability-flow ODE likelihood against score_sde's host-side RK45 loop, run as its
    # own process (experiments/bench_ode.py defines absl flags of the same names).
    "ode": Case(subprocess_case("experiments.bench_ode"), table_ode),
}


def report(results: dict, seconds: float) -> str:
  lines = ["# Likelihood estimators: vdm against reference implementations", "",
           "```", common.command_line(), "```", "",
           f"Machine: {common.machine_line()}; {seconds:.0f} s. Timings on a shared machine "
           "drift 20-50%; every ratio comes from calls alternated in one run.", ""]
  for name, rows in results.items():
    table = CASES[name].table or generic_table
    if CASES[name].table is None:
      lines.append(f"### {name}\n")
    lines.append(table(rows))
  return "\n".join(lines)


def main(argv):
  del argv
  names = list(CASES) if not FLAGS.cases else [c.strip() for c in FLAGS.cases]
  unknown = [c for c in names if c not in CASES]
  if unknown or not names:
    raise ValueError(f"--cases must name cases among {list(CASES)}, got {FLAGS.cases}")
  output = FLAGS.output
  if output is None and not FLAGS.quick:
    output = os.path.join(common.RESULTS, "bench_likelihood.md")
  provenance = dict(bench=BENCH, **common.env_info())
  start = time.time()
  results = {}
  for name in names:
    rows = CASES[name].run(FLAGS.quick)
    for row in rows:
      common.print_json(dict(provenance, **row))
    results[name] = rows
  if output:
    text = report(results, time.time() - start)
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    with open(output, "w") as f:
      f.write(text)
    print(text)


if __name__ == "__main__":
  define_flags()
  app.run(main)
