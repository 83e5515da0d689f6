r"""Variational Diffusion Models (Kingma et al. 2021): discrete vs continuous time, the invariance
of the continuous-time bound to the noise schedule, and learned vs fixed schedules.

Two continuous-time VDMs, identical but for the log-SNR schedule gamma(t) = -log SNR(t)
(`learned_linear`: gamma(0), gamma(1) learned; `fixed_linear`), are trained from
configs/paper/vdm_digits.py (which describes the settings), and their EMA denoisers evaluated by
Monte Carlo on the test split through `vdm.diffusion.vdm.vdm_losses`: (a) one model under the
discrete-time bound L_T for each T of experiment.discrete_T and in continuous time; (b) the same
denoiser in continuous time under other schedules with its endpoints (`alt_gamma`); (c) learned
vs fixed schedule. Draw d uses the same PRNG key in every setting, so differences between
settings are paired; an SE is that of the mean of the per-draw test-set means (draws are
independent; examples within a draw share the antithetic t-quantiles). The report's prose (the
paper's claims, what each table shows): experiments/reports/vdm_paper.md.

  python -m experiments.vdm_paper                      # CPU scale (configs/paper/vdm_digits.py)
  python -m experiments.vdm_paper --config.training.num_steps=500 --config.experiment.num_draws=20
  python -m experiments.vdm_paper --full_scale --config.data.data_dir=/path/cifar-10-batches-py

--full_scale trains configs/cifar10_vdm.py (the paper's) instead, with the same --config.*
overrides and experiment.full_scale_num_draws draws (meant for a GPU/TPU machine; the evaluation
runs on the first local device). Runs live in --workdir_root/<run>-<fingerprint>
(experiments.runs: finished runs are reused, interrupted ones resume). Writes
<results_dir>/vdm_paper.json (every statistic of the tables), its Markdown and the figure;
`--render_only` redraws those from the saved JSON.
"""
from __future__ import annotations

import json
import math
import os
import sys

from absl import app, flags
import ml_collections
import numpy as np

from experiments import common
from experiments import runs as runs_lib
from experiments.stats import (mc_summary, paired_difference, paired_draws, variance_ratio,
                               verdict)

NAME = "vdm_paper"
TITLE = ("VDM (Kingma et al. 2021): discrete vs continuous time, schedule invariance, learned "
         "vs fixed schedule")
ALT_SCHEDULES = ("cosine", "quadratic")
RUNS = ("learned_linear", "fixed_linear")

# The paper's values (CIFAR-10 test set, bits/dim). 2.65: VDM, continuous time, Table 1.
# Its per-T numbers for the discrete-time ablation could not be retrieved here: unverified.
PAPER_CONTINUOUS_BPD = 2.65
PAPER_T_TEXT = "not retrieved (unverified)"

# ------------------------------------------------------------------------------------------
# Configs.

def base_config(cpu: ml_collections.ConfigDict, full_scale: bool,
                argv=()) -> ml_collections.ConfigDict:
  """The training config of the experiment (+ its `experiment` group).

  CPU scale: a copy of `cpu`. Full scale: configs/cifar10_vdm.py with cpu.experiment attached,
  num_draws = experiment.full_scale_num_draws, and the --config.* fields named in argv (their
  values taken from `cpu`) applied (`experiments.runs.config_from_cli`).
  """
  if "experiment" not in cpu:
    raise ValueError("config needs an `experiment` group (see configs/paper/vdm_digits.py)")
  def full():
    from configs import cifar10_vdm
    config = cifar10_vdm.get_config()
    config.experiment = ml_collections.ConfigDict(cpu.experiment.to_dict())
    config.experiment.num_draws = cpu.experiment.full_scale_num_draws
    config.experiment.eval_batch_size = cpu.experiment.get("full_scale_eval_batch_size", 125)
    return config
  return runs_lib.config_from_cli(cpu, full if full_scale else None, argv)


def check_experiment(x) -> None:
  """ValueError naming the field for any experiment setting the script cannot use."""
  ints = [("num_draws", x.num_draws, 2), ("eval_batch_size", x.eval_batch_size, 1),
          ("num_examples", x.num_examples, 0)] + [("discrete_T", T, 1) for T in x.discrete_T or ()]
  for name, v, low in ints:
    if isinstance(v, bool) or int(v) != v or v < low:
      raise ValueError(f"config field experiment.{name} must be an integer >= {low}, got {v!r}")
  if not x.discrete_T:
    raise ValueError("config field experiment.discrete_T must list at least one T >= 1")
  for name in x.alt_schedules:
    if name not in ALT_SCHEDULES:
      raise ValueError(f"config field experiment.alt_schedules: {name!r} is not one of "
                       f"{list(ALT_SCHEDULES)}")


def run_config(base: ml_collections.ConfigDict, run: str) -> ml_collections.ConfigDict:
  """The training config of one run: base with vdm.gamma_type set (the experiment group dropped,
  so that Monte Carlo settings do not change the run's hash)."""
  if run not in RUNS:
    raise ValueError(f"run must be one of {list(RUNS)}, got {run!r}")
  config = ml_collections.ConfigDict(base.to_dict())
  del config["experiment"]
  config.model.objective = "vdm"
  config.vdm.gamma_type = run
  config.vdm.num_timesteps = 0
  return config


# ------------------------------------------------------------------------------------------
# Schedules with given endpoints (vdm.diffusion.schedules: functions of (ends, t)), Monte Carlo
# draws, training runs.

def alt_gamma(name: str):
  """The schedule function (ends, t) -> gamma(t) named `name` (ALT_SCHEDULES)."""
  from vdm.diffusion.schedules import cosine_gamma, quadratic_gamma
  fns = {"cosine": cosine_gamma, "quadratic": quadratic_gamma}
  if name not in fns:
    raise ValueError(f"schedule must be one of {list(ALT_SCHEDULES)}, got {name!r}")
  return fns[name]


def make_draw_fn(objective, gamma_fn, T: int):
  """jit((denoiser_params, gamma_params, x [B, ...], key) -> dict of [B] bits/dim): one draw of
  every term of the bound per example through `vdm_losses` (T = 0: continuous time)."""
  import jax
  from vdm.diffusion.vdm import losses_to_bpd, vdm_losses
  num_dims = int(np.prod(objective.data_shape))
  def draw(den_params, gamma_params, x, key):
    nats = vdm_losses(objective.denoise_fn, den_params, gamma_fn, gamma_params, x, key,
                      objective.decoder_levels, T=T, antithetic=True)
    return losses_to_bpd(nats, num_dims)
  return jax.jit(draw)


def ratio_text(r: dict) -> str:
  """'0.62 ± 0.03 (lower)' / '(higher)' / '(no difference resolved)' at 2 SE."""
  z = (r["ratio"] - 1.0) / r["se"] if r["se"] > 0 else 0.0
  word = _side(z, "no difference resolved", "lower", "higher")
  return f"{r['ratio']:.3f} ± {r['se']:.3f} ({word})"


def pm(estimate: dict, digits: int = 4) -> str:
  """'mean ± se' of a {"mean", "se", ...} dict (stats.mc_summary, paired_difference)."""
  return f"{estimate['mean']:.{digits}f} ± {estimate['se']:.{digits}f}"


def train_run(r: runs_lib.Run) -> dict:
  """Train (or reuse) one run (experiments.runs); returns params, its record and loss curve."""
  status = r.ensure_trained()
  if status["state"] != "trained":
    raise RuntimeError(f"run {r.name} diverged ({status.get('message')}); the table needs it")
  curve = [(m["step"], m["loss"]) for m in r.train_metrics() if "loss" in m]
  return {"run": r.name, "workdir": r.workdir, "params": r.ema_params(), "curve": curve,
          "seconds": status["train_seconds"], "reused": not status["trained_now"]}


# ------------------------------------------------------------------------------------------
# The table: Monte Carlo statistics of every setting (a JSON-able results dict).

def compute(config, workdir_root: str, full_scale: bool) -> dict:
  """Train (or reuse) the runs, then the paired Monte Carlo statistics of (a), (b) and (c)."""
  import jax
  import jax.numpy as jnp
  from vdm import data as data_lib, objectives, train as train_lib
  x_cfg = config.experiment
  check_experiment(x_cfg)
  run_names = list(RUNS) if x_cfg.train_fixed else ["learned_linear"]
  configs = {r: run_config(config, r) for r in run_names}
  for c in configs.values():        # fail fast, before any compilation
    train_lib.validate_config(c)
  dataset = data_lib.load_dataset(configs["learned_linear"].data)
  runs = {r: train_run(runs_lib.Run.under(workdir_root, r, configs[r], dataset))
          for r in run_names}
  obj = {r: objectives.build_objective(configs[r], dataset.shape, dataset.num_levels)
         for r in run_names}
  n = x_cfg.num_examples or dataset.test.shape[0]
  x = obj["learned_linear"].encode(jnp.asarray(dataset.test[:n]))
  key = jax.random.PRNGKey(x_cfg.seed)
  M, bs = int(x_cfg.num_draws), int(x_cfg.eval_batch_size)
  timer = common.Timer()
  ends_of = lambda fn, params: [float(fn(params, jnp.zeros(()))), float(fn(params, jnp.ones(())))]
  # Paired draws of every term (the same keys in every setting) of objective o under gamma_fn.
  draws = lambda o, gamma_fn, den, gp, T=0: paired_draws(make_draw_fn(o, gamma_fn, T), den, gp, x,
                                                         key, M, bs)

  # (a) one model, T = discrete_T..., and continuous time (T = 0), paired draws.
  lo, lp = obj["learned_linear"], runs["learned_linear"]["params"]
  settings = list(x_cfg.discrete_T) + [0]
  draws_a = {T: draws(lo, lo.gamma_fn, lp["denoiser"], lp["gamma"], T) for T in settings}
  cont = draws_a[0]
  a = [{"T": T, "bound": mc_summary(dr["loss"]), "diffusion": mc_summary(dr["loss_diff"]),
        "minus_continuous": paired_difference(dr["loss"], cont["loss"]) if T else None}
       for T, dr in draws_a.items()]
  order = [{"T1": T1, "T2": T2, **paired_difference(draws_a[T1]["loss"], draws_a[T2]["loss"])}
           for T1, T2 in zip(settings[:-1], settings[1:])]

  # (b) the same denoiser, continuous time, other schedules with the same endpoints.
  g_ends = ends_of(lo.gamma_fn, lp["gamma"])
  ends = jnp.asarray(g_ends, jnp.float32)
  b = []
  for name in x_cfg.alt_schedules:
    dr = draws(lo, alt_gamma(name), lp["denoiser"], ends)
    b.append({"schedule": name, "ends": ends_of(alt_gamma(name), ends),
              "bound": mc_summary(dr["loss"]), "diffusion": mc_summary(dr["loss_diff"]),
              "minus_own": paired_difference(dr["loss"], cont["loss"]),
              "variance_ratio": variance_ratio(dr["loss_diff"], cont["loss_diff"])})

  # (c) the fixed-schedule model, continuous time, same keys.
  draws_c, compare = {"learned_linear": cont}, None
  if "fixed_linear" in runs:
    fo, fp = obj["fixed_linear"], runs["fixed_linear"]["params"]
    fix = draws_c["fixed_linear"] = draws(fo, fo.gamma_fn, fp["denoiser"], fp["gamma"])
    compare = {"difference": paired_difference(cont["loss"], fix["loss"]),
               "variance_ratio": variance_ratio(cont["loss"], fix["loss"]),
               "variance_ratio_diffusion": variance_ratio(cont["loss_diff"], fix["loss_diff"])}
  c = {r: {"ends": ends_of(obj[r].gamma_fn, runs[r]["params"]["gamma"]),
           **{k: mc_summary(dr[k]) for k in ("loss", "loss_recon", "loss_klz", "loss_diff")}}
       for r, dr in draws_c.items()}
  eval_seconds = timer.seconds

  t = jnp.linspace(0.0, 1.0, 201)
  curves = {"t": np.asarray(t).tolist(),
            "learned_linear": np.asarray(lo.gamma_fn(lp["gamma"], t)).tolist(),
            **{name: np.asarray(alt_gamma(name)(ends, t)).tolist()
               for name in x_cfg.alt_schedules}}
  return {"config": json.loads(config.to_json()), "full_scale": bool(full_scale),
          "data": {"name": dataset.name, "shape": list(dataset.shape),
                   "num_levels": int(dataset.num_levels), "num_train": int(dataset.train.shape[0]),
                   "num_test": int(n)},
          "runs": {r: {k: v[k] for k in ("workdir", "curve", "seconds", "reused")}
                   for r, v in runs.items()},
          "eval_seconds": eval_seconds, "gamma_ends": g_ends, "a": a, "order": order, "b": b,
          "c": c, "learned_vs_fixed": compare, "gamma_curves": curves}


# ------------------------------------------------------------------------------------------
# Rendering (from the results alone).

def gamma_curves_figure(path: str, results: dict) -> str:
  """Two panels: gamma(t) of the schedules, and the training loss of each run."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  curves, v = results["gamma_curves"], results["config"]["vdm"]
  t = np.asarray(curves["t"])
  fig, (ax, ax1) = plt.subplots(1, 2, figsize=(11, 4))
  ax.plot(t, curves["learned_linear"], label="learned_linear (trained)", lw=2)
  ax.plot(t, v["gamma_min"] + (v["gamma_max"] - v["gamma_min"]) * t, "--",
          label="fixed_linear", lw=2)
  for name in results["config"]["experiment"]["alt_schedules"]:
    ax.plot(t, curves[name], ":", label=f"{name} (learned endpoints)")
  ax.set(xlabel="t", ylabel="gamma(t) = -log SNR(t)", title="log-SNR schedules")
  ax.legend(fontsize=8)
  for name, r in results["runs"].items():
    if r["curve"]:
      s, l = np.array(r["curve"]).T
      ax1.plot(s, l, label=name, lw=1)
  ax1.set(xlabel="training step", ylabel="training loss (bits/dim, batch mean)", yscale="log",
          title="training loss (continuous-time bound estimate)")
  ax1.legend(fontsize=8)
  return common.save_figure(fig, path, dpi=100)


def _z(d: dict) -> float:
  """An estimate's mean in standard errors (inf when its SE is 0)."""
  return d["mean"] / d["se"] if d["se"] > 0 else float("inf")


def _std(estimate: dict) -> str:
  """The standard deviation of a one-draw estimate (mc_summary's est_var), to 3 decimals."""
  return f"{math.sqrt(estimate['est_var']):.3f}"


def _side(z: float, same: str, lower: str, higher: str) -> str:
  """`same` when |z| <= 2, else `lower` or `higher` by the sign of z."""
  return same if abs(z) <= 2 else lower if z < 0 else higher


def render(results: dict, results_dir: str) -> str:
  """The Markdown body (and <results_dir>/vdm_paper.png) from `compute`'s results; the prose is
  experiments/reports/vdm_paper.md."""
  text, table = common.report_text(NAME), common.markdown_table
  cfg, data, runs, g_ends = (results[k] for k in ("config", "data", "runs", "gamma_ends"))
  gamma_curves_figure(os.path.join(results_dir, f"{NAME}.png"), results)
  label = lambda T: "continuous (T = inf)" if T == 0 else f"T = {T}"
  ends = lambda e: f"{e[0]:.3f}, {e[1]:.3f}"
  rows_a = [[label(r["T"]), f"{PAPER_CONTINUOUS_BPD} (CIFAR-10)" if r["T"] == 0 else PAPER_T_TEXT,
             pm(r["bound"]), pm(r["diffusion"]),
             pm(r["minus_continuous"]) if r["minus_continuous"] else "0 (reference)",
             _std(r["bound"])] for r in results["a"]]
  own = results["a"][-1]
  rows_b = [["learned_linear (the model's own, linear)", ends(g_ends), pm(own["bound"]),
             "0 (reference)", "-", _std(own["diffusion"]), "1"]]
  rows_b += [[r["schedule"], ends(r["ends"]), pm(r["bound"]), pm(r["minus_own"]),
              f"{_z(r['minus_own']):+.2f}", _std(r["diffusion"]), ratio_text(r["variance_ratio"])]
             for r in results["b"]]
  rows_c = []
  for r, s in results["c"].items():
    curve = runs[r]["curve"]
    tail = [l for _, l in curve[-max(1, len(curve) // 10):]]   # the last 10% of the losses
    rows_c.append([r, *(f"{e:.3f}" for e in s["ends"]), f"{s['loss_recon']['mean']:.4f}",
                   f"{s['loss_klz']['mean']:.4f}", pm(s["loss_diff"]), pm(s["loss"]),
                   _std(s["loss"]), _std(s["loss_diff"]),
                   f"{np.mean(tail):.4f}" if tail else "-", f"{runs[r]['seconds'] / 60:.1f}"])
  # (a) more steps tighter: every consecutive paired difference above 2 SE; (b) every |z| < 3.
  order_ok = all(d["mean"] > 2 * d["se"] for d in results["order"])
  inv_ok = all(abs(_z(r["minus_own"])) < 3.0 for r in results["b"])
  parts = [text["report"].format(
      scale="FULL SCALE" if results["full_scale"] else "CPU scale", data=data, cfg=cfg,
      shape="x".join(map(str, data["shape"])), ch_mult=tuple(cfg["model"]["ch_mult"]),
      fourier=tuple(cfg["model"]["fourier_features"]), eval_minutes=results["eval_seconds"] / 60,
      run_times=", ".join(f"{r} {v['seconds'] / 60:.1f} min"
                          + (f" {text['reused']}" if v["reused"] else "") for r, v in runs.items()),
      order="\n".join(text["order_item"].format(first=label(d["T1"]), second=label(d["T2"]),
                                                d=pm(d), z=_z(d)) for d in results["order"]),
      order_verdict=verdict(order_ok), invariance_verdict=verdict(inv_ok),
      z_list=", ".join(f"{r['schedule']}: {_z(r['minus_own']):+.2f} SE" for r in results["b"]),
      table_a=table(["setting", "paper (bits/dim)", "ours: bound (bits/dim)",
                     "ours: diffusion term", "minus continuous (paired)", "estimator std"], rows_a),
      table_b=table(["schedule", "gamma(0), gamma(1)", "bound (bits/dim)",
                     "minus own schedule (paired)", "z = diff / SE", "diffusion-term estimator std",
                     "estimator variance / own (bootstrap SE)"], rows_b),
      table_c=table(["schedule", "gamma(0)", "gamma(1)", "recon", "prior (klz)", "diffusion",
                     "bound (bits/dim)", "estimator std (bound)", "estimator std (diffusion)",
                     "final training loss", "training (min)"], rows_c)), ""]
  if lf := results["learned_vs_fixed"]:
    z = _z(lf["difference"])
    parts.append(text["learned_vs_fixed"].format(
        d=pm(lf["difference"]), z=z, cfg=cfg, g=g_ends, log_snr=[-g for g in g_ends],
        bound_text=_side(z, "no difference resolved at this Monte Carlo precision",
                         "the learned schedule's bound is LOWER (better)",
                         "the learned schedule's bound is HIGHER (worse)"),
        ratio_bound=ratio_text(lf["variance_ratio"]),
        ratio_diffusion=ratio_text(lf["variance_ratio_diffusion"])))
  return "\n".join(parts + ["", text["tail"].format(name=NAME)])


def readme_table(results: dict) -> str:
  """README's summary: the bound of one model for each T and schedule, and of the fixed-
  schedule model, with the paired differences."""
  label = lambda T: "continuous time" if T == 0 else f"T = {T}"
  rows = [[label(r["T"]), pm(r["bound"]),
           pm(r["minus_continuous"]) if r["minus_continuous"] else "0"] for r in results["a"]]
  rows += [[f"same denoiser, {r['schedule']} schedule, same endpoints", pm(r["bound"]),
            f"{pm(r['minus_own'])} ({_z(r['minus_own']):+.1f} SE)"] for r in results["b"]]
  if results["learned_vs_fixed"]:
    rows.append(["a second model with a fixed linear schedule",
                 pm(results["c"]["fixed_linear"]["loss"]),
                 f"learned minus fixed: {pm(results['learned_vs_fixed']['difference'])}"])
  return common.markdown_table(["one trained model, evaluated with", "bound (bits/dim)",
                                "minus continuous (paired)"], rows)


def main(argv):
  del argv
  FLAGS = flags.FLAGS
  config = base_config(FLAGS.config, FLAGS.full_scale, sys.argv)
  common.compute_or_render(
      NAME, TITLE, FLAGS.results_dir, FLAGS.render_only,
      lambda: compute(config, FLAGS.workdir_root, FLAGS.full_scale),
      lambda results: render(results, FLAGS.results_dir))


def _define_flags():
  """The script's flags; defined only when run as a script, so that tests and other scripts can
  import this module's functions without their absl flags colliding."""
  common.define_paper_flags("vdm_digits.py", "vdm_paper",
                            full_scale="Train configs/cifar10_vdm.py (the paper's CIFAR-10 "
                            "settings, GPU/TPU) instead of --config's training fields.")


if __name__ == "__main__":
  _define_flags()
  app.run(main)
