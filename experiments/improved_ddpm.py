r"""Improved DDPM (Nichol & Dhariwal 2021), Tables 1 and 2: the objective and the noise schedule.

Six models, identical but for the schedule (linear | cosine) and the objective (L_simple, fixed
variances | L_hybrid, learned | L_vlb, learned, importance-sampled t: OBJECTIVE_SETTINGS), are
trained; their full DDPM bound on the test split is tabulated beside the paper's. One extra run,
cosine L_vlb with uniform t (--vlb_uniform), shows whether importance sampling lowers the noise
of the L_vlb estimate (N&D Sec. 3.3). The report's prose: experiments/reports/improved_ddpm.md.

  python -m experiments.improved_ddpm               # CPU scale: digits, see the config file
  python -m experiments.improved_ddpm --config.training.num_steps=500   # any override
  python -m experiments.improved_ddpm --full_scale \
      --config.data.data_dir=/path/to/cifar-10-batches-py       # CIFAR-10, the paper's settings

--config defaults to configs/paper/improved_ddpm_digits.py; --full_scale uses its `full_scale()`
instead, with the same `--config.*` overrides. Runs live in --workdir_root/<run>-<fingerprint>
(experiments.runs: finished runs are reused, interrupted ones resume). Writes <results_dir>/
improved_ddpm.json, its Markdown (after every run) and figure; `--render_only` redraws those.
"""
from __future__ import annotations

import json
import os
import sys

from absl import app, flags, logging
import ml_collections
import numpy as np

from configs.paper import improved_ddpm_digits
from experiments import common, runs, stats

SCHEDULES = ("linear", "cosine")
OBJECTIVES = ("simple", "hybrid", "vlb")
RUNS = tuple(f"{s}_{o}" for s in SCHEDULES for o in OBJECTIVES)
VLB_UNIFORM = "cosine_vlb_uniform"
ALL_RUNS = RUNS + (VLB_UNIFORM,)   # the order of the tables
NAN = float("nan")
EXECUTION_ORDER = ("cosine_vlb", "cosine_hybrid", "cosine_simple", "linear_simple",
                   "linear_hybrid", "linear_vlb")

# Per objective: (diffusion.loss_type, diffusion.var_type, diffusion.timestep_sampler).
OBJECTIVE_SETTINGS = {"simple": ("mse", "fixed_large", "uniform"),
                      "hybrid": ("hybrid", "learned_range", "uniform"),
                      "vlb": ("kl", "learned_range", "importance"),
                      "vlb_uniform": ("kl", "learned_range", "uniform")}
OBJECTIVE_NAMES = {o: "L_" + o.split("_")[0] for o in OBJECTIVE_SETTINGS}   # L_vlb for both

# The paper's NLL (bits/dim, test; T = 4000): CIFAR-10 Table 2 (500K iterations), ImageNet 64x64
# Table 1 (200K iterations); their source: the report's note under the table.
PAPER_CIFAR10 = {"linear_simple": 3.37, "linear_hybrid": 3.26, "linear_vlb": None,
                 "cosine_simple": 3.26, "cosine_hybrid": 3.17, "cosine_vlb": 2.94}
PAPER_IMAGENET64 = {"linear_simple": 3.77, "linear_hybrid": 3.66, "linear_vlb": None,
                    "cosine_simple": 3.68, "cosine_hybrid": 3.62, "cosine_vlb": 3.57}

NAME = "improved_ddpm"
TITLE = "Improved DDPM: L_simple vs L_hybrid vs L_vlb, linear vs cosine schedule (NLL bound)"

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The command-line flags (defined only when run as a script: importing has no effects)."""
  common.define_paper_flags("improved_ddpm_digits.py", "improved_ddpm",
                            full_scale="Use the paper's CIFAR-10 settings (GPU/TPU), "
                            "configs/paper/improved_ddpm_digits.full_scale(), instead of --config.")
  flags.DEFINE_list("runs", list(RUNS), f"Runs of the table, from {list(RUNS)}.")
  flags.DEFINE_bool("vlb_uniform", True, f"Also train {VLB_UNIFORM} (L_vlb with uniform "
                    "timesteps) to compare the noise of the L_vlb estimate.")


def parse_runs(runs, vlb_uniform: bool) -> list:
  """The runs to make, in execution order: cosine first (the paper's headline rows), then
  linear, then the uniform-timestep L_vlb run if asked. ValueError for unknown names."""
  bad = [r for r in runs if r not in RUNS]
  if bad or not runs:
    raise ValueError(f"--runs={','.join(runs)}: {bad or 'empty'} not allowed; allowed values "
                     f"(comma-separated, at least one): {list(RUNS)}")
  out = sorted(dict.fromkeys(runs), key=EXECUTION_ORDER.index)
  return out + [VLB_UNIFORM] if vlb_uniform else out


# ------------------------------------------------------------------------------------------
# Configs (the full-scale one: configs/paper/improved_ddpm_digits.full_scale).

full_scale_config = improved_ddpm_digits.full_scale


def run_config(base: ml_collections.ConfigDict, run: str,
               full_scale: bool) -> ml_collections.ConfigDict:
  """The config of one run: base with the schedule and the objective of `run` set."""
  schedule, objective = run.split("_", 1)
  if schedule not in SCHEDULES or objective not in OBJECTIVE_SETTINGS:
    raise ValueError(f"run must be one of {list(ALL_RUNS)}, got {run!r}")
  config = ml_collections.ConfigDict(base.to_dict())
  d = config.diffusion
  d.beta_schedule = schedule
  # improved-diffusion's linear schedule for longer chains: Ho et al.'s endpoints times
  # 1000 / T (T = 4000: 2.5e-5 .. 0.005). For T <= 1000 the endpoints are used unchanged (the
  # same at T = 1000; shorter chains, as in the smoke tests, would get betas above 1).
  scale = 1000.0 / d.num_timesteps if d.num_timesteps > 1000 else 1.0
  d.beta_start, d.beta_end = base.diffusion.beta_start * scale, base.diffusion.beta_end * scale
  d.loss_type, d.var_type, d.timestep_sampler = OBJECTIVE_SETTINGS[objective]
  if full_scale:
    config.model.dropout = 0.3 if schedule == "cosine" else 0.1   # N&D Table 2 runs
  return config


def base_config(cpu_config: ml_collections.ConfigDict, full_scale: bool,
                argv) -> ml_collections.ConfigDict:
  """A copy of cpu_config (--config, overrides applied), or with full_scale the
  full_scale_config() with the same --config.* overrides (those named in argv) applied."""
  return runs.config_from_cli(cpu_config, full_scale_config if full_scale else None, argv)


def loss_noise(rows: list, key: str = "loss") -> dict:
  """Statistics of the per-batch training loss over the second half of training.

  Each logged `loss` is the mean over one batch of weights * T * L_t (bits/dim), an unbiased
  estimate of sum_{t} L_t for the current parameters whatever the timestep sampler; its spread
  across batches is the estimator's noise (plus a slow drift of the parameters, which the
  successive-difference estimate sqrt(mean(diff^2) / 2) removes).
  """
  values = np.asarray([r[key] for r in rows if key in r], np.float64)
  values = values[len(values) // 2:]
  if len(values) < 3:
    return {"n": len(values), "mean": NAN, "std": NAN, "diff_std": NAN}
  return {"n": int(len(values)), "mean": float(values.mean()), "std": float(values.std(ddof=1)),
          "diff_std": float(np.sqrt(np.mean(np.diff(values) ** 2) / 2.0))}


# ------------------------------------------------------------------------------------------
# The report.

def fmt(value, digits: int = 3) -> str:
  """A table cell ('n/a' for a missing value, 'nan' for a diverged run's)."""
  return common.number(value, digits, missing="n/a", nonfinite="nan")


def ordering(ok: bool, *values) -> str:
  """The verdict on an ordering of single-seed numbers: not resolved when one is missing."""
  if not all(np.isfinite(v) for v in values):
    return stats.verdict(None) + " (a run is missing or diverged)"
  return stats.verdict(ok)


def conclusions(nll: dict) -> list:
  """The paper's three NLL orderings, checked on our numbers: list of (claim, verdict, detail).

  nll: run name -> total bits/dim (NaN or missing for diverged runs).
  """
  def claim(text, cells, sep):
    """cells: [(label, run)]; the claim is that the first cell has the lowest NLL."""
    v = [NAN if nll.get(run) is None else nll[run] for _, run in cells]
    return (text, ordering(all(v[0] < x for x in v[1:]), *v),
            sep.join(f"{label} {fmt(x)}" for (label, _), x in zip(cells, v)))

  objs = lambda s, names: [(OBJECTIVE_NAMES[o], f"{s}_{o}") for o in names]
  return ([claim(f"{s}: L_vlb (importance-sampled) gives the best NLL",
                 objs(s, ("vlb", "hybrid", "simple")), ", ") for s in SCHEDULES]
          + [claim(f"{s}: L_hybrid beats L_simple in NLL", objs(s, ("hybrid", "simple")), " vs ")
             for s in SCHEDULES]
          + [claim(f"{OBJECTIVE_NAMES[o]}: cosine beats linear in NLL",
                   [(s, f"{s}_{o}") for s in ("cosine", "linear")], " vs ") for o in OBJECTIVES])


def plot(path: str, records: dict) -> bool:
  """PNG: (a) the per-timestep bound terms L_t of every run, (b) the L_vlb training losses."""
  plt = common.pyplot()
  if plt is None:
    return False
  fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 4.2))
  for run, rec in records.items():
    if rec.get("bound") is not None:
      vb = np.asarray(rec["bound"]["terms"]["vb"], np.float64)
      ax.semilogy(np.arange(len(vb)), np.maximum(vb, 1e-8), "-" if run.startswith("cosine")
                  else "--", lw=1, label=f"{run} ({rec['bound']['summary']['total_bpd']:.3f})")
  ax.set(xlabel="timestep t (0 = decoder L_0)", ylabel="L_t (bits/dim), test split",
         title="Per-timestep bound terms (total in the legend)")
  ax.legend(fontsize=7)
  for run in ("cosine_vlb", VLB_UNIFORM, "linear_vlb"):
    rows = records.get(run, {}).get("metrics") or []
    if rows:
      bx.plot([r["step"] for r in rows], [r["loss"] for r in rows], lw=0.7, label=run)
  bx.set_yscale("symlog", linthresh=1.0)
  bx.set(xlabel="training step", ylabel="per-batch L_vlb estimate (bits/dim)",
         title="L_vlb training loss: importance vs uniform timesteps")
  bx.legend(fontsize=7)
  common.save_figure(fig, path)
  return True


NLL_HEADERS = ["schedule", "objective", "variance", "t sampler", "ours: NLL bound (bits/dim)",
               "L_T prior", "L_0 decoder", "sum L_t, t>=1", "paper CIFAR-10 (T=4K)",
               "paper ImageNet64 (200K it, T=4K)", "status", "run min"]
QUARTER_HEADERS = ["cell", "t in 1st quarter (incl. L_0)", "2nd", "3rd", "4th",
                   "of which the last step t = T-1", "L_T", "total", "total without t = T-1"]
NOISE_HEADERS = ["run", "batches", "mean loss", "std of per-batch loss", "successive-diff std"]


def summary(rec: dict) -> dict:
  """The bound's summary of a run's record ({} while pending or when it diverged)."""
  return (rec.get("bound") or {}).get("summary", {})


def nll_rows(records: dict) -> list:
  """The main table: per run its settings, bound (and parts), the paper's values, status."""
  rows = []
  for run in (r for r in ALL_RUNS if r in records):
    schedule, objective = run.split("_", 1)
    info, s = records[run].get("info"), summary(records[run])
    nums = [fmt(s.get(k, NAN), 4) if info else "-"
            for k in ("total_bpd", "prior_bpd", "decoder_bpd", "diffusion_bpd")]
    status = (info["status"] + (" (reused)" if info.get("reused") else "") if info
              else "pending (not run yet)")
    rows.append([schedule, OBJECTIVE_NAMES[objective], *OBJECTIVE_SETTINGS[objective][1:], *nums]
                + [fmt(p[run], 2) if run in p else "-" for p in (PAPER_CIFAR10, PAPER_IMAGENET64)]
                + [status, fmt(info["seconds"] / 60.0, 1) if info else "-"])
  return rows


def quarter_rows(records: dict) -> list:
  """Per run with a bound: L_t summed per quarter of the timesteps, the last step, L_T, total."""
  rows = []
  for run in ALL_RUNS:
    b = records.get(run, {}).get("bound")
    if b:
      s, last = b["summary"], float(b["terms"]["vb"][-1])
      total = s.get("total_bpd", NAN)
      values = [s.get(f"vb_q{q}_bpd", NAN) for q in range(4)] + [last, s.get("prior_bpd", NAN)]
      rows.append([run] + [fmt(v, 4) for v in values + [total, total - last]])
  return rows


def report(base, full_scale: bool, records: dict, fig_path: str, fig_ok: bool) -> str:
  """The Markdown body: the prose of experiments/reports/improved_ddpm.md around the tables."""
  text, m, d, table = common.report_text(NAME), base.model, base.diffusion, common.markdown_table
  parts = [text["intro"].format(
      c=base, scale="FULL (the paper CIFAR-10 settings)" if full_scale else "CPU",
      ch_mult=tuple(m.ch_mult), attn=tuple(m.attn_resolutions),
      dropout="0.1 linear / 0.3 cosine" if full_scale else m.dropout,
      n_test=base.eval.num_examples or "all",
      decoder="exact" if d.get("decoder_approx") is None else d.decoder_approx,
      table=table(NLL_HEADERS, nll_rows(records)))]
  pending = [run for run, rec in records.items() if not rec.get("info")]
  if pending:
    parts.insert(0, text["in_progress"].format(done=len(records) - len(pending),
                                               total=len(records), pending=", ".join(pending)))
  q_rows = quarter_rows(records)
  if q_rows:
    parts.append(text["quarters"].format(T=d.num_timesteps, table=table(QUARTER_HEADERS, q_rows)))
  claims = conclusions({run: summary(rec).get("total_bpd", NAN) for run, rec in records.items()})
  held, failed = (sum(c[1] == v for c in claims) for v in (stats.HOLDS, stats.FAILS))
  parts.append(text["claims"].format(
      table=table(["claim (paper: holds)", "ours", "numbers (bits/dim)"], claims), held=held,
      n=len(claims), failed=failed, num_steps=base.training.num_steps,
      rest="" if held + failed == len(claims) else ", the rest cannot be judged"))
  imp, uni = (records.get(run, {}).get("noise") for run in ("cosine_vlb", VLB_UNIFORM))
  if imp and uni:
    rows = [[name, nz["n"]] + [fmt(nz[k], 3) for k in ("mean", "std", "diff_std")]
            for name, nz in (("cosine_vlb (importance)", imp), ("cosine_vlb_uniform", uni))]
    ratio = uni["std"] / imp["std"] if imp["std"] > 0 else NAN
    parts.append(text["noise"].format(c=base, table=table(NOISE_HEADERS, rows), ratio=fmt(ratio, 1),
                                      noisier="yes" if uni["std"] > imp["std"] else "no"))
  if fig_ok:
    parts.append(text["figure"].format(fig=os.path.basename(fig_path)))
  done = [rec["info"]["seconds"] for rec in records.values() if rec.get("info")]
  parts.append(text["runs"].format(minutes=sum(done) / 60))
  items = [f"- `{run}`: `{rec['workdir']}`" for run, rec in records.items() if rec]
  return "\n".join(["\n\n".join(parts), ""] + items)


# ------------------------------------------------------------------------------------------

def record(r: runs.Run) -> dict:
  """Train (or resume) and evaluate one run unless it finished before; returns its entry of
  the results (JSON-able): info (run, status "ok" | "diverged", seconds of train + eval when
  it was made, reused, error of a diverged run), the bound's summary and terms, the per-step
  training loss and its noise statistics."""
  status = r.ensure_trained()
  info = {"run": r.name, "status": "ok" if status["state"] == "trained" else "diverged",
          "seconds": status["train_seconds"], "reused": not status["trained_now"]}
  if "message" in status:
    info["error"] = status["message"]
  metrics = [{"step": m["step"], "loss": m["loss"]} for m in r.train_metrics() if "loss" in m]
  b = r.bound() if info["status"] == "ok" else None
  bound = {"summary": b["summary"], "terms": {"vb": b["terms"]["vb"]}} if b else None
  return {"workdir": r.workdir, "info": info, "bound": bound, "metrics": metrics,
          "noise": loss_noise(metrics) if metrics else None}


def compute(base, names: list, full_scale: bool, workdir_root: str, progress=None) -> dict:
  """Train (or reuse) every run of `names` and gather the table's numbers. Every run's config
  is checked (trainer fields, data, objective) before any training. progress(results) is
  called after each run with the results so far."""
  configs = {run: run_config(base, run, full_scale) for run in names}
  from vdm import data as data_lib, objectives, train
  for config in configs.values():
    train.validate_config(config)
  dataset = data_lib.load_dataset(base.data)
  for config in configs.values():
    objectives.build_objective(config, dataset.shape, dataset.num_levels)
  results = {"config": json.loads(base.to_json()), "full_scale": bool(full_scale),
             "records": {run: {} for run in names}}
  for run, config in configs.items():
    r = runs.Run.under(workdir_root, run, config)
    logging.info("=== %s -> %s", run, r.workdir)
    results["records"][run] = rec = record(r)
    logging.info("%s: %s", run, rec["bound"]["summary"] if rec["bound"] else rec["info"])
    if progress is not None:
      progress(results)
  return results


def render(results: dict, results_dir: str) -> str:
  """The Markdown body (and the figure <results_dir>/improved_ddpm.png) from the results."""
  base = ml_collections.ConfigDict(results["config"])
  fig_path = os.path.join(results_dir, NAME + ".png")
  return report(base, results["full_scale"], results["records"], fig_path,
                plot(fig_path, results["records"]))


def readme_table(results: dict) -> str:
  """README's summary table: the test NLL bound of each cell beside the paper's CIFAR-10 values
  (the lowest of a row in bold when the row has all three objectives)."""
  nll = {run: summary(rec).get("total_bpd") for run, rec in results["records"].items()}

  def row(label, values, digits):
    best = None if None in values[:3] else min(values[:3])
    cell = lambda v: ("-" if v is None else f"**{v:.{digits}f}**" if v == best
                      else f"{v:.{digits}f}")
    return [label] + [cell(v) for v in values]

  rows = [row(f"{s}, ours", [nll.get(f"{s}_{o}") for o in OBJECTIVES]
              + [nll.get(VLB_UNIFORM) if s == "cosine" else None], 4) for s in SCHEDULES]
  rows += [row(f"{s}, paper", [PAPER_CIFAR10[f"{s}_{o}"] for o in OBJECTIVES] + [None], 2)
           for s in SCHEDULES]
  return common.markdown_table(["schedule", "L_simple (fixed Sigma)", "L_hybrid (learned range)",
                                "L_vlb (importance-sampled t)", "L_vlb, uniform t"], rows)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  names = parse_runs(list(FLAGS.runs), FLAGS.vlb_uniform)
  base = base_config(FLAGS.config, FLAGS.full_scale, sys.argv)
  draw = lambda results: render(results, FLAGS.results_dir)
  # After every run the table so far: a long table shows its finished rows early.
  progress = lambda results: common.write_rendered(NAME, TITLE, FLAGS.results_dir, results, draw)
  common.compute_or_render(
      NAME, TITLE, FLAGS.results_dir, FLAGS.render_only,
      lambda: compute(base, names, FLAGS.full_scale, FLAGS.workdir_root, progress), draw)


if __name__ == "__main__":
  define_flags()
  app.run(main)
