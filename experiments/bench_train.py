r"""Training-speed benchmark of the DDPM U-Net: one Adam step of the eps-prediction MSE loss.

  python -m experiments.bench_train            # full run (< ~10 min on 2 cores)
  python -m experiments.bench_train --quick    # small shape, batch 8, one repetition (< ~1 min)

Cases: `small` (ch 32, ch_mult (1, 2, 2), 1 block, attention at 16x16, 32x32x3; batches 8 and
32) and `cifar10` (the 35.7M-parameter DDPM CIFAR-10 U-Net; batch 8). One step is
value_and_grad of mean((model(x_t, t) - eps)^2) (Ho et al. 2020, eq. 14, L_simple) with dropout
on, then optax.adam; it is jitted with the (params, opt_state) state donated.

FLOPs per step come from XLA's cost analysis of the compiled step; the float32 matmul peak of
this CPU is measured in the same run (jnp.dot of 2048^3 and 4096^3). When `torch` and
`diffusers` are importable, the PyTorch peer (diffusers.UNet2DModel of the same shape, 2 threads,
torch.optim.Adam, same loss) is timed in the same run, alternating with ours repetition by
repetition, and the ratio is printed.

With --profile (default unless --quick), every convolution of the U-Net is also timed alone,
ours against PyTorch's kernels, forward, input and filter gradient (experiments/op_profile.py):
where the step's time goes on this CPU. --compiler_options=probe compiles each step under every
candidate option set of vdm.xla_options and keeps the fastest (what training.compiler_options
'probe' does).

Output: one JSON object per line: `bench` = `matmul_peak`, `train_step` (ours), `train_step_peer`
(PyTorch), `train_step_ratio` or `conv_profile`; and (not with --quick) results/bench_train.md
(`--output`), rendered from results/bench_train.jsonl: the rows of the latest run on every CPU
model measured (a run replaces only its own CPU's rows), each figure beside its CPU.
"""
from __future__ import annotations

import json
import os
import resource
import sys
import tempfile
import time

from absl import app, flags

from experiments import common

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The command-line flags: defined only when run as a script, so that importing this
  module defines none (absl refuses a flag defined twice in one process)."""
  flags.DEFINE_bool("quick", False, "Short run: the small shape at batch 8, one repetition.")
  flags.DEFINE_string("output", None, "Markdown report (default results/bench_train.md; none with "
                      "--quick unless given).")
  flags.DEFINE_list("cases", None, "Cases to run: small, cifar10 (default: both; --quick: small).")
  flags.DEFINE_list("batches", None, "Batch sizes for every case (default: small 8,32; cifar10 8; "
           "--quick: 8).")
  flags.DEFINE_integer("reps", None, "Timed repetitions per case (default 5; --quick: 1).")
  flags.DEFINE_bool("peer", True, "Also time the PyTorch peer when torch and diffusers import.")
  flags.DEFINE_list("peak_sizes", None, "Matmul sizes n for the float32 peak (default 2048,4096; "
           "--quick: 1024).")
  flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Compute dtype of our model.")
  flags.DEFINE_integer("torch_threads", 2, "torch.set_num_threads for the peer.")
  flags.DEFINE_enum("compiler_options", "recommended", ["recommended", "probe", "none"],
           "'recommended': vdm.xla_options.xla_compiler_options() (the table measured on AMD: "
           "convolutions on Eigen, dots and reductions on YNNPACK); 'probe': the fastest of "
           "vdm.xla_options.CPU_CANDIDATES['train'] for each step, measured at compile time "
           "(xla_options.probe_compile, not cached); 'none': XLA's defaults.")
  flags.DEFINE_bool("profile", None, "Also time every convolution of the U-Net alone, ours "
           "against PyTorch's kernels (experiments/op_profile.py); default: on unless --quick.")
  flags.DEFINE_integer("profile_reps", 7, "Timed calls per convolution and kind for --profile.")
  flags.DEFINE_enum("conv_impl", "lax", ["lax", "matmul"], "UNet.conv_impl for our model.")
  common.define_malloc_flag()
  common.define_render_only_flag()


CASES = {
  "small": dict(ch=32, ch_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=(16,),
         dropout=0.1),
  "cifar10": dict(ch=128, ch_mult=(1, 2, 2, 2), num_res_blocks=2, attn_resolutions=(16,),
          dropout=0.1),
}
DEFAULT_BATCHES = {"small": [8, 32], "cifar10": [8]}
IMAGE = (32, 32, 3)
NUM_TIMESTEPS = 1000


def _cpu_seconds():
  r = resource.getrusage(resource.RUSAGE_SELF)
  return r.ru_utime + r.ru_stime


def _alphas_cumprod():
  """DDPM linear schedule (beta from 1e-4 to 0.02 over 1000 steps), float64."""
  import numpy as np
  betas = np.linspace(1e-4, 0.02, NUM_TIMESTEPS, dtype=np.float64)
  return np.cumprod(1.0 - betas)


def _env_info():
  return {**common.env_info(),
          "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None}


def _emit(row):
  common.print_json(row)


def measure_matmul_peak(sizes, reps):
  """Best float32 jnp.dot throughput in GFLOP/s over `sizes` (n x n times n x n)."""
  best = 0.0
  for n in sizes:
    gfs, ts = common.matmul_peak_gflops(n, reps)
    best = max(best, gfs)
    _emit({"bench": "matmul_peak", "case": f"{n}x{n}x{n}", "batch": 1,
           "median_s": common.median(ts), "min_s": min(ts), "gflop_per_s": gfs, **_env_info()})
  return best


class JaxStep:
  """Our jitted, donated Adam step on the U-Net of one case and batch size."""

  def __init__(self, case, batch, dtype, compiler_options: str, conv_impl):
    """compiler_options: 'recommended' | 'probe' | 'none' (the flag); the set used is
    self.options (its name: self.options_name)."""
    import jax
    import jax.numpy as jnp
    import optax
    from vdm import xla_options
    from vdm.models import UNet

    self.model = UNet(**CASES[case], dtype=jnp.bfloat16 if dtype == "bfloat16"
             else jnp.float32, conv_impl=conv_impl)
    self.batch = batch
    key = jax.random.PRNGKey(0)
    self.x0 = jax.random.uniform(key, (batch,) + IMAGE, minval=-1.0, maxval=1.0)
    t = jnp.zeros((batch,), jnp.int32)
    params = jax.jit(self.model.init)(jax.random.PRNGKey(1), self.x0, t)["params"]
    self.num_params = sum(p.size for p in jax.tree_util.tree_leaves(params))
    opt = optax.adam(2e-4)
    alphas_cumprod = jnp.asarray(_alphas_cumprod(), jnp.float32)
    model = self.model

    def loss_fn(p, x0, key):
      # L_simple (Ho et al. 2020, eq. 14): x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps.
      k_t, k_eps, k_drop = jax.random.split(key, 3)
      t = jax.random.randint(k_t, (x0.shape[0],), 0, NUM_TIMESTEPS)
      eps = jax.random.normal(k_eps, x0.shape, x0.dtype)
      abar = alphas_cumprod[t][:, None, None, None]
      x_t = jnp.sqrt(abar) * x0 + jnp.sqrt(1.0 - abar) * eps
      out = model.apply({"params": p}, x_t, t, train=True, rngs={"dropout": k_drop})
      return jnp.mean((out - eps) ** 2)

    def step(state, x0, key):
      p, o = state
      loss, g = jax.value_and_grad(loss_fn)(p, x0, key)
      updates, o = opt.update(g, o, p)
      return (optax.apply_updates(p, updates), o), loss

    self.state = (params, opt.init(params))
    t0 = time.perf_counter()
    lowered = jax.jit(step, donate_argnums=(0,)).lower(self.state, self.x0, key)
    self.probe = None
    if compiler_options == "probe":
      with tempfile.TemporaryDirectory() as d:   # measured afresh in every run, not cached
        self.compiled, self.probe = xla_options.probe_compile(
            lowered, (self.state, self.x0, key), "train", cache_path=os.path.join(d, "c.json"),
            min_flops=0)
      self.options_name, self.options = self.probe["choice"], self.probe["options"]
    else:
      self.options_name = ("ynn_dot_reduce" if compiler_options == "recommended"
                           else "xla_default")
      self.options = (xla_options.xla_compiler_options(purpose="train")
                      if compiler_options == "recommended" else {})
      self.compiled = lowered.compile(compiler_options=self.options)
    self.compile_s = time.perf_counter() - t0
    cost = self.compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    self.flops = float(cost["flops"])
    self.step_index = 0

  def run(self):
    import jax
    key = jax.random.fold_in(jax.random.PRNGKey(2), self.step_index)
    self.step_index += 1
    self.state, loss = self.compiled(self.state, self.x0, key)
    loss.block_until_ready()
    return float(loss)


class TorchStep:
  """The PyTorch peer: diffusers.UNet2DModel of the same shape, Adam, the same loss."""

  def __init__(self, case, batch, threads):
    import numpy as np
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    self.model = common.torch_unet(CASES[case], IMAGE)
    self.model.train()
    self.num_params = sum(p.numel() for p in self.model.parameters())
    self.opt = torch.optim.Adam(self.model.parameters(), lr=2e-4)
    self.alphas_cumprod = torch.tensor(_alphas_cumprod(), dtype=torch.float32)
    g = torch.Generator().manual_seed(0)
    self.x0 = torch.rand((batch, IMAGE[2]) + IMAGE[:2], generator=g) * 2 - 1  # NCHW
    self.gen = torch.Generator().manual_seed(1)
    self.torch = torch
    self.threads = threads
    self.version = torch.__version__
    import diffusers
    self.diffusers_version = diffusers.__version__
    del np

  def run(self):
    torch = self.torch
    b = self.x0.shape[0]
    t = torch.randint(0, NUM_TIMESTEPS, (b,), generator=self.gen)
    eps = torch.randn(self.x0.shape, generator=self.gen)
    abar = self.alphas_cumprod[t][:, None, None, None]
    x_t = abar.sqrt() * self.x0 + (1 - abar).sqrt() * eps
    self.opt.zero_grad(set_to_none=True)
    loss = torch.mean((self.model(x_t, t).sample - eps) ** 2)
    loss.backward()
    self.opt.step()
    return loss.detach().item()


def _time(fn):
  c0, t0 = _cpu_seconds(), time.perf_counter()
  fn()
  return time.perf_counter() - t0, _cpu_seconds() - c0


def run_case(case, batch, reps, peak, use_peer, dtype, torch_threads, compiler_options,
      conv_impl, profile=False, profile_reps=7):
  ours = JaxStep(case, batch, dtype, compiler_options, conv_impl)
  peer = TorchStep(case, batch, torch_threads) if use_peer else None
  # Warm-up: our first execution; two peer steps (allocator, oneDNN primitives, Adam state).
  ours.run()
  if peer is not None:
    peer.run()
    peer.run()
  ts, cs, pts, pcs = [], [], [], []
  for _ in range(reps):  # alternate ours and theirs, repetition by repetition
    w, c = _time(ours.run)
    ts.append(w), cs.append(c)
    if peer is not None:
      w, c = _time(peer.run)
      pts.append(w), pcs.append(c)
  info = _env_info()
  emitted = []
  med = common.median(ts)
  row = {"bench": "train_step", "case": case, "batch": batch, "impl": "jax",
     "dtype": dtype, "conv_impl": conv_impl, "compiler_options": ours.options_name,
     "probe_median_s": ours.probe["median_s"] if ours.probe else None,
     "median_s": med, "times_s": ts, "images_per_s": batch / med,
     "steps_per_s": 1.0 / med, "gflop_per_step": ours.flops / 1e9,
     "gflop_per_s": ours.flops / med / 1e9, "peak_gflop_per_s": peak,
     "frac_of_peak": ours.flops / med / 1e9 / peak,
     "cpu_s_per_step": common.median(cs), "compile_s": ours.compile_s,
     "num_params": int(ours.num_params), **info}
  _emit(row)
  emitted.append(row)
  if peer is not None:
    pmed = common.median(pts)
    _emit({"bench": "train_step_peer", "case": case, "batch": batch,
       "impl": f"torch {peer.version} diffusers {peer.diffusers_version} "
           f"UNet2DModel, {peer.threads} threads",
       "median_s": pmed, "times_s": pts, "images_per_s": batch / pmed,
       "steps_per_s": 1.0 / pmed,
       # The same network's FLOPs, as counted by XLA for ours.
       "gflop_per_s": ours.flops / pmed / 1e9, "peak_gflop_per_s": peak,
       "frac_of_peak": ours.flops / pmed / 1e9 / peak,
       "cpu_s_per_step": common.median(pcs), "num_params": int(peer.num_params), **info})
    ratio = {"bench": "train_step_ratio", "case": case, "batch": batch,
       "median_s": med, "peer_median_s": pmed,
       "speedup_vs_peer": pmed / med, "images_per_s": batch / med,
       "gflop_per_s": ours.flops / med / 1e9, "peak_gflop_per_s": peak,
       "frac_of_peak": ours.flops / med / 1e9 / peak,
       "per_rep_speedup": [p / o for p, o in zip(pts, ts)],
       "paired_speedup_median": common.median([p / o for p, o in zip(pts, ts)]), **info}
    _emit(ratio)
    emitted.append(ratio)
  if profile:
    emitted.append(profile_case(case, batch, ours, peer is not None, profile_reps, info))
  return emitted


def profile_case(case, batch, ours, peer: bool, reps: int, info: dict) -> dict:
  """The 'conv_profile' row: every convolution of the step's U-Net timed alone, ours with the
  step's compiler options, against PyTorch's kernels when the peer runs."""
  import jax.numpy as jnp
  from experiments import op_profile
  convs = op_profile.unet_convolutions(ours.model, ours.x0, jnp.zeros((batch,), jnp.int32))
  per_conv = op_profile.time_convolutions(convs, ours.options, reps, peer)
  row = {"bench": "conv_profile", "case": case, "batch": batch,
         "compiler_options": ours.options_name, "num_convolutions": len(convs),
         "totals": op_profile.totals(per_conv), "per_conv": per_conv, **info}
  _emit(row)
  return row


# Figures measured on other machines and reported to us (not rerun by this script).
REPORTED_ELSEWHERE = (
    "Reported in issue 14 from an Intel Xeon machine of the same size (2 cores, matmul peak "
    "125-154 GFLOP/s), with the AMD-tuned options of an earlier version: small batch 8 0.94x, "
    "batch 32 0.86x, CIFAR-10 batch 8 1.05x the peer (median of paired repetitions); our "
    "small step at 36% of the matmul peak against the peer's 44%. Not yet rerun with the probe "
    "or profiled: no Intel machine was available to us.\n\n"
    "Earlier on the AMD EPYC (2 cores), 2026-11-24, same jax and jaxlib, PyTorch version and "
    "allocator not recorded: 1.17x, 1.02x and 1.10x the peer (small batch 8, 32; CIFAR-10 "
    "batch 8).")


def _ms(v):
  return "-" if v is None else f"{1e3 * v:.0f}" if v >= 0.1 else f"{1e3 * v:.1f}"


def render(rows) -> str:
  """The Markdown body from the rows of every CPU measured (train_step, train_step_ratio,
  conv_profile), each figure beside its CPU model."""
  cpus = list(dict.fromkeys(common.cpu_label(r) for r in rows if r["bench"] == "train_step"))
  setting = common.cpu_and_allocator
  ratios = {(setting(r), r["case"], r["batch"]): r for r in rows
            if r["bench"] == "train_step_ratio"}
  table, prof, goals, peaks = [], [], [], {}
  for r in rows:
    if r["bench"] == "train_step":
      cpu = common.cpu_label(r)
      peaks[cpu] = max(peaks.get(cpu, 0.0), r["peak_gflop_per_s"])
  for r in rows:
    cpu, malloc = setting(r)
    if r["bench"] == "train_step":
      q = ratios.get(((cpu, malloc), r["case"], r["batch"]))
      sp = q["paired_speedup_median"] if q else None
      table.append([cpu, r["machine"].get("measured", "-"), r["case"], r["batch"],
                    f"{r['num_params'] / 1e6:.2f}M", r.get("compiler_options", "-"), malloc,
                    _ms(r["median_s"]), _ms(q["peer_median_s"]) if q else "-",
                    f"{sp:.2f}x" if q else "-", f"{r['images_per_s']:.1f}",
                    f"{r['gflop_per_s']:.1f}", f"{r['frac_of_peak']:.0%}"])
      if q:
        goals.append(f"- {common.setting_label(r)}, {r['case']} batch {r['batch']}: "
                     f"{sp:.2f}x the peer ({'met' if sp >= 1.0 else 'not met'}).")
    elif r["bench"] == "conv_profile":
      step = next(x for x in rows if x["bench"] == "train_step" and setting(x) == (cpu, malloc)
                  and (x["case"], x["batch"]) == (r["case"], r["batch"]))
      q = ratios.get(((cpu, malloc), r["case"], r["batch"]))
      for kind, t in r["totals"].items():
        prof.append([cpu, malloc, r["case"], r["batch"], r["compiler_options"],
                     f"{kind} ({r['num_convolutions']} convs)", _ms(t["ours_s"]),
                     _ms(t["peer_s"]),
                     f"{t['peer_s'] / t['ours_s']:.2f}x" if t["peer_s"] else "-",
                     f"{t['gflop'] / t['ours_s']:.0f}",
                     f"{t['gflop'] / t['peer_s']:.0f}" if t["peer_s"] else "-"])
      conv_ours = sum(t["ours_s"] for t in r["totals"].values())
      conv_peer = (sum(t["peer_s"] for t in r["totals"].values())
                   if all(t["peer_s"] for t in r["totals"].values()) else None)
      prof.append([cpu, malloc, r["case"], r["batch"], r["compiler_options"],
                   "all convolutions, as a share of the step",
                   f"{conv_ours / step['median_s']:.0%}",
                   f"{conv_peer / q['peer_median_s']:.0%}" if q and conv_peer else "-",
                   "-", "-", "-"])
  lines = [
      "One Adam step of L_simple (value_and_grad + optax.adam, dropout on), median of "
      "alternating repetitions; the peer is PyTorch with diffusers.UNet2DModel of the same "
      "shape, 2 threads. GFLOP/s from XLA's cost analysis of our step (the peer's rate uses "
      "the same FLOP count). Every figure stands beside the CPU it was measured on; a run "
      "replaces the figures of its own CPU model and allocator only (results/bench_train.jsonl "
      "keeps the rows). Timings on a shared machine drift 20-50% between runs: the ratios come "
      "from alternating repetitions (median of the per-repetition ratios). 'options' is the "
      "XLA:CPU option set of vdm.xla_options the step was compiled with (ynn_dot_reduce: the "
      "table's choice; with --compiler_options=probe, the probe's); 'allocator' is the malloc "
      "both ours and the peer ran on (tcmalloc when installed: apt-get install "
      "libtcmalloc-minimal4; --malloc=system keeps the system's).",
      "",
      "Float32 matmul peak measured in the same run: "
      + "; ".join(f"{cpu}: {peaks[cpu]:.1f} GFLOP/s" for cpu in cpus if cpu in peaks) + ".",
      "",
      common.markdown_table(["CPU", "measured", "shape", "batch", "parameters", "options",
                             "allocator",
                             "ours (ms/step)", "PyTorch peer (ms/step)", "speedup vs peer",
                             "ours images/s", "ours GFLOP/s", "% of matmul peak"], table),
      "",
      "Goal (issues 4 and 14): our step at least as fast as the peer on every case, on every "
      "CPU measured.",
      "",
  ] + goals + ["", REPORTED_ELSEWHERE]
  if prof:
    lines += [
        "", "## Per-op profile: the convolutions alone",
        "",
        "Every convolution of the U-Net timed alone with the shapes and strides it has in the "
        "step (experiments/op_profile.py; median of alternating calls, summed over the "
        "network's convolutions): ours compiled with the step's options, the peer's PyTorch "
        "kernels (conv2d; aten::convolution_backward with only the input or only the filter "
        "gradient). 'peer / ours' above 1 means ours is faster. The last row of each case "
        "sets the convolutions' sum against the whole step's median. It can exceed 100% for "
        "ours: in the step XLA runs independent ops (a layer's input and filter gradients) "
        "at the same time on the two cores, and each of our isolated calls also pays a "
        "program dispatch that the step does not; the rest of the step (dense layers, "
        "attention, GroupNorm, activations, dropout, the loss, Adam) is what the "
        "convolutions leave.",
        "",
        common.markdown_table(["CPU", "allocator", "shape", "batch", "options", "op", "ours (ms)",
                               "peer (ms)", "peer / ours", "ours GFLOP/s", "peer GFLOP/s"],
                              prof)]
  return "\n".join(lines)


TITLE = "Train-step speed: vdm's U-Net against PyTorch, per CPU"


def report(rows, seconds):
  """results/bench_train.md (--output) from this run's rows (and a train_run row with its wall
  time) and the other settings' rows kept in the .jsonl beside it."""
  run = {"bench": "train_run", "wall_s": seconds, **_env_info()}
  common.bench_report(FLAGS.output, TITLE, render, rows + [run])


def main(argv):
  del argv
  if FLAGS.render_only:
    common.bench_report(FLAGS.output or os.path.join(common.RESULTS, "bench_train.md"), TITLE,
                        render)
    return
  common.reexec_with_tcmalloc("experiments.bench_train", FLAGS.malloc)
  quick = FLAGS.quick
  cases = FLAGS.cases or (["small"] if quick else ["small", "cifar10"])
  for c in cases:
    if c not in CASES:
      raise ValueError(f"--cases: {c!r} is not allowed; allowed values: {sorted(CASES)}")
  reps = FLAGS.reps if FLAGS.reps is not None else (1 if quick else 5)
  if reps < 1:
    raise ValueError(f"--reps must be >= 1, got {reps}")
  peak_sizes = [int(s) for s in (FLAGS.peak_sizes or (["1024"] if quick else ["2048", "4096"]))]
  use_peer = FLAGS.peer
  if use_peer:
    use_peer, why = common.peer_available()
    if not use_peer:
      _emit({"bench": "train_step_peer", "skipped": f"torch/diffusers unavailable ({why})"})
  profile = (not quick) if FLAGS.profile is None else FLAGS.profile
  timer, rows = common.Timer(), []
  peak = measure_matmul_peak(peak_sizes, reps=2 if quick else 5)
  for case in cases:
    batches = ([int(b) for b in FLAGS.batches] if FLAGS.batches
         else ([8] if quick else DEFAULT_BATCHES[case]))
    for batch in batches:
      if not quick:  # the best peak seen so far (sharing the cores only lowers it)
        peak = max(peak, measure_matmul_peak(peak_sizes[:1], reps=5))
      rows += run_case(case, batch, reps, peak, use_peer, FLAGS.dtype, FLAGS.torch_threads,
                       FLAGS.compiler_options, FLAGS.conv_impl, profile, FLAGS.profile_reps)
  if FLAGS.output is None and not quick:
    FLAGS.output = os.path.join(common.RESULTS, "bench_train.md")
  if FLAGS.output:
    report(rows, timer.seconds)


if __name__ == "__main__":
  define_flags()
  app.run(main)
