r"""Benchmark of the full DDPM bound: `calc_bpd` (one jitted computation) against a per-t loop.

    python -m experiments.bench_bound            # T = 1000, batch 8, 32x32x3 (many minutes)
    python -m experiments.bench_bound --quick    # T = 8, batch 2, 8x8x3, tiny U-Net (< 1 min)

Model: the DDPM U-Net of `vdm.models.unet` with ch 32, ch_mult (1, 2, 2), 1 residual block,
attention at 16x16 (1.1M parameters), random fan-in-scaled weights, eps prediction with fixed_large variances
and the linear schedule; data: random 8-bit images mapped to [-1, 1].

Cases, alternated repetition by repetition in one process:
- `loop`: the way improved-diffusion's calc_bpd_loop evaluates the bound: a Python loop over
  t = 0..T-1, each t one jitted call (noise, q_sample, the model, the bound term, the x0 and eps
  errors) on the batch; results stacked at the end (dispatch is asynchronous, nothing is pulled
  to the host inside the loop).
- `calc_bpd/chunk=c`: `GaussianDiffusion.calc_bpd` with t_chunk_size = c: all T terms in one
  jitted computation, c timesteps (c * B images) per model call, chunks visited by lax.map.
Both draw the noise of timestep t from fold_in(key, t), so they compute the same numbers
(`max_abs_diff_total_bpd` checks it). Both are compiled with the same XLA options
(`--compiler_options`, by default `vdm.models.unet.xla_compiler_options(purpose="eval")`, as
the trainer compiles its bound evaluation).
- `peer`: when torch and diffusers import (`--peer`), the PyTorch reference: the same per-t loop
  with diffusers.UNet2DModel of the same shape (experiments/common.torch_unet), 2 threads,
  no_grad, eval mode: q_sample, the forward pass and the eps error at each t. It omits the
  bound terms' arithmetic (negligible beside the network), so its time is a lower bound on
  improved-diffusion's calc_bpd_loop with that network; `speedup_vs_peer` = median(peer) /
  median(case).

Reported per case: median and min seconds per bound evaluation of the batch, seconds per image,
images per second, GFLOP/s (XLA cost analysis of one loop step, times T: the same FLOPs for
every case), `xla_temp_mb` (scratch memory of the compiled executable, from XLA's memory
analysis: what the chunk size bounds), `peak_rss_mb` (peak resident set, VmHWM, of a fresh
subprocess that compiles and runs that case once; `baseline_rss_mb` is its resident set after
importing and building the model, before compiling), the compile
time, and `speedup_vs_loop` = median(loop) / median(case). A `matmul_peak` line gives the float32
jnp.dot throughput measured in the same run, for scale.

Output: one JSON object per line (also appended to --out if given), and (not with --quick) a
table with the goals of the issue in results/bench_bound.md (`--output`).
"""
from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time

from absl import app, flags

from experiments import common

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The command-line flags: defined only when run as a script, so that importing this
  module defines none (absl refuses a flag defined twice in one process)."""
  flags.DEFINE_bool("quick", False, "Short run: T = 8, batch 2, 8x8x3, a tiny U-Net, chunk size "
                    "4, no RSS subprocesses.")
  common.define_malloc_flag()
  common.define_render_only_flag()
  flags.DEFINE_integer("num_timesteps", None, "T (default 1000; --quick: 8).")
  flags.DEFINE_integer("batch", None, "Batch size (default 8; --quick: 2).")
  flags.DEFINE_integer("image_size", None, "Image height = width (default 32; --quick: 8).")
  flags.DEFINE_list("t_chunk_sizes", None, "calc_bpd chunk sizes to time (default 1,4,16; "
                    "--quick: 4).")
  flags.DEFINE_integer("repeats", None, "Timed repetitions per case (default 2; --quick: 2).")
  flags.DEFINE_bool("warmup", None, "One untimed run per case first (default: only with --quick).")
  flags.DEFINE_bool("rss", None, "Measure peak RSS per case in a fresh subprocess (default: on, "
                    "off with --quick).")
  flags.DEFINE_enum("compiler_options", "recommended", ["recommended", "none"],
                    "'recommended': compile every case with vdm.models.unet."
                    "xla_compiler_options(purpose='eval') (as vdm.train compiles its bound "
                    "evaluation); 'none': XLA's defaults.")
  flags.DEFINE_bool("peer", True, "Also time the PyTorch per-t loop when torch and diffusers "
                    "import (not with --quick).")
  flags.DEFINE_integer("torch_threads", 2, "torch.set_num_threads for the peer.")
  flags.DEFINE_string("output", None, "Markdown report (default results/bench_bound.md; none "
                      "with --quick unless given).")
  flags.DEFINE_string("out", None, "Also append the JSON lines to this file.")
  flags.DEFINE_string("single_case", None, "Internal: run one case once in this process and print "
                      "its peak RSS (used by the --rss subprocesses).")


BENCH = "bound"
UNET = dict(ch=32, ch_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=(16,), dropout=0.0)
# --quick: a two-level U-Net with attention at 4x4 (fast to compile).
UNET_QUICK = dict(ch=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), dropout=0.0,
                  num_groups=8)


def _settings():
  q = FLAGS.quick
  pick = lambda v, full, quick: v if v is not None else (quick if q else full)
  return dict(
      T=pick(FLAGS.num_timesteps, 1000, 8),
      batch=pick(FLAGS.batch, 8, 2),
      size=pick(FLAGS.image_size, 32, 8),
      chunks=[int(c) for c in pick(FLAGS.t_chunk_sizes, ["1", "4", "16"], ["4"])],
      repeats=pick(FLAGS.repeats, 2, 2),
      warmup=pick(FLAGS.warmup, False, True),
      rss=pick(FLAGS.rss, True, False),
      unet=UNET_QUICK if q else UNET,
  )


def _env_info():
  import jax
  return {**common.env_info(), "device": str(jax.devices()[0])}


def _emit(row):
  common.print_json(row, FLAGS.out)


def _rss_mb(field="VmHWM"):
  """Peak (VmHWM) or current (VmRSS) resident set of this process in MiB.

  Read from /proc/self/status: on Linux ru_maxrss survives fork + exec, so in a subprocess it
  would report the parent's peak."""
  try:
    with open("/proc/self/status") as f:
      for line in f:
        if line.startswith(field + ":"):
          return int(line.split()[1]) / 1024.0  # kB
  except OSError:
    pass
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _random_params(model, x0):
  """Random weights of the model's parameter shapes: kernels N(0, 1/fan_in), GroupNorm scales 1,
  biases 0. (Flax's own init takes tens of seconds to compile or run here; the values do not
  matter for timing.)"""
  import jax
  import jax.numpy as jnp
  import numpy as np
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), x0,
                          jnp.zeros((x0.shape[0],), jnp.int32))
  rng = np.random.RandomState(0)

  def leaf(path, sd):
    name = str(getattr(path[-1], "key", path[-1]))
    if name == "scale":
      return jnp.ones(sd.shape, sd.dtype)
    if len(sd.shape) < 2:
      return jnp.zeros(sd.shape, sd.dtype)
    fan_in = int(np.prod(sd.shape[:-1]))
    return jnp.asarray(rng.randn(*sd.shape) / np.sqrt(fan_in), sd.dtype)

  return jax.tree_util.tree_map_with_path(leaf, shapes)


class Setup:
  """Model, parameters, data and diffusion shared by every case."""

  def __init__(self, T, batch, size, unet, options):
    import jax
    import jax.numpy as jnp
    import numpy as np
    from vdm.diffusion import GaussianDiffusion, get_beta_schedule
    from vdm.models.unet import UNet

    self.T, self.batch, self.size, self.options = T, batch, size, options
    self.model = UNet(**unet)
    shape = (batch, size, size, 3)
    v = np.random.RandomState(0).randint(0, 256, shape)
    self.x0 = jnp.asarray(2.0 * v / 255.0 - 1.0, jnp.float32)
    self.key = jax.random.PRNGKey(1)
    self.params = _random_params(self.model, self.x0)
    self.num_params = int(sum(p.size for p in jax.tree_util.tree_leaves(self.params)))
    self.betas = get_beta_schedule("linear", T)
    model = self.model
    self.model_fn = lambda params, x, t: model.apply(params, x, t, train=False)
    self.make = lambda chunk: GaussianDiffusion(self.betas, "eps", "fixed_large", "kl",
                                                num_levels=256, t_chunk_size=chunk)


class CalcBpdCase:
  """calc_bpd with a given chunk size, compiled ahead of time."""

  def __init__(self, s: Setup, chunk: int):
    import jax
    self.name = f"calc_bpd/chunk={chunk}"
    self.chunk = chunk
    diffusion = s.make(chunk)
    fn = jax.jit(lambda p, x, k: diffusion.calc_bpd(s.model_fn, p, x, k))
    t0 = time.perf_counter()
    self.compiled = fn.lower(s.params, s.x0, s.key).compile(compiler_options=s.options)
    self.compile_s = time.perf_counter() - t0
    self.xla_temp_mb = self.compiled.memory_analysis().temp_size_in_bytes / 2**20
    self.args = (s.params, s.x0, s.key)

  def run(self):
    import jax
    out = self.compiled(*self.args)
    jax.block_until_ready(out)
    return out


class LoopCase:
  """A Python loop over t, one jitted call per timestep (improved-diffusion's calc_bpd_loop)."""

  def __init__(self, s: Setup):
    import jax
    import jax.numpy as jnp
    self.name = "loop"
    self.chunk = None
    diffusion = s.make(1)
    self.T = s.T

    def one_t(params, x0, key, t):
      # Everything calc_bpd computes at one timestep t (a traced int32 scalar).
      tb = jnp.full((x0.shape[0],), t, jnp.int32)
      noise = jax.random.normal(jax.random.fold_in(key, t), x0.shape, x0.dtype)
      x_t = diffusion.q_sample(x0, tb, noise)
      out = s.model_fn(params, x_t, tb)
      vb = diffusion.vb_terms_bpd(out, x0, x_t, tb)
      pred_x0 = diffusion.p_mean_variance(out, x_t, tb)["pred_x0"]
      eps = diffusion.predict_eps_from_x0(x_t, tb, pred_x0)
      xstart_mse = jnp.mean(jnp.square(pred_x0 - x0), axis=(1, 2, 3))
      mse = jnp.mean(jnp.square(eps - noise), axis=(1, 2, 3))
      return vb, xstart_mse, mse

    t0 = time.perf_counter()
    self.step = jax.jit(one_t).lower(s.params, s.x0, s.key, jnp.int32(0)).compile(
        compiler_options=s.options)
    self.prior = jax.jit(diffusion.prior_bpd).lower(s.x0).compile(compiler_options=s.options)
    self.compile_s = time.perf_counter() - t0
    self.step_flops = float(self.step.cost_analysis()["flops"])
    self.xla_temp_mb = self.step.memory_analysis().temp_size_in_bytes / 2**20
    self.s = s
    self.ts = [jnp.int32(t) for t in range(s.T)]

  def run(self):
    import jax
    import jax.numpy as jnp
    s = self.s
    terms = [self.step(s.params, s.x0, s.key, t) for t in self.ts]
    vb, xstart_mse, mse = (jnp.stack(z, axis=1) for z in zip(*terms))
    prior = self.prior(s.x0)
    out = {"total_bpd": prior + jnp.sum(vb, axis=1), "prior_bpd": prior, "vb": vb,
           "xstart_mse": xstart_mse, "mse": mse}
    jax.block_until_ready(out)
    return out


class TorchLoopCase:
  """The PyTorch peer: a per-t loop over diffusers.UNet2DModel of the same shape (no_grad)."""

  def __init__(self, s: Setup, unet: dict, threads: int):
    import numpy as np
    import torch
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    self.name, self.chunk, self.compile_s, self.xla_temp_mb = "peer", None, 0.0, None
    self.torch, self.T, self.threads = torch, s.T, threads
    self.model = common.torch_unet(unet, (s.size, s.size, 3)).eval()
    abar = np.cumprod(1.0 - np.asarray(s.betas, np.float64))
    self.sqrt_abar = torch.tensor(np.sqrt(abar), dtype=torch.float32)
    self.sqrt_1m_abar = torch.tensor(np.sqrt(1.0 - abar), dtype=torch.float32)
    self.x0 = torch.from_numpy(np.asarray(s.x0)).permute(0, 3, 1, 2).contiguous()  # NCHW
    self.num_params = sum(p.numel() for p in self.model.parameters())
    self.version = f"torch {torch.__version__}"
    with torch.no_grad():   # warm up (lazy initialization of the kernels) outside the timing
      for _ in range(3):
        self.model(self.x0, torch.zeros((self.x0.shape[0],), dtype=torch.long))

  def run(self):
    torch = self.torch
    b = self.x0.shape[0]
    gen = torch.Generator().manual_seed(1)
    mse = []
    with torch.no_grad():
      for t in range(self.T):
        noise = torch.randn(self.x0.shape, generator=gen)
        x_t = self.sqrt_abar[t] * self.x0 + self.sqrt_1m_abar[t] * noise
        eps = self.model(x_t, torch.full((b,), t, dtype=torch.long)).sample
        mse.append(torch.mean((eps - noise) ** 2, dim=(1, 2, 3)))
    return {"mse": torch.stack(mse, 1)}


def _make_case(s, name):
  if name == "loop":
    return LoopCase(s)
  return CalcBpdCase(s, int(name.split("=")[1]))


def _peak_rss_subprocess(name, cfg):
  """Compile and run one case in a fresh process; returns (peak_rss_mb, baseline_rss_mb)."""
  cmd = [sys.executable, "-m", "experiments.bench_bound", f"--single_case={name}",
         f"--compiler_options={FLAGS.compiler_options}",
         f"--num_timesteps={cfg['T']}", f"--batch={cfg['batch']}",
         f"--image_size={cfg['size']}", f"--quick={cfg['unet'] is UNET_QUICK}"]
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  res = subprocess.run(cmd, cwd=root, capture_output=True, text=True, check=True)
  row = json.loads(res.stdout.strip().splitlines()[-1])
  return row["peak_rss_mb"], row["baseline_rss_mb"]


def _measure_matmul_peak(n):
  return common.matmul_peak_gflops(n)[0]


def _options():
  from vdm.xla_options import xla_compiler_options
  return (xla_compiler_options(purpose="eval") if FLAGS.compiler_options == "recommended"
          else {})


def _single_case(cfg):
  s = Setup(cfg["T"], cfg["batch"], cfg["size"], cfg["unet"], _options())
  base = _rss_mb("VmRSS")
  case = _make_case(s, FLAGS.single_case)
  case.run()
  print(json.dumps({"case": case.name, "peak_rss_mb": _rss_mb(), "baseline_rss_mb": base}))


def main(argv):
  del argv
  if FLAGS.render_only:
    common.bench_report(FLAGS.output or os.path.join(common.RESULTS, "bench_bound.md"), TITLE,
                        render)
    return
  common.reexec_with_tcmalloc("experiments.bench_bound", FLAGS.malloc)
  cfg = _settings()
  if FLAGS.single_case:
    _single_case(cfg)
    return
  import numpy as np

  timer, rows = common.Timer(), []
  env = dict(_env_info(), compiler_options=FLAGS.compiler_options)
  s = Setup(cfg["T"], cfg["batch"], cfg["size"], cfg["unet"], _options())
  peak = _measure_matmul_peak(512 if FLAGS.quick else 2048)
  _emit({"bench": "matmul_peak", "case": "2048^3" if not FLAGS.quick else "512^3", "batch": 1,
         "median_s": None, "images_per_s": None, "gflop_per_s": peak, **env})

  names = ["loop"] + [f"calc_bpd/chunk={c}" for c in cfg["chunks"]]
  cases = {n: _make_case(s, n) for n in names}
  use_peer, why = common.peer_available() if FLAGS.peer and not FLAGS.quick else (False, "")
  if use_peer:
    cases["peer"] = TorchLoopCase(s, cfg["unet"], FLAGS.torch_threads)
    names.append("peer")
  elif why:
    print(f"PyTorch peer not run: {why}", file=sys.stderr)
  flops_per_bound = cases["loop"].step_flops * cfg["T"]
  times = {n: [] for n in names}
  results = {}
  if cfg["warmup"]:
    for n in names:
      cases[n].run()
  for _ in range(cfg["repeats"]):  # alternate the cases, repetition by repetition
    for n in names:
      t0 = time.perf_counter()
      results[n] = cases[n].run()
      times[n].append(time.perf_counter() - t0)

  ref_total = np.asarray(results["loop"]["total_bpd"])
  loop_median = statistics.median(times["loop"])
  peer_median = statistics.median(times["peer"]) if use_peer else None
  for n in names:
    if n == "peer":
      c, med = cases[n], statistics.median(times[n])
      peer_row = {
          "bench": "bound_peer",
          "case": f"peer loop T={cfg['T']} {cfg['size']}x{cfg['size']}x3",
          "method": "peer per-t loop (forward passes only)", "batch": cfg["batch"],
          "num_timesteps": cfg["T"], "median_s": med, "min_s": min(times[n]),
          "times_s": times[n], "s_per_image": med / cfg["batch"],
          "images_per_s": cfg["batch"] / med, "gflop_per_s": flops_per_bound / med / 1e9,
          "impl": f"{c.version}, diffusers.UNet2DModel, {c.threads} threads, no_grad",
          "num_params": c.num_params, **env}
      _emit(peer_row)
      rows.append(peer_row)
      continue
    c = cases[n]
    med = statistics.median(times[n])
    rss, base = _peak_rss_subprocess(n, cfg) if cfg["rss"] else (None, None)
    total = np.asarray(results[n]["total_bpd"])
    row = {
        "bench": BENCH,
        "case": f"{n} T={cfg['T']} {cfg['size']}x{cfg['size']}x3",
        "method": "loop" if n == "loop" else "calc_bpd",
        "t_chunk_size": c.chunk,
        "batch": cfg["batch"],
        "num_timesteps": cfg["T"],
        "median_s": med,
        "min_s": min(times[n]),
        "times_s": times[n],
        "s_per_image": med / cfg["batch"],
        "images_per_s": cfg["batch"] / med,
        "gflop_per_bound": flops_per_bound / 1e9,
        "gflop_per_s": flops_per_bound / med / 1e9,
        "matmul_peak_gflop_per_s": peak,
        "speedup_vs_loop": loop_median / med,
        "speedup_vs_peer": peer_median / med if peer_median else None,
        "compile_s": c.compile_s,
        "xla_temp_mb": c.xla_temp_mb,
        "peak_rss_mb": rss,
        "baseline_rss_mb": base,
        "total_bpd_mean": float(total.mean()),
        "max_abs_diff_total_bpd_vs_loop": float(np.max(np.abs(total - ref_total))),
        "model": "vdm.models.unet.UNet " + json.dumps(cfg["unet"]),
        "num_params": s.num_params,
        "quick": FLAGS.quick,
        **env,
    }
    _emit(row)
    rows.append(row)
  if FLAGS.output is None and not FLAGS.quick:
    FLAGS.output = os.path.join(common.RESULTS, "bench_bound.md")
  if FLAGS.output:
    report(rows, cfg, peak, timer.seconds)


PEER_REFERENCE_S = 59.0   # the PyTorch per-t loop, T = 1000, batch 8, this machine


TITLE = "The full DDPM bound: calc_bpd against a per-timestep loop, per CPU"


def report(rows, cfg, peak, seconds):
  """results/bench_bound.md (--output): this run's section and the sections of the other
  settings kept in the .jsonl beside it (a run replaces only its own CPU's and allocator's)."""
  run = {"bench": "bound_run", "cfg": cfg, "peak_gflop_per_s": peak,
         "compiler_options": FLAGS.compiler_options, "loadavg_1min": common.loadavg(),
         "wall_s": seconds, **_env_info()}
  common.bench_report(FLAGS.output, TITLE, render, rows + [run])


def render(rows) -> str:
  """One section per CPU model and allocator measured, from the rows of its latest run."""
  lines = ["Every figure stands under the CPU and the allocator (malloc) it was measured on; a "
           "run replaces the section of its own CPU model and allocator only "
           "(results/bench_bound.jsonl keeps the rows). tcmalloc is preloaded when installed "
           "(apt-get install libtcmalloc-minimal4; --malloc=system keeps the system's)."]
  for run in (r for r in rows if r["bench"] == "bound_run"):
    mine = [r for r in rows if r["bench"] != "bound_run"
            and common.cpu_and_allocator(r) == common.cpu_and_allocator(run)]
    measured = run["machine"].get("measured", "-")
    lines += ["", f"## {common.setting_label(run)}, measured {measured}", "", section(mine, run)]
  return "\n".join(lines)


def section(rows, run) -> str:
  """The Markdown table of one CPU's cases, and the issue's goals."""
  cfg, peak = run["cfg"], run["peak_gflop_per_s"]
  table = []
  for r in rows:
    ours = r["bench"] == BENCH
    table.append([
        r["method"] + (f", chunk {r['t_chunk_size']}" if r.get("t_chunk_size") else ""),
        f"{r['median_s']:.1f}", f"{r['s_per_image']:.2f}", f"{r['gflop_per_s']:.1f}",
        f"{r['speedup_vs_loop']:.2f}x" if ours else "-",
        f"{r['speedup_vs_peer']:.2f}x" if ours and r.get("speedup_vs_peer") else "-",
        f"{r['xla_temp_mb']:.0f}" if ours else "-",
        f"{r['peak_rss_mb']:.0f}" if ours and r["peak_rss_mb"] else "-"])
  best = min((r for r in rows if r["bench"] == BENCH and r["method"] == "calc_bpd"),
             key=lambda r: r["median_s"])
  peer = next((r for r in rows if r["bench"] == "bound_peer"), None)
  lines = [
      f"The full DDPM bound (all T = {cfg['T']} terms, prior, x0 and eps errors) of a batch of "
      f"{cfg['batch']} random {cfg['size']}x{cfg['size']}x3 images under the U-Net "
      f"{json.dumps(cfg['unet'])} ({best['num_params'] / 1e6:.2f}M parameters); median of "
      f"{cfg['repeats']} alternating repetitions. GFLOP/s: XLA's count of one step times T "
      f"(the same for every case); float32 matmul peak measured in the same run: {peak:.1f} "
      f"GFLOP/s. xla temp = the compiled executable's scratch memory (what the chunk size "
      f"bounds); peak RSS = a fresh process compiling and running that case. Compiler options: "
      f"{run['compiler_options']}. 1-minute load average at the end: "
      f"{run['loadavg_1min']:.1f} ({run['machine']['cores']} cores).",
      "",
      common.markdown_table(["case", "s per batch", "s per image", "GFLOP/s", "vs loop",
                             "vs PyTorch peer", "xla temp (MB)", "peak RSS (MB)"], table),
      "",
      "Goals (issue 3):",
      "",
      f"- calc_bpd at least 3x faster than the per-t loop: best {best['speedup_vs_loop']:.2f}x "
      f"(chunk {best['t_chunk_size']}): {'met' if best['speedup_vs_loop'] >= 3 else 'not met'}.",
  ]
  if (cfg["T"], cfg["batch"], cfg["size"], json.dumps(cfg["unet"])) == (1000, 8, 32,
                                                                        json.dumps(UNET)):
    lines.append(
      f"- at most half of the PyTorch per-t loop's {PEER_REFERENCE_S:.0f} s per batch quoted in "
      f"the issue ({PEER_REFERENCE_S / 2:.1f} s): {best['median_s']:.1f} s: "
      f"{'met' if best['median_s'] <= PEER_REFERENCE_S / 2 else 'not met'}"
      + (f"; against the peer measured in this run ({peer['median_s']:.1f} s): "
         f"{peer['median_s'] / best['median_s']:.2f}x." if peer else "."))
  elif peer:
    lines.append(f"- against the PyTorch peer measured in this run ({peer['median_s']:.1f} s): "
                 f"{peer['median_s'] / best['median_s']:.2f}x (the issue's 59 s reference is "
                 f"for T = 1000, batch 8, 32x32x3).")
  return "\n".join(lines)


if __name__ == "__main__":
  define_flags()
  app.run(main)
