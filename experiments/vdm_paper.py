r"""Variational Diffusion Models (Kingma et al. 2021): discrete vs continuous time, the invariance
of the continuous-time bound to the noise schedule, and learned vs fixed schedules.

Two continuous-time VDMs are trained from one config (configs/paper/vdm_digits.py), identical
but for the log-SNR schedule gamma(t) = -log SNR(t): `learned_linear` (gamma(0), gamma(1)
learned, VDM Sec. 3.2 / App. H) and `fixed_linear` (gamma from -13.3 to 5). The trained EMA
denoisers are then evaluated by Monte Carlo on the test split, through the ordinary code path
`vdm.diffusion.vdm.vdm_losses` (VDM eq. 11 with eq. 15 for T steps, eq. 17 for T -> inf):

  (a) ONE model (learned_linear), the same denoiser under the discrete-time bound L_T for each
      T of experiment.discrete_T and under the continuous-time bound L_inf. The paper
      (Sec. 4.1, App. F): with a good enough denoiser L_2T < L_T, so more steps give a tighter
      bound, and continuous time is the limit.
  (b) the same denoiser, continuous time, under monotone schedules with the SAME endpoints
      gamma(0), gamma(1) as its own (cosine: the log-SNR of a cosine schedule, 2 log tan(.),
      and quadratic; see `alt_gamma`). The paper (Sec. 5.1, eq. 18): with x_hat a function of
      (z, SNR), L_inf = 1/2 int_{SNR_min}^{SNR_max} E||x - x_hat(z_v, v)||^2 dv depends on the
      schedule only through its endpoints, so the bounds are equal in expectation; the variance
      of the one-sample estimator depends on the shape.
  (c) learned vs fixed schedule: the bound, its three terms, the learned endpoints and the
      variance of the loss estimator; the training-loss curves (figure).

Monte Carlo: every setting uses `num_draws` draws of (t, eps, eps_0) per test example; draw d
uses the same PRNG key in every setting (the same eps, eps_0 and the same antithetic
t-quantiles u0 + i/B), so differences between settings are paired. The estimate is the mean
over draws of the test-set mean; its standard error (SE) is the standard deviation of the
per-draw test-set means over sqrt(num_draws) (draws are independent; examples within a draw
share u0). "Estimator std" is the standard deviation of a one-draw estimate of one example's
bound, averaged (as a variance) over the test examples.

  python -m experiments.vdm_paper                      # CPU scale (configs/paper/vdm_digits.py)
  python -m experiments.vdm_paper --config.training.num_steps=500 --config.experiment.num_draws=20
  python -m experiments.vdm_paper --full_scale --config.data.data_dir=/path/cifar-10-batches-py

--full_scale trains configs/cifar10_vdm.py (the paper's) instead, with --config.* overrides
applied to it and experiment.full_scale_num_draws draws (meant for a GPU/TPU machine; the
evaluation runs on the first local device). Runs live in
--workdir_root/<run>-<config fingerprint> (experiments.runs): a rerun reuses finished runs and resumes unfinished ones.
Writes <results_dir>/vdm_paper.json (every statistic of the tables), the Markdown rendered from
it and the figure; `--render_only` redraws both from the saved JSON.
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
  num_draws = experiment.full_scale_num_draws, and every --config.* field named in argv (taken
  from `cpu`, which already holds the command-line values) applied (`experiments.runs.config_from_cli`).
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
  def pos_int(name, v, low=1):
    if isinstance(v, bool) or int(v) != v or v < low:
      raise ValueError(f"config field experiment.{name} must be an integer >= {low}, got {v!r}")
  pos_int("num_draws", x.num_draws, 2)
  pos_int("eval_batch_size", x.eval_batch_size)
  pos_int("num_examples", x.num_examples, 0)
  if not x.discrete_T:
    raise ValueError("config field experiment.discrete_T must list at least one T >= 1")
  for T in x.discrete_T:
    pos_int("discrete_T", T)
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
# Schedules with given endpoints (vdm.diffusion.schedules: functions of (ends, t)).

def alt_gamma(name: str):
  """The schedule function (ends, t) -> gamma(t) named `name` (ALT_SCHEDULES)."""
  from vdm.diffusion.schedules import cosine_gamma, quadratic_gamma
  fns = {"cosine": cosine_gamma, "quadratic": quadratic_gamma}
  if name not in fns:
    raise ValueError(f"schedule must be one of {list(ALT_SCHEDULES)}, got {name!r}")
  return fns[name]


# ------------------------------------------------------------------------------------------
# Monte Carlo evaluation.

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
  word = ("no difference resolved" if abs(z) <= 2 else "lower" if z < 0 else "higher")
  return f"{r['ratio']:.3f} ± {r['se']:.3f} ({word})"


def pm(estimate: dict, digits: int = 4) -> str:
  """'mean ± se' of a {"mean", "se", ...} dict (stats.mc_summary, paired_difference)."""
  return f"{estimate['mean']:.{digits}f} ± {estimate['se']:.{digits}f}"


# ------------------------------------------------------------------------------------------
# Training runs.

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
  runs = {}
  for r in run_names:
    runs[r] = train_run(runs_lib.Run.under(workdir_root, r, configs[r], dataset))
  obj = {r: objectives.build_objective(configs[r], dataset.shape, dataset.num_levels)
         for r in run_names}
  n = x_cfg.num_examples or dataset.test.shape[0]
  x = obj["learned_linear"].encode(jnp.asarray(dataset.test[:n]))
  key = jax.random.PRNGKey(x_cfg.seed)
  M, bs = int(x_cfg.num_draws), int(x_cfg.eval_batch_size)
  timer = common.Timer()
  ends_of = lambda fn, params: [float(fn(params, jnp.zeros(()))), float(fn(params, jnp.ones(())))]

  # (a) one model, T = discrete_T..., and continuous time (T = 0), paired draws.
  lo, lp = obj["learned_linear"], runs["learned_linear"]["params"]
  settings = list(x_cfg.discrete_T) + [0]
  draws_a = {T: paired_draws(make_draw_fn(lo, lo.gamma_fn, T), lp["denoiser"], lp["gamma"], x, key,
                         M, bs) for T in settings}
  cont = draws_a[0]
  a = [{"T": T, "bound": mc_summary(draws_a[T]["loss"]),
        "diffusion": mc_summary(draws_a[T]["loss_diff"]),
        "minus_continuous": paired_difference(draws_a[T]["loss"], cont["loss"]) if T else None}
       for T in settings]
  order = [{"T1": T1, "T2": T2, **paired_difference(draws_a[T1]["loss"], draws_a[T2]["loss"])}
           for T1, T2 in zip(settings[:-1], settings[1:])]

  # (b) the same denoiser, continuous time, other schedules with the same endpoints.
  g_ends = ends_of(lo.gamma_fn, lp["gamma"])
  ends = jnp.asarray(g_ends, jnp.float32)
  b = []
  for name in x_cfg.alt_schedules:
    dr = paired_draws(make_draw_fn(lo, alt_gamma(name), 0), lp["denoiser"], ends, x, key, M, bs)
    b.append({"schedule": name, "ends": ends_of(alt_gamma(name), ends),
              "bound": mc_summary(dr["loss"]), "diffusion": mc_summary(dr["loss_diff"]),
              "minus_own": paired_difference(dr["loss"], cont["loss"]),
              "variance_ratio": variance_ratio(dr["loss_diff"], cont["loss_diff"])})

  # (c) the fixed-schedule model, continuous time, same keys.
  draws_c = {"learned_linear": cont}
  if "fixed_linear" in runs:
    fo, fp = obj["fixed_linear"], runs["fixed_linear"]["params"]
    draws_c["fixed_linear"] = paired_draws(make_draw_fn(fo, fo.gamma_fn, 0), fp["denoiser"],
                                       fp["gamma"], x, key, M, bs)
  c = {r: {"ends": ends_of(obj[r].gamma_fn, runs[r]["params"]["gamma"]),
           **{k: mc_summary(dr[k]) for k in ("loss", "loss_recon", "loss_klz", "loss_diff")}}
       for r, dr in draws_c.items()}
  compare = None
  if "fixed_linear" in draws_c:
    lin, fix = draws_c["learned_linear"], draws_c["fixed_linear"]
    compare = {"difference": paired_difference(lin["loss"], fix["loss"]),
               "variance_ratio": variance_ratio(lin["loss"], fix["loss"]),
               "variance_ratio_diffusion": variance_ratio(lin["loss_diff"], fix["loss_diff"])}
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
  fig, axes = plt.subplots(1, 2, figsize=(11, 4))
  ax = axes[0]
  ax.plot(t, curves["learned_linear"], label="learned_linear (trained)", lw=2)
  ax.plot(t, v["gamma_min"] + (v["gamma_max"] - v["gamma_min"]) * t, "--",
          label="fixed_linear", lw=2)
  for name in results["config"]["experiment"]["alt_schedules"]:
    ax.plot(t, curves[name], ":", label=f"{name} (learned endpoints)")
  ax.set_xlabel("t")
  ax.set_ylabel("gamma(t) = -log SNR(t)")
  ax.set_title("log-SNR schedules")
  ax.legend(fontsize=8)
  ax = axes[1]
  for name, r in results["runs"].items():
    if r["curve"]:
      s, l = np.array(r["curve"]).T
      ax.plot(s, l, label=name, lw=1)
  ax.set_xlabel("training step")
  ax.set_ylabel("training loss (bits/dim, batch mean)")
  ax.set_yscale("log")
  ax.set_title("training loss (continuous-time bound estimate)")
  ax.legend(fontsize=8)
  return common.save_figure(fig, path, dpi=100)


def _z(d: dict) -> float:
  return d["mean"] / d["se"] if d["se"] > 0 else float("inf")


def render(results: dict, results_dir: str) -> str:
  """The Markdown body (and <results_dir>/vdm_paper.png) from `compute`'s results."""
  cfg, data, runs = results["config"], results["data"], results["runs"]
  g_ends = results["gamma_ends"]
  gamma_curves_figure(os.path.join(results_dir, f"{NAME}.png"), results)
  label = lambda T: "continuous (T = inf)" if T == 0 else f"T = {T}"
  rows_a = [[label(r["T"]), f"{PAPER_CONTINUOUS_BPD} (CIFAR-10)" if r["T"] == 0 else PAPER_T_TEXT,
             pm(r["bound"]), pm(r["diffusion"]),
             pm(r["minus_continuous"]) if r["minus_continuous"] else "0 (reference)",
             f"{math.sqrt(r['bound']['est_var']):.3f}"] for r in results["a"]]
  # More steps tighter: every consecutive paired difference above 2 SE.
  order_ok = all(d["mean"] > 2 * d["se"] for d in results["order"])
  order_lines = [f"- {label(d['T1'])} minus {label(d['T2'])}: {pm(d)} bits/dim "
                 f"({_z(d):.1f} SE)" for d in results["order"]]
  own = results["a"][-1]
  rows_b = [["learned_linear (the model's own, linear)", f"{g_ends[0]:.3f}, {g_ends[1]:.3f}",
             pm(own["bound"]), "0 (reference)", "-",
             f"{math.sqrt(own['diffusion']['est_var']):.3f}", "1"]]
  rows_b += [[r["schedule"], f"{r['ends'][0]:.3f}, {r['ends'][1]:.3f}", pm(r["bound"]),
              pm(r["minus_own"]), f"{_z(r['minus_own']):+.2f}",
              f"{math.sqrt(r['diffusion']['est_var']):.3f}", ratio_text(r["variance_ratio"])]
             for r in results["b"]]
  inv_ok = all(abs(_z(r["minus_own"])) < 3.0 for r in results["b"])
  inv_lines = [f"{r['schedule']}: {_z(r['minus_own']):+.2f} SE" for r in results["b"]]
  rows_c = []
  for r, s in results["c"].items():
    curve = runs[r]["curve"]
    tail = [l for _, l in curve[-max(1, len(curve) // 10):]]
    rows_c.append([r, f"{s['ends'][0]:.3f}", f"{s['ends'][1]:.3f}",
                   f"{s['loss_recon']['mean']:.4f}", f"{s['loss_klz']['mean']:.4f}",
                   pm(s["loss_diff"]),
                   pm(s["loss"]), f"{math.sqrt(s['loss']['est_var']):.3f}",
                   f"{math.sqrt(s['loss_diff']['est_var']):.3f}",
                   f"{np.mean(tail):.4f}" if tail else "-", f"{runs[r]['seconds'] / 60:.1f}"])
  c_lines = []
  if results["learned_vs_fixed"]:
    lf = results["learned_vs_fixed"]
    d, z = lf["difference"], _z(lf["difference"])
    bound_text = ("no difference resolved at this Monte Carlo precision" if abs(z) <= 2 else
                  "the learned schedule's bound is LOWER (better)" if z < 0 else
                  "the learned schedule's bound is HIGHER (worse)")
    c_lines = [
        f"- Bound, learned minus fixed (paired draws): {pm(d)} bits/dim "
        f"({z:+.1f} SE): {bound_text}.",
        f"- Learned endpoints: gamma(0) {cfg['vdm']['gamma_min']:g} -> {g_ends[0]:.3f}, "
        f"gamma(1) {cfg['vdm']['gamma_max']:g} -> {g_ends[1]:.3f} (log-SNR_max "
        f"{-g_ends[0]:.2f}, log-SNR_min {-g_ends[1]:.2f}).",
        f"- One-draw estimator variance, learned / fixed (bootstrap SE over examples): bound "
        f"{ratio_text(lf['variance_ratio'])}, diffusion term "
        f"{ratio_text(lf['variance_ratio_diffusion'])}. Between two linear "
        "schedules this reflects the endpoints and the two trained denoisers, not a learned "
        "shape."]
  t, m = cfg["training"], cfg["model"]
  scale = (f"{'FULL SCALE' if results['full_scale'] else 'CPU scale'}: {data['name']} "
           f"{'x'.join(map(str, data['shape']))}, {data['num_levels']} levels, "
           f"{data['num_train']} train / {data['num_test']} test examples evaluated; U-Net ch "
           f"{m['ch']}, ch_mult {tuple(m['ch_mult'])}, {m['num_res_blocks']} res block(s)/level, "
           f"Fourier features {tuple(m['fourier_features'])}; {t['num_steps']} steps at batch "
           f"{t['batch_size']}, EMA {cfg['optimizer']['ema_rate']} (the paper: CIFAR-10, 10M "
           f"steps at batch 128). Monte Carlo: {cfg['experiment']['num_draws']} draws per "
           f"example and setting, paired across settings; Monte Carlo evaluation took "
           f"{results['eval_seconds'] / 60:.1f} min; training (+ the trainer's final "
           "evaluation) "
           + ", ".join(f"{r} {v['seconds'] / 60:.1f} min"
                       + (" (in an earlier invocation of this command; reused)"
                          if v["reused"] else "") for r, v in runs.items())
           + ". The wall time above is the invocation's that computed these results.")
  body = [
      scale, "",
      "Units: bits/dim (the digits' D = 64 dimensions, 17-level discrete decoder). "
      "`±` is one standard error of the Monte Carlo mean (over the per-draw test-set means); "
      "differences are from paired draws (same eps, eps_0 and t-quantiles). `estimator std` is "
      "the standard deviation of a one-draw estimate of one example's bound. The paper's values "
      "are for CIFAR-10 (256 levels, D = 3072), so only the orderings and equalities are "
      "comparable, not the numbers.", "",
      "## (a) One trained model: discrete-time bound for T steps and continuous time", "",
      "The learned_linear model (trained in continuous time) evaluated by `vdm_losses(..., T=T)` "
      "(VDM eq. 15: i ~ U{1..T}, t = i/T, s = t - 1/T, weight T expm1(gamma(t) - gamma(s))) and "
      "`T=0` (eq. 17: weight gamma'(t)). Paper's claim (Sec. 4.1, App. F): a good enough "
      "denoiser has L_2T < L_T, so the bound tightens with T toward the continuous-time value.",
      "",
      common.markdown_table(["setting", "paper (bits/dim)", "ours: bound (bits/dim)",
                             "ours: diffusion term", "minus continuous (paired)",
                             "estimator std"], rows_a), "",
      "Consecutive differences (paired):", ""] + order_lines + [
      "",
      f"**Paper's conclusion at our scale: more steps give a tighter bound, continuous time "
      f"the tightest — {verdict(order_ok)}** (criterion: every consecutive paired difference "
      f"> 2 SE).", "",
      "## (b) Invariance: the same denoiser under schedules with the same endpoints", "",
      "Continuous-time bound of the learned_linear denoiser (conditioned on gamma, so x_hat is a "
      "function of (z, SNR) as VDM eq. 18 requires) under its own schedule and under other "
      "monotone schedules with its learned gamma(0), gamma(1). Paper (Sec. 5.1, eq. 18): equal "
      "in expectation (difference 0); only the estimator's variance depends on the shape.", "",
      common.markdown_table(["schedule", "gamma(0), gamma(1)", "bound (bits/dim)",
                             "minus own schedule (paired)", "z = diff / SE",
                             "diffusion-term estimator std",
                             "estimator variance / own (bootstrap SE)"], rows_b), "",
      f"**Paper's conclusion at our scale: equal within Monte Carlo error — {verdict(inv_ok)}** "
      f"(criterion |z| < 3; " + ", ".join(inv_lines) + ").", "",
      "## (c) Learned vs fixed schedule", "",
      "Both models trained identically but for vdm.gamma_type; each evaluated in continuous time "
      "under its own schedule. Paper (Sec. 5.2-5.3, App. I): learning the schedule's shape "
      "reduces the variance of the diffusion-loss estimator, not the bound's expectation (which "
      "for fixed endpoints does not depend on the shape); learned endpoints SNR_min, SNR_max can "
      "improve the bound itself. The paper reports 2.65 bits/dim on CIFAR-10 with learned "
      "endpoints; the linear schedules here differ only in their endpoints, so a variance "
      "difference between them comes from the endpoints, not the shape (see (b) for shapes "
      "with equal endpoints). Training loss: mean of the last 10% of the logged batch losses.",
      "",
      common.markdown_table(["schedule", "gamma(0)", "gamma(1)", "recon", "prior (klz)",
                             "diffusion", "bound (bits/dim)", "estimator std (bound)",
                             "estimator std (diffusion)", "final training loss",
                             "training (min)"], rows_c), ""] + c_lines + [
      "",
      f"The gamma(t) curves and the training-loss curves are in [{NAME}.png]({NAME}.png).", "",
      f"![gamma(t) and training loss]({NAME}.png)", "",
      "Note: this trainer optimizes the learned schedule's parameters by the gradient of the "
      "bound itself. VDM's variance-minimizing update of the schedule's interior "
      "(App. I.2: descend E[L^2] for the schedule's shape) is not implemented in vdm.train, so a "
      "`learned_net` schedule would only learn its endpoints here; the shape comparison of "
      "variance is therefore made with fixed shapes in (b)."]
  return "\n".join(body)


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
