r"""Throughput and peak memory of the exact enumerated bound, against NumPyro's TraceEnum_ELBO.

Model: a sigmoid belief net (`vdm.elbo.models.SigmoidBeliefNet`) with D visible units and
H in --latents binary latents, a factorized Bernoulli q(h|x) from a one-hidden-layer MLP
encoder, random parameters (seed 0), and a batch of B examples drawn from the model.

  vdm                  `vdm.elbo.bound_report` (log p(x), ELBO and KL for every example, all
                       2**H states streamed in chunks of max(64, --chunk_elems // B) states
                       from a lazy `StateSpace`), jitted.
  numpyro_bernoulli    exact log p(x) from NumPyro's TraceEnum_ELBO with parallel enumeration
                       of the H Bernoulli sites (a guide with no latent sites, so the ELBO is
                       log p(x)), jitted; the natural NumPyro model of an SBN.
  numpyro_categorical  the same with ONE enumerated Categorical site over the 2**H joint
                       states (the prior and the W h table precomputed per state): a stronger
                       NumPyro baseline that shares the state-only work as vdm does.

Each case (H, B) runs in its own subprocess under an address-space limit (--mem_limit_gb), so a
NumPyro case that runs out of memory is caught and reported (and cases whose single dense
[2**H, B, D] float32 tensor alone exceeds the limit are skipped without trying). In that process
vdm is timed alone first (its peak RSS is read then), then vdm and each NumPyro variant are
timed alternately, call by call, and the ratio of medians is reported.

items = examples x states = B * 2**H. FLOPs (each add, multiply, max, exp or log counts 1):
  vdm:  per state 2HD (W h) + 9D (bias add, softplus of 7 ops, sum) + 2H (prior), plus per
        (example, state) 4H + 12 (h.(W x) and h.a(x) of log p and log q, their constants, and
        the streaming logsumexp / ELBO / q-mass accumulators).
  numpyro_bernoulli:  per (state, example, visible unit) 14 (incremental logits, x*l -
        softplus(l), sum) plus 3 per (state, example) for the logsumexp contraction.
  numpyro_categorical: per state 2HD + D, per (state, example, unit) 10, per (state, example) 3.

One JSON object per line and case and implementation on stdout and in results/bench_elbo.jsonl
(keys bench, case, batch, impl, median_s, items_per_s, gflop_per_s, peak_mem_mb, jax, jaxlib,
XLA_FLAGS, machine, command, ...); a Markdown table in results/bench_elbo.md.

  python -m experiments.bench_elbo [--quick] [--latents=10,16,20,24 --batches=8,64]
"""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time

from absl import app, flags

from experiments import common

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The command-line flags: defined only when run as a script, so that importing this
  module defines none (absl refuses a flag defined twice in one process)."""
  flags.DEFINE_bool("quick", False, "Short run for tests: H = 8, B = 8, 3 repetitions.")
  flags.DEFINE_list("latents", ["10", "16", "20", "24"], "Numbers of binary latents H.")
  flags.DEFINE_list("batches", ["8", "64"], "Batch sizes B.")
  flags.DEFINE_integer("data_dim", 64, "Visible units D.")
  flags.DEFINE_integer("reps", 7, "Timed calls per implementation (3 for H >= 22).")
  flags.DEFINE_integer("chunk_elems", 1 << 15, "States per chunk = max(64, chunk_elems // B), "
                       "rounded down to a power of 2.")
  flags.DEFINE_bool("numpyro", True, "Also time NumPyro's TraceEnum_ELBO (skipped with a note if "
                    "numpyro or funsor cannot be imported).")
  flags.DEFINE_float("mem_limit_gb", 6.0, "Address-space limit of each case's subprocess.")
  flags.DEFINE_string("output", "results/bench_elbo.md", "Markdown report path.")
  flags.DEFINE_string("jsonl", "results/bench_elbo.jsonl", "JSON-lines output path.")
  flags.DEFINE_string("worker", "", "Internal: JSON spec of one case to run in this process.")


NUMPYRO_IMPLS = ("numpyro_bernoulli", "numpyro_categorical")


def chunk_size_for(batch: int, num_states: int, chunk_elems: int) -> int:
  size = max(64, chunk_elems // batch)
  size = 1 << (size.bit_length() - 1)
  return min(size, num_states)


def flops(impl: str, H: int, D: int, B: int) -> float:
  S = 2.0**H
  if impl == "vdm":
    return S * (2 * H * D + 9 * D + 2 * H) + S * B * (4 * H + 12)
  if impl == "numpyro_bernoulli":
    return S * B * (14 * D + 3)
  if impl == "numpyro_categorical":
    return S * (2 * H * D + D) + S * B * (10 * D + 3)
  raise ValueError(f"impl must be one of ['vdm', {', '.join(map(repr, NUMPYRO_IMPLS))}], "
                   f"got {impl!r}")


# ----------------------------------------------------------------------------------------------
# Worker: one case in this process
# ----------------------------------------------------------------------------------------------


def _numpyro_fn(impl, H):
  """jitted (xs, params) -> sum over the batch of log p(x), by NumPyro's TraceEnum_ELBO."""
  import jax
  import jax.numpy as jnp
  import numpyro
  import numpyro.distributions as dist
  from numpyro.infer import TraceEnum_ELBO

  def model_bernoulli(x, W, bias, prior):
    with numpyro.plate("data", x.shape[0], dim=-1):
      logits = bias
      for j in range(H):
        hj = numpyro.sample(f"h{j}", dist.Bernoulli(logits=prior[j]),
                            infer={"enumerate": "parallel"})
        logits = logits + hj[..., None] * W[j]
      numpyro.sample("x", dist.Bernoulli(logits=logits).to_event(1), obs=x)

  states = ((jnp.arange(2**H)[:, None] >> jnp.arange(H - 1, -1, -1)[None, :]) & 1)

  def model_categorical(x, W, bias, prior):
    hs = states.astype(W.dtype)
    log_prior = hs @ jax.nn.log_sigmoid(prior) + (1 - hs) @ jax.nn.log_sigmoid(-prior)
    table = bias + hs @ W                                        # [2**H, D]
    with numpyro.plate("data", x.shape[0], dim=-1):
      k = numpyro.sample("h", dist.Categorical(logits=log_prior),
                         infer={"enumerate": "parallel"})
      numpyro.sample("x", dist.Bernoulli(logits=table[k]).to_event(1), obs=x)

  model = model_bernoulli if impl == "numpyro_bernoulli" else model_categorical
  guide = lambda *args: None
  elbo = TraceEnum_ELBO(max_plate_nesting=1)
  key = jax.random.PRNGKey(0)
  return jax.jit(lambda xs, p: -elbo.loss(key, {}, model, guide, xs, p["W"], p["bias"],
                                          p["prior_logits"]))


def run_worker(spec: dict) -> dict:
  import jax
  import jax.numpy as jnp
  import numpy as np
  from vdm.elbo import models as M

  H, B, D, reps = spec["H"], spec["B"], spec["D"], spec["reps"]
  model = M.SigmoidBeliefNet(num_latents=H, data_dim=D, encoder_hidden=(32,))
  params, q_params = model.init(jax.random.PRNGKey(0))
  xs, _ = model.sample(jax.random.PRNGKey(1), params, B)
  jax.block_until_ready(xs)
  out = {"baseline_rss_mb": common.max_rss_mb(), "chunk_size": spec["chunk_size"]}
  ours = jax.jit(lambda p, q, x: M._report(model, p, q, x, spec["chunk_size"]))

  def call_ours():
    return jax.block_until_ready(ours(params, q_params, xs))

  t = time.perf_counter()
  rep = call_ours()
  out["vdm_first_call_s"] = time.perf_counter() - t
  out["vdm_log_px_sum"] = float(jnp.sum(rep["log_evidence"]))
  out["vdm_gap_minus_kl_max"] = float(jnp.max(jnp.abs(rep["log_evidence"] - rep["elbo"]
                                                      - rep["kl"])))
  alone = []
  for _ in range(reps):
    t = time.perf_counter()
    call_ours()
    alone.append(time.perf_counter() - t)
  out["vdm_alone_median_s"] = float(np.median(alone))
  out["vdm_peak_rss_mb"] = common.max_rss_mb()

  theirs = {}
  for impl in spec["numpyro_impls"]:
    try:
      fn = _numpyro_fn(impl, H)
      t = time.perf_counter()
      value = float(jax.block_until_ready(fn(xs, params)))
      out[f"{impl}_first_call_s"] = time.perf_counter() - t
      out[f"{impl}_log_px_sum"] = value
      theirs[impl] = fn
      out[f"{impl}_status"] = "ok"
    except Exception as e:  # noqa: BLE001 - out of memory and friends are reported, not fatal
      out[f"{impl}_status"] = f"failed: {type(e).__name__}: {str(e).splitlines()[0][:160]}"
  if theirs:
    times = {"vdm": [], **{k: [] for k in theirs}}
    for _ in range(reps):
      t = time.perf_counter()
      call_ours()
      times["vdm"].append(time.perf_counter() - t)
      for impl, fn in list(theirs.items()):
        try:
          t = time.perf_counter()
          jax.block_until_ready(fn(xs, params))
          times[impl].append(time.perf_counter() - t)
        except Exception as e:  # noqa: BLE001 - e.g. out of memory on a later call
          out[f"{impl}_status"] = (f"failed on a timed call: {type(e).__name__}: "
                                   f"{str(e).splitlines()[0][:160]}")
          del theirs[impl], times[impl]
    for impl, ts in times.items():
      out[f"{impl}_alternating_median_s"] = float(np.median(ts))
    out["peak_rss_mb_with_numpyro"] = common.max_rss_mb()
  return out


# ----------------------------------------------------------------------------------------------
# Orchestrator
# ----------------------------------------------------------------------------------------------


def numpyro_available() -> tuple[bool, str]:
  try:
    import funsor  # noqa: F401 - TraceEnum_ELBO needs it
    import numpyro  # noqa: F401
    from numpyro.infer import TraceEnum_ELBO  # noqa: F401
  except ImportError as e:
    return False, f"numpyro not importable ({e}); install numpyro and funsor"
  return True, ""


def run_case(spec: dict, mem_limit_bytes: int) -> dict:
  """Runs one case in a subprocess under an address-space limit; returns its JSON result."""

  def limit():
    resource.setrlimit(resource.RLIMIT_AS, (mem_limit_bytes, mem_limit_bytes))

  cmd = [sys.executable, "-m", "experiments.bench_elbo", f"--worker={json.dumps(spec)}"]
  proc = subprocess.run(cmd, preexec_fn=limit, capture_output=True, text=True,
                        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  lines = [l for l in proc.stdout.splitlines() if l.startswith("{")]
  if proc.returncode != 0 or not lines:
    tail = (proc.stderr.strip().splitlines() or ["no output"])[-1][:300]
    return {"error": f"case process exited with {proc.returncode}: {tail}"}
  return json.loads(lines[-1])


def rows_for_case(H, B, D, spec, result, numpyro_note, provenance):
  """JSON rows (one per implementation) from a worker result."""
  items = B * 2**H
  rows = []
  have_alt = "vdm_alternating_median_s" in result
  vdm_median = result.get("vdm_alternating_median_s", result.get("vdm_alone_median_s"))
  base = dict(provenance, bench="elbo", case=f"sbn_D{D}_H{H}", batch=B, num_states=2**H,
              chunk_size=spec["chunk_size"], reps=spec["reps"])
  if "error" in result:
    rows.append(dict(base, impl="vdm", status=result["error"], median_s=None, items_per_s=None,
                     gflop_per_s=None, peak_mem_mb=None))
    return rows
  vdm = dict(base, impl="vdm", status="ok", median_s=vdm_median,
             median_s_alone=result["vdm_alone_median_s"], items_per_s=items / vdm_median,
             gflop_per_s=flops("vdm", H, D, B) / vdm_median / 1e9,
             peak_mem_mb=result["vdm_peak_rss_mb"],
             baseline_rss_mb=result["baseline_rss_mb"],
             first_call_s=result["vdm_first_call_s"],
             gap_minus_kl_max=result["vdm_gap_minus_kl_max"])
  rows.append(vdm)
  for impl in NUMPYRO_IMPLS:
    status = result.get(f"{impl}_status") or spec["numpyro_skip"].get(impl) or numpyro_note
    row = dict(base, impl=impl, status=status, median_s=None, items_per_s=None,
               gflop_per_s=None, peak_mem_mb=None)
    if status == "ok" and have_alt:
      med = result[f"{impl}_alternating_median_s"]
      row.update(median_s=med, items_per_s=items / med,
                 gflop_per_s=flops(impl, H, D, B) / med / 1e9,
                 peak_mem_mb=result["peak_rss_mb_with_numpyro"],
                 first_call_s=result[f"{impl}_first_call_s"],
                 log_px_abs_diff_to_vdm=abs(result[f"{impl}_log_px_sum"]
                                            - result["vdm_log_px_sum"]),
                 vdm_speedup=med / vdm_median)
      vdm[f"speedup_vs_{impl}"] = med / vdm_median
    rows.append(row)
  return rows


def fmt(v, spec=".3g"):
  return "-" if v is None else format(v, spec)


def report(rows, seconds) -> str:
  import jax
  lines = ["# Exact-bound throughput: vdm.elbo.bound_report vs NumPyro TraceEnum_ELBO", "",
           "```", common.command_line(), "```", "",
           f"Machine: {common.machine_line()}; jax {jax.__version__}; XLA_FLAGS="
           f"{os.environ.get('XLA_FLAGS', '')!r}; {seconds:.0f} s. SBN with D = "
           f"{rows[0]['case'].split('_')[1][1:]} visible units; items = examples x states; "
           "vdm computes log p(x), the ELBO and the KL, NumPyro log p(x) only. Medians of "
           "alternating calls (vdm alone when NumPyro did not run). peak RSS = max resident "
           "set of the case's process (vdm: measured before NumPyro ran; includes the ~"
           f"{rows[0].get('baseline_rss_mb') or 0:.0f} MB of an idle JAX process). Timings on "
           "a shared 2-core machine drift 20-50%; the ratio comes from alternating calls.", "",
           "| H | B | impl | median (s) | items/s | GFLOP/s | peak RSS (MB) | vdm speedup | "
           "status |", "|---|---|---|---|---|---|---|---|---|"]
  for r in rows:
    h = r["case"].split("_H")[1]
    lines.append(f"| {h} | {r['batch']} | {r['impl']} | {fmt(r['median_s'], '.4f')} | "
                 f"{fmt(r['items_per_s'], '.3e')} | {fmt(r['gflop_per_s'], '.2f')} | "
                 f"{fmt(r['peak_mem_mb'], '.0f')} | {fmt(r.get('vdm_speedup'), '.1f')} | "
                 f"{r['status']} |")
  goals = [(16, 64, 10.0), (16, 8, 5.0)]
  lines += ["", "Goals (vdm throughput over NumPyro's, natural Bernoulli-site model):"]
  for H, B, target in goals:
    match = [r for r in rows if r["case"].endswith(f"_H{H}") and r["batch"] == B
             and r["impl"] == "numpyro_bernoulli" and r.get("vdm_speedup")]
    got = f"{match[0]['vdm_speedup']:.1f}x" if match else "not measured in this run"
    met = "" if not match else (" (met)" if match[0]["vdm_speedup"] >= target else " (MISSED)")
    lines.append(f"- H = {H}, B = {B}: goal {target:.0f}x, measured {got}{met}")
  return "\n".join(lines) + "\n"


def main(argv):
  del argv
  if FLAGS.worker:
    print(json.dumps(run_worker(json.loads(FLAGS.worker))), flush=True)
    return
  latents = [8] if FLAGS.quick else [int(v) for v in FLAGS.latents]
  batches = [8] if FLAGS.quick else [int(v) for v in FLAGS.batches]
  for name, values, lo, hi in (("latents", latents, 1, 30), ("batches", batches, 1, 1 << 16)):
    if any(not lo <= v <= hi for v in values):
      raise ValueError(f"--{name} must be integers in {lo}..{hi}, got {values}")
  if FLAGS.data_dim < 1 or FLAGS.reps < 1 or FLAGS.chunk_elems < 1:
    raise ValueError("--data_dim, --reps and --chunk_elems must be >= 1")

  D = FLAGS.data_dim
  use_numpyro, numpyro_note = (numpyro_available() if FLAGS.numpyro
                               else (False, "not requested (--nonumpyro)"))
  mem_limit = int(FLAGS.mem_limit_gb * (1 << 30))
  common_keys = common.env_info()
  start = time.time()
  rows = []
  for H in latents:
    for B in batches:
      reps = 3 if FLAGS.quick else (min(FLAGS.reps, 3) if H >= 22 else FLAGS.reps)
      spec = {"H": H, "B": B, "D": D, "reps": reps, "numpyro_impls": [], "numpyro_skip": {},
              "chunk_size": chunk_size_for(B, 2**H, FLAGS.chunk_elems)}
      if use_numpyro:
        dense = 4.0 * 2**H * B * D  # one float32 [2**H, B, D] tensor
        for impl in NUMPYRO_IMPLS:
          if dense > mem_limit:
            spec["numpyro_skip"][impl] = (
                f"skipped: one dense [2^{H}, {B}, {D}] float32 tensor is {dense / 2**30:.1f} "
                f"GiB > --mem_limit_gb={FLAGS.mem_limit_gb:g} (out of memory)")
          else:
            spec["numpyro_impls"].append(impl)
      result = run_case(spec, mem_limit)
      for row in rows_for_case(H, B, D, spec, result, numpyro_note, common_keys):
        print(json.dumps(row), flush=True)
        rows.append(row)
  text = report(rows, time.time() - start)
  for path, content in ((FLAGS.output, text),
                        (FLAGS.jsonl, "".join(json.dumps(r) + "\n" for r in rows))):
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as f:
      f.write(content)
  print(text)


if __name__ == "__main__":
  define_flags()
  app.run(main)
