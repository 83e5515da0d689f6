r"""DDPM (Ho et al. 2020) Tables 1, 2 and 4 / Fig. 5, paper values beside ours, one command.

  python -m experiments.ddpm_paper --table=all          # CPU scale (digits), ~1 h on 2 cores
  python -m experiments.ddpm_paper --table=table2 --config.training.num_steps=500
  python -m experiments.ddpm_paper --config=configs/paper/ddpm_digits.py:full   # CIFAR-10, GPU/TPU

Table 2 (ablation): six runs, mean parameterization mu~ ("mean") or eps, crossed with the
objective: the true bound L (loss_type kl: T * L_t at a uniform t, Ho et al. eq. 5) with a
learned diagonal Sigma (var_type learned: the network's last C channels are log Sigma) or with
a fixed isotropic Sigma (paper.fixed_var_type, default fixed_large: sigma_t^2 = beta_t), and the
unweighted MSE on the mean parameter (loss_type mse: ||eps - eps_theta||^2 = L_simple, eq. 14,
or ||mu~ - mu_theta||^2). For each: the full bound on the test split (calc_bpd, bits/dim) and
the squared Frechet distance between real test images and model samples in the penultimate
layer of a small CNN trained here on the same data with its labels ("FD_<data>-classifier";
FID needs Inception weights that cannot be downloaded here, see experiments/frechet.py).
Table 1 (NLL rows): the bound on the test split and on a training subset of the same size, for
L (eps, fixed Sigma) and L_simple: the same runs, no retraining. Table 4 / Fig. 5: rate and
distortion at every reverse step of the eps + L_simple run (vdm.diffusion.ddpm.rate_distortion).

Runs live in <workdir_root>/<dataset>/<run>; rerunning reuses finished runs (a trained run is
never retrained, its bound, samples and train-split bound are cached in the run directory) and
resumes unfinished ones from their checkpoints. A run whose loss becomes non-finite
(train.NonFiniteLossError) is recorded as diverged and not retried. Each table's numbers (and
the samples its figure shows) are saved to results/ddpm_<table>.json and the Markdown and
figures are rendered from that file; `--render_only` redraws them without any run directory.
"""
from __future__ import annotations

import base64
import copy
import dataclasses
import json
import math
import os
from typing import Optional

from absl import app, flags
import numpy as np

from experiments import common, runs, stats
from experiments import frechet

TABLES = ("table1", "table2", "table4", "all")
FIXED_VAR_TYPES = ("fixed_large", "fixed_small")
REFERENCES = ("test", "train")

# ---------------------------------------------------------------------------------------------
# The runs and the paper's numbers.

@dataclasses.dataclass(frozen=True)
class Run:
  name: str
  mean_type: str            # eps | mean
  loss_type: str            # kl (the bound L) | mse (unweighted MSE)
  variance: str             # learned | fixed
  objective: str            # the paper's row label
  paper_is: Optional[str]   # None: the paper marks the run unstable
  paper_fid: Optional[float]


RUNS = (
    Run("mean_L_learned", "mean", "kl", "learned", "mu~ prediction: L, learned diagonal Sigma",
        "7.28 ± 0.10", 23.69),
    Run("mean_L_fixed", "mean", "kl", "fixed", "mu~ prediction: L, fixed isotropic Sigma",
        "8.06 ± 0.09", 13.22),
    Run("mean_mse", "mean", "mse", "fixed", "mu~ prediction: ||mu~ - mu~_theta||^2", None, None),
    Run("eps_L_learned", "eps", "kl", "learned", "eps prediction: L, learned diagonal Sigma",
        None, None),
    Run("eps_L_fixed", "eps", "kl", "fixed", "eps prediction: L, fixed isotropic Sigma",
        "7.67 ± 0.13", 13.51),
    Run("eps_simple", "eps", "mse", "fixed", "eps prediction: ||eps - eps_theta||^2 (L_simple)",
        "9.46 ± 0.11", 3.17),
)
RUNS_BY_NAME = {r.name: r for r in RUNS}
# Ho et al. Table 1 (CIFAR-10): NLL test (train) in bits/dim.
PAPER_NLL = {"eps_L_fixed": (3.70, 3.69), "eps_simple": (3.75, 3.72)}
TABLE_RUNS = {"table1": ("eps_L_fixed", "eps_simple"), "table2": tuple(r.name for r in RUNS),
              "table4": ("eps_simple",)}
# Ho et al. Table 4 (CIFAR-10 test set, T = 1000): reverse process time T - t + 1, rate
# (bits/dim), distortion (RMSE on 0-255).
PAPER_TABLE4 = ((1000, 1.77581, 0.95136), (900, 0.11994, 12.02277), (800, 0.05415, 18.47482),
                (700, 0.02866, 24.43656), (600, 0.01507, 30.80948), (500, 0.00716, 38.03236),
                (400, 0.00282, 46.12765), (300, 0.00081, 54.18826), (200, 0.00013, 60.97170),
                (100, 0.00000, 67.60125))
PAPER_SPLIT = (1.78, 1.97, 3.75, 0.95)   # rate, distortion L_0, total (bits/dim), final RMSE
# The paper's Table 4 as rate and distortion at reverse steps 100, 200, ..., 1000 (of 10).
PAPER_RD = {"rate": [r for _, r, _ in PAPER_TABLE4[::-1]],
            "distortion": [d for _, _, d in PAPER_TABLE4[::-1]]}


def tables_to_write(table: str) -> tuple:
  if table not in TABLES:
    raise ValueError(f"--table must be one of {list(TABLES)}, got {table!r}")
  return ("table2", "table1", "table4") if table == "all" else (table,)


def validate_paper_config(config) -> None:
  """ValueErrors naming the field, before anything long runs."""
  p = config.paper
  if p.fixed_var_type not in FIXED_VAR_TYPES:
    raise ValueError(f"config field paper.fixed_var_type must be one of {list(FIXED_VAR_TYPES)}, "
                     f"got {p.fixed_var_type!r}")
  for field in ("fd_reference", "fid_reference"):
    if p[field] not in REFERENCES:
      raise ValueError(f"config field paper.{field} must be one of {list(REFERENCES)}, got "
                       f"{p[field]!r}")
  for field in ("train_eval_examples", "num_samples", "fd_bootstrap"):
    if int(p[field]) != p[field] or p[field] < 0:
      raise ValueError(f"config field paper.{field} must be an integer >= 0, got {p[field]!r}")
  if int(p.sample_batch_size) < 1:
    raise ValueError(f"config field paper.sample_batch_size must be >= 1, got "
                     f"{p.sample_batch_size!r}")
  if config.model.objective != "ddpm":
    raise ValueError(f"config field model.objective must be 'ddpm' for the DDPM tables, got "
                     f"{config.model.objective!r}")


def run_config(base, run: Run):
  """The training config of one run: the base with the run's mean, loss and variance types."""
  cfg = copy.deepcopy(base)
  del cfg.paper
  cfg.diffusion.mean_type = run.mean_type
  cfg.diffusion.loss_type = run.loss_type
  cfg.diffusion.var_type = "learned" if run.variance == "learned" else base.paper.fixed_var_type
  cfg.training.steps_per_eval = cfg.training.num_steps   # one bound evaluation, at the end
  return cfg


# ---------------------------------------------------------------------------------------------
# Helpers for the tables.

def log2_levels(dataset) -> float:
  return math.log2(dataset.num_levels)


NOT_RUN = "not run (left out by --runs)"


EXPLODED_FACTOR = 10.0   # a bound above 10 log2 K bits/dim counts as exploded


def run_state(status: dict, bound: Optional[dict], dataset, samples_info=None) -> str:
  """The row's stability, as the paper marks its blank entries ("unstable to train").

  'unstable: why' if the loss became non-finite (train.NonFiniteLossError), the bound is
  non-finite or exploded (> EXPLODED_FACTOR * log2 K bits/dim), or samples are non-finite;
  NOT_RUN if left out; else 'stable', with a remark when the bound is worse than the uniform
  code over the K levels (log2 K bits/dim: an under-trained, not a diverged, model).
  """
  if status["state"] == "not run":
    return NOT_RUN
  if status["state"] == "diverged":
    return "unstable: " + status.get("message", "non-finite loss").split(";")[0]
  total = bound["summary"]["total_bpd"]
  uniform = log2_levels(dataset)
  if not math.isfinite(total) or total > EXPLODED_FACTOR * uniform:
    return (f"unstable: bound {total:.3g} bits/dim exploded (> {EXPLODED_FACTOR:g} log2 K = "
            f"{EXPLODED_FACTOR * uniform:.1f})")
  if samples_info is not None and samples_info["nonfinite_fraction"] > 0:
    return f"unstable: {100 * samples_info['nonfinite_fraction']:.1f}% non-finite sample values"
  if total > uniform:
    return f"stable (bound worse than the uniform code, log2 K = {uniform:.3f})"
  return "stable"


def fmt(v, digits=4) -> str:
  if v is None or (isinstance(v, float) and not math.isfinite(v)):
    return "—"
  return f"{v:.{digits}f}"


def minutes(sec) -> str:
  return "—" if sec is None else f"{sec / 60:.1f}"


def scale_text(results: dict) -> str:
  c, data = results["config"], results["data"]
  d, t, m, o = c["diffusion"], c["training"], c["model"], c["optimizer"]
  return (f"Data: {data['name']} ({'x'.join(map(str, data['shape']))}, K = {data['num_levels']} "
          f"levels, {data['num_train']} train / {data['num_test']} test images; the bounds use "
          f"{data['n_test']} test images). Model: U-Net ch {m['ch']}, ch_mult "
          f"{tuple(m['ch_mult'])}, {m['num_res_blocks']} res block(s), attention at "
          f"{tuple(m['attn_resolutions'])}, dropout {m['dropout']}. Diffusion: T = "
          f"{d['num_timesteps']}, {d['beta_schedule']} betas {d['beta_start']:g}.."
          f"{d['beta_end']:g}. Training: {t['num_steps']} steps at batch {t['batch_size']}, "
          f"{o['name']} lr {o['learning_rate']:g} ({o['warmup_steps']} warmup), grad clip "
          f"{o['grad_clip']:g}, EMA {o['ema_rate']:g}; evaluated once at the end with the EMA "
          f"parameters. Paper: CIFAR-10 (32x32x3, K = 256), 35.7M-parameter U-Net, T = 1000, "
          f"800K steps at batch 128, lr 2e-4, EMA 0.9999.")


UNRESOLVED = "unresolved"


def verdict(holds) -> str:
  """True | False | None (a run it needs is missing) | UNRESOLVED (a difference within the
  noise), in the one wording of experiments.stats."""
  if holds is None or holds is UNRESOLVED:
    why = ("a run it needs was not run" if holds is None else
           "the difference is within 2 combined bootstrap s.d.")
    return f"**{stats.UNRESOLVED}** ({why})"
  return f"**{stats.verdict(bool(holds))}**"


def _pack(levels) -> dict:
  """uint8 image levels [N, H, W, C] as a JSON-able dict (base64 bytes and shape)."""
  v = np.ascontiguousarray(np.asarray(levels, np.uint8))
  return {"shape": list(v.shape), "b64": base64.b64encode(v.tobytes()).decode("ascii")}


def _unpack(packed: dict) -> np.ndarray:
  return np.frombuffer(base64.b64decode(packed["b64"]), np.uint8).reshape(packed["shape"])


# ---------------------------------------------------------------------------------------------
# Table 2.

def table2(config, dataset, ctxs: dict, statuses: dict, n_test: int, train_idx,
           fid_weights: str) -> dict:
  """Table 2's numbers: per run its state, NLL, feature distance (+ bootstrap s.d.), FID and
  the first 64 samples; the classifier, the real-vs-real floor and the FID status."""
  p = config.paper
  K = dataset.num_levels
  n_samples = int(p.num_samples) or n_test
  clf_timer = common.Timer()
  clf = frechet.train_classifier(dataset.train, dataset.train_labels, dataset.test,
                                 dataset.test_labels, K, p.classifier)
  ref_v = dataset.test[:n_test] if p.fd_reference == "test" else dataset.train[train_idx]
  ref_f = clf.features(ref_v)
  other_v = dataset.train[train_idx] if p.fd_reference == "test" else dataset.test[:n_test]
  fid_ref_v = dataset.train if p.fid_reference == "train" else dataset.test
  out = {"fd_name": f"FD_{dataset.name}-classifier", "n_samples": n_samples,
         "test_accuracy": clf.test_accuracy, "num_reference": len(ref_v),
         "num_other": len(other_v),
         "floor": frechet.frechet_distance_features(clf.features(other_v), ref_f),
         "floor_sd": frechet.bootstrap_std(clf.features(other_v), ref_f, int(p.fd_bootstrap)),
         "classifier_seconds": clf_timer.seconds,
         "fid_reason": frechet.fid_unavailable_reason(fid_weights or None),
         "num_fid_reference": len(fid_ref_v),
         "real": _pack(dataset.test[:64]), "runs": {}}
  for run in RUNS:
    ctx, status = ctxs[run.name], statuses[run.name]
    bound = ctx.bound() if status["state"] == "trained" else None
    r = {"nll": None, "fd": None, "fd_sd": None, "fid": None, "samples": None}
    info = None
    if bound is not None:
      r["nll"] = bound["summary"]["total_bpd"]
      v, info = ctx.samples(n_samples, int(p.sample_batch_size))
      r["samples"] = _pack(v[:64])
      f = clf.features(v)
      r["fd"] = frechet.frechet_distance_features(f, ref_f)
      r["fd_sd"] = frechet.bootstrap_std(f, ref_f, int(p.fd_bootstrap))
      if not out["fid_reason"]:
        r["fid"] = frechet.inception_fid(fid_ref_v, v, K, fid_weights)
    r["state"] = run_state(status, bound, dataset, info)
    seconds = [status.get("train_seconds")] + ([info["seconds"]] if info else [])
    r["seconds"] = None if any(x is None for x in seconds) else sum(seconds)
    out["runs"][run.name] = r
  return out


def render_table2(results: dict, results_dir: str) -> str:
  """Table 2's Markdown (and ddpm_table2.png) from its results."""
  t2, p, data = results["table2"], results["config"]["paper"], results["data"]
  K, fd_name = data["num_levels"], t2["fd_name"]
  rows = []
  for run in RUNS:
    r = t2["runs"][run.name]
    paper_nll = (f"≤ {PAPER_NLL[run.name][0]:.2f} (Table 1)" if run.name in PAPER_NLL
                 else "not reported")
    rows.append([
        run.objective,
        run.paper_is if run.paper_is else "— (unstable)",
        f"{run.paper_fid:.2f}" if run.paper_fid is not None else "— (unstable)",
        paper_nll, r["state"], fmt(r["nll"]),
        "—" if r["fd"] is None else f"{r['fd']:.3f} ± {r['fd_sd']:.3f}",
        fmt(r["fid"], 2) if r["fid"] is not None else "not computed¹",
        minutes(r["seconds"])])
  headers = ["Objective (Ho et al. Table 2 row)", "Paper IS", "Paper FID", "Paper NLL (bits/dim)",
             "Ours: stability", "Ours: test NLL bound (bits/dim)",
             f"Ours: {fd_name} ± bootstrap s.d.", "Ours: FID", "Ours: train + eval + sampling (min)"]
  var_text = {"fixed_large": "sigma_t^2 = beta_t (`fixed_large`, the DDPM reference code's "
                             "CIFAR-10 setting)",
              "fixed_small": "sigma_t^2 = beta~_t (`fixed_small`, the posterior variance)"}
  log2k = math.log2(K)
  lines = [
      "Reverse-process parameterization and training-objective ablation (Ho et al. 2020, "
      "Table 2). Paper: unconditional CIFAR-10, IS and FID on 50000 samples; its blank entries "
      "(here '— (unstable)') \"were unstable to train and generated poor samples with "
      "out-of-range scores\". Table 2 of the paper reports no NLL; Table 1 gives it for the two "
      "eps rows with fixed Sigma.",
      "",
      f"Scale. {scale_text(results)}",
      "",
      f"Objectives: L = the true bound (`loss_type=kl`: T * L_t at a uniform t); fixed "
      f"isotropic Sigma = {var_text[p['fixed_var_type']]}; learned diagonal Sigma = `var_type="
      f"learned` (the network outputs log Sigma per pixel); the MSE rows are unweighted "
      f"(`loss_type=mse`) on the network's mean parameter (eps, or mu~ itself). NLL = the full "
      f"DDPM bound L_T + sum L_t + L_0 (discretized Gaussian decoder) on the test images. A run "
      f"is marked unstable, as the paper marks its blank entries, if its loss became "
      f"non-finite (train.NonFiniteLossError), its bound is non-finite or exploded (above "
      f"{EXPLODED_FACTOR:g} log2 K = {EXPLODED_FACTOR * log2k:.1f} bits/dim), "
      f"or its samples are non-finite; a stable run whose bound is worse than the uniform code "
      f"over the K levels (log2 K = {log2k:.3f} bits/dim) is flagged as such "
      f"(under-trained at this scale) but still compared.",
      "",
      f"Sample quality: {fd_name} = squared Frechet distance between Gaussians fitted to the "
      f"{int(p['classifier']['features'])}-d penultimate-layer features of a small CNN trained "
      f"here on the {data['num_train']} labelled training images "
      f"({int(p['classifier']['epochs'])} epochs; test accuracy "
      f"{100 * t2['test_accuracy']:.1f}%), between {t2['n_samples']} samples per model "
      f"(ancestral sampling, T steps, quantized to the K levels) and the {t2['num_reference']} "
      f"{p['fd_reference']} images. This is not FID and is not comparable with the paper's "
      f"numbers; only the ordering of the rows is. Lower is better. The same distance between "
      f"{t2['num_other']} real {'training' if p['fd_reference'] == 'test' else 'test'} images "
      f"and the reference is {t2['floor']:.3f} ± {t2['floor_sd']:.3f}: the floor at this sample "
      f"size. ± = standard deviation over {int(p['fd_bootstrap'])} bootstrap resamples of both "
      f"sets. (Classifier training and features: {t2['classifier_seconds']:.0f} s.)",
      "",
      common.markdown_table(headers, rows),
      "",
      (f"¹ FID (Inception) could not be computed here: {t2['fid_reason']}. At full scale pass "
       f"--fid_inception_weights (FID against the {p['fid_reference']} split, as the paper's "
       f"TTUR protocol)." if t2["fid_reason"] else
       f"FID: pytorch-fid Inception-v3 features, {t2['n_samples']} samples against the "
       f"{p['fid_reference']} split ({t2['num_fid_reference']} images)."),
      "",
      "## Does the paper's conclusion hold at our scale?",
      "",
  ]
  lines += table2_conclusions(t2["runs"], fd_name)
  samples = {n: _unpack(r["samples"]) for n, r in t2["runs"].items() if r["samples"]}
  fig = plot_samples(os.path.join(results_dir, "ddpm_table2.png"), samples, _unpack(t2["real"]),
                     K)
  if fig:
    lines += ["", f"Samples (first 64 per run) and real test images: `{os.path.basename(fig)}`."]
  return "\n".join(lines)


def table2_conclusions(results: dict, fd_name: str) -> list:
  def stable(name):
    return results[name]["state"].startswith("stable") and results[name]["fd"] is not None

  def fd(name):
    r = results[name]
    return f"{r['fd']:.3f} ± {r['fd_sd']:.3f}" if r["fd"] is not None else "—"

  def resolved(a, b):
    """|FD a - FD b| exceeds 2 combined bootstrap s.d. (both stable)."""
    ra, rb = results[a], results[b]
    return abs(ra["fd"] - rb["fd"]) > 2.0 * math.hypot(ra["fd_sd"], rb["fd_sd"])

  def worse(a, b):
    """a is worse than b: a unstable while b stable (True), or both stable and FD a > FD b by
    more than 2 combined bootstrap s.d. (True; by less: UNRESOLVED; FD a < FD b by more:
    False)."""
    if not stable(b) or results[a]["state"] == NOT_RUN:
      return None
    if not stable(a):
      return True
    if not resolved(a, b):
      return UNRESOLVED
    return results[a]["fd"] > results[b]["fd"]

  out = []
  stable_runs = [r.name for r in RUNS if stable(r.name)]
  if any(results[r.name]["state"] == NOT_RUN for r in RUNS):
    out.append(f"1. Paper: eps prediction with L_simple gives the best sample quality. Ours: "
               f"not every row was run (--runs). {verdict(None)}.")
  elif stable_runs:
    ranked = sorted(stable_runs, key=lambda n: results[n]["fd"])
    best = ranked[0]
    if best == "eps_simple":
      # Best, and resolved only if it beats the runner-up by more than the noise.
      holds = True if len(ranked) == 1 or resolved(best, ranked[1]) else UNRESOLVED
    else:
      holds = UNRESOLVED if stable("eps_simple") and not resolved(best, "eps_simple") else False
    out.append(f"1. Paper: eps prediction with L_simple gives the best sample quality (FID 3.17 "
               f"vs >= 13.22 for every other row). Ours: the lowest {fd_name} is "
               f"{fd(best)} ({RUNS_BY_NAME[best].objective}); eps + L_simple: "
               f"{fd('eps_simple')}"
               + (f"; the runner-up: {fd(ranked[1])} ({ranked[1]})" if len(ranked) > 1 else "")
               + f". {verdict(holds)}.")
  else:
    out.append("1. No run was stable: nothing to compare.")
  for mean, fixed, learned in (("eps", "eps_L_fixed", "eps_L_learned"),
                               ("mu~", "mean_L_fixed", "mean_L_learned")):
    paper = ("unstable" if mean == "eps" else "FID 23.69 vs 13.22 with fixed Sigma")
    out.append(f"{len(out) + 1}. Paper: learning a diagonal Sigma in the bound is unstable or "
               f"worse than a fixed Sigma ({mean} prediction: {paper}). Ours ({mean}): learned "
               f"{results[learned]['state']}, {fd(learned)}; fixed {results[fixed]['state']}, "
               f"{fd(fixed)}. {verdict(worse(learned, fixed))}.")
  out.append(f"{len(out) + 1}. Paper: mu~ prediction works only with the true bound; with the "
             f"unweighted MSE it is unstable. Ours: MSE {results['mean_mse']['state']}, "
             f"{fd('mean_mse')}; L fixed {fd('mean_L_fixed')}. "
             f"{verdict(worse('mean_mse', 'mean_L_fixed'))}.")
  a, b = results["eps_L_fixed"], results["mean_L_fixed"]
  if stable("eps_L_fixed") and stable("mean_L_fixed"):
    tol = 2.0 * math.hypot(a["fd_sd"], b["fd_sd"])
    close = abs(a["fd"] - b["fd"]) <= tol
    out.append(f"{len(out) + 1}. Paper: with L and fixed Sigma, eps prediction performs about as "
               f"well as mu~ prediction (FID 13.51 vs 13.22). Ours: {fd('eps_L_fixed')} vs "
               f"{fd('mean_L_fixed')}; difference {abs(a['fd'] - b['fd']):.3f}, "
               f"{'within' if close else 'outside'} 2 combined bootstrap s.d. ({tol:.3f}). "
               f"{verdict(close)}.")
  nlls = {r.name: results[r.name]["nll"] for r in RUNS
          if results[r.name]["nll"] is not None and math.isfinite(results[r.name]["nll"])}
  if nlls:
    order = sorted(nlls, key=nlls.get)
    out.append(f"{len(out) + 1}. NLL (not in the paper's Table 2): best bound "
               f"{nlls[order[0]]:.4f} bits/dim ({RUNS_BY_NAME[order[0]].objective}); the order "
               f"(best first): " + ", ".join(f"{n} {nlls[n]:.3f}" for n in order) + ".")
  return out


def plot_samples(path: str, samples: dict, real, num_levels: int) -> Optional[str]:
  """One panel of 64 samples per stable run plus the real images (PNG)."""
  plt = common.pyplot()
  if plt is None:
    return None
  from vdm import reporting
  panels = [("real test images", real)] + [(RUNS_BY_NAME[n].name, v) for n, v in samples.items()]
  fig, axes = plt.subplots(1, len(panels), figsize=(2.6 * len(panels), 2.9), squeeze=False)
  for ax, (title, v) in zip(axes[0], panels):
    x = frechet.encode_levels(v, num_levels)
    grid = reporting.image_grid(x, num_levels)
    ax.imshow(grid if grid.ndim == 3 and grid.shape[-1] == 3 else np.squeeze(grid),
              cmap="gray", interpolation="nearest")
    ax.set_title(title, fontsize=8)
    ax.axis("off")
  return common.save_figure(fig, path)


# ---------------------------------------------------------------------------------------------
# Table 1.

def table1(ctxs: dict, statuses: dict, dataset, train_idx) -> dict:
  """Table 1's numbers: per run the test bound and the bound on the training subset."""
  out = {}
  for name in TABLE_RUNS["table1"]:
    ctx, status = ctxs[name], statuses[name]
    if status["state"] != "trained":
      out[name] = {"state": run_state(status, None, dataset)}
      continue
    tr = ctx.train_bound(train_idx)
    out[name] = {"test": ctx.bound()["summary"]["total_bpd"],
                 "train": tr["summary"]["total_bpd"], "seconds": tr.get("seconds")}
  return out


def render_table1(results: dict, results_dir: str) -> str:
  del results_dir
  t1, data = results["table1"], results["data"]
  rows, ours = [], {}
  labels = {"eps_L_fixed": "L (eps prediction, fixed isotropic Sigma)",
            "eps_simple": "L_simple (eps prediction, fixed isotropic Sigma)"}
  for name in TABLE_RUNS["table1"]:
    r, paper = t1[name], f"≤ {PAPER_NLL[name][0]:.2f} ({PAPER_NLL[name][1]:.2f})"
    if "test" not in r:
      rows.append([labels[name], paper, r["state"], "—", "—", "—"])
      continue
    ours[name] = (r["test"], r["train"])
    rows.append([labels[name], paper, f"≤ {r['test']:.4f} ({r['train']:.4f})",
                 fmt(r["test"] - r["train"]), f"{PAPER_NLL[name][0] - PAPER_NLL[name][1]:.2f}",
                 minutes(r["seconds"])])
  headers = ["Objective", "Paper NLL test (train), bits/dim", "Ours: NLL test (train), bits/dim",
             "Ours: test − train", "Paper: test − train", "Ours: train-split eval (min)"]
  lines = [
      "NLL rows of Ho et al. (2020) Table 1: the variational bound (bits/dim) on the test split "
      "and, in brackets, the training split, for a model trained on the true bound L (eps "
      "prediction, fixed isotropic Sigma) and one trained on L_simple. Paper: CIFAR-10. Ours: "
      f"the eps + L fixed and eps + L_simple runs of Table 2 (not retrained); test = "
      f"{data['n_test']} test images, train = a fixed random subset of {data['n_train_eval']} "
      f"training images (seed {results['config']['seed']}).",
      "",
      f"Scale. {scale_text(results)}",
      "",
      common.markdown_table(headers, rows),
      "",
      "## Does the paper's conclusion hold at our scale?",
      "",
  ]
  if len(ours) == 2:
    (tl, trl), (ts, trs) = ours["eps_L_fixed"], ours["eps_simple"]
    lines.append(f"1. Paper: training on the true bound L gives a better (lower) NLL than "
                 f"L_simple (3.70 vs 3.75 test). Ours: {tl:.4f} vs {ts:.4f} test "
                 f"(difference {ts - tl:+.4f}). {verdict(tl < ts)}.")
    gap = max(abs(tl - trl), abs(ts - trs))
    lines.append(f"2. Paper: the train-test gap is at most 0.03 bits/dim (no overfitting). "
                 f"Ours: largest |test − train| = {gap:.4f} bits/dim. {verdict(gap <= 0.03)}.")
    lines.append("")
    lines.append("Each bound is one Monte Carlo estimate (one noise draw per image and timestep, "
                 "all T timesteps summed) averaged over the images; its sampling error is not "
                 "estimated here.")
  else:
    lines.append("A run needed here was not run (--runs) or diverged: no comparison.")
  return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Table 4 / Fig. 5.

def table4(ctxs: dict, statuses: dict, dataset) -> dict:
  """Table 4's numbers: the eps + L_simple run's rate and distortion at every reverse step."""
  status = statuses["eps_simple"]
  if status["state"] != "trained":
    return {"state": run_state(status, None, dataset)}
  record = ctxs["eps_simple"].bound()
  return {"rate_distortion": record["rate_distortion"],
          "total_bpd": float(np.asarray(record["terms"]["total_bpd"])),
          "decoder_bpd": float(np.asarray(record["terms"]["vb"])[0])}


def steepness(rd: dict) -> tuple:
  """At reverse step 0.9 T: (the fraction of the final rate received, the fraction of the
  distortion drop done, counted from reverse step 0.1 T, the paper's first row). rd: rate and
  distortion [T] at reverse steps 1..T."""
  T = len(rd["rate"])
  s9, s1 = max(1, int(round(0.9 * T))), max(1, int(round(0.1 * T)))
  rate, dist = np.asarray(rd["rate"]), np.asarray(rd["distortion"])
  return (float(rate[s9 - 1] / rate[-1]),
          float((dist[s1 - 1] - dist[s9 - 1]) / (dist[s1 - 1] - dist[-1])))


def render_table4(results: dict, results_dir: str) -> str:
  """Table 4's Markdown (and ddpm_table4.png) from its results."""
  t4, data = results["table4"], results["data"]
  K = data["num_levels"]
  head = [
      "Rate and distortion along the reverse process (Ho et al. 2020, Table 4 and Fig. 5): "
      "progressive lossy decoding with the eps + L_simple model. After reverse step s = "
      "1..T the receiver holds x_t (t = T - s + 1 in the paper's 1-based time), has received "
      "rate(s) = L_T + sum_{t' > t} L_{t'} bits/dim, and estimates x0 by the model's "
      "prediction from x_t; distortion(s) = RMSE of that estimate against x0 over the test "
      "images, on the pixel scale 0..K-1 (the paper: 0..255). The split of the total "
      "codelength follows the paper: rate = L_T + ... + L_1, distortion = L_0 (the decoder "
      "term), both in bits/dim.",
      "",
      f"Scale. {scale_text(results)}",
      "",
  ]
  if "rate_distortion" not in t4:
    return "\n".join(head + [f"The eps + L_simple run is {t4['state']}: no table."])
  rd = {k: np.asarray(v) for k, v in t4["rate_distortion"].items()}
  T = len(rd["rate"])
  total, l0 = t4["total_bpd"], t4["decoder_bpd"]
  rate_total = float(rd["rate"][-1])
  to255 = 255.0 / (K - 1)
  rows = []
  for s_paper, rate_p, dist_p in PAPER_TABLE4:
    s = max(1, int(round(s_paper / 1000 * T)))
    rows.append([s_paper, f"{rate_p:.5f}", f"{dist_p:.5f}", s, f"{rd['rate'][s - 1]:.5f}",
                 f"{rd['distortion'][s - 1]:.5f}", f"{rd['distortion'][s - 1] * to255:.3f}"])
  headers = ["Paper: reverse step (T = 1000)", "Paper: rate (bits/dim)",
             "Paper: distortion (RMSE, 0-255)", f"Ours: reverse step (T = {T})",
             "Ours: rate (bits/dim)", f"Ours: distortion (RMSE, 0-{K - 1})",
             f"Ours: distortion x 255/{K - 1}"]
  split_rows = [
      ["rate = L_T + ... + L_1 (bits/dim)", f"{PAPER_SPLIT[0]:.2f}", f"{rate_total:.4f}"],
      ["distortion = L_0 (bits/dim)", f"{PAPER_SPLIT[1]:.2f}", f"{l0:.4f}"],
      ["total = rate + distortion (bits/dim)", f"{PAPER_SPLIT[2]:.2f}", f"{total:.4f}"],
      ["distortion / total", f"{PAPER_SPLIT[1] / PAPER_SPLIT[2]:.1%}", f"{l0 / total:.1%}"],
      [f"final RMSE (reverse step T), 0-255 | ours 0-{K - 1}", f"{PAPER_SPLIT[3]:.2f}",
       f"{rd['distortion'][-1]:.4f} (x 255/{K - 1} = {rd['distortion'][-1] * to255:.3f})"],
  ]
  (p_rate, p_drop), (o_rate, o_drop) = steepness(PAPER_RD), steepness(rd)
  s9, s1 = max(1, int(round(0.9 * T))), max(1, int(round(0.1 * T)))
  fig = plot_rate_distortion(os.path.join(results_dir, "ddpm_table4.png"), rd, K)
  lines = head + [
      common.markdown_table(headers, rows),
      "",
      "Split of the lossless codelength (test split):",
      "",
      common.markdown_table(["", "Paper (CIFAR-10)", f"Ours ({data['name']})"], split_rows),
      "",
      f"Check: ours rate at reverse step T + L_0 = {rate_total + l0:.6f} = total bound "
      f"{total:.6f} (residual {rate_total + l0 - total:.1e}).",
      "",
      "## Does the paper's conclusion hold at our scale?",
      "",
      f"1. Paper: more than half of the lossless codelength describes imperceptible distortions "
      f"(L_0 = 1.97 of 3.75 bits/dim = 53%, at a final RMSE of 0.95 of 255). Ours: L_0 = "
      f"{l0:.4f} of {total:.4f} bits/dim = {l0 / total:.1%}. {verdict(l0 / total > 0.5)}."
      + (f" Expected at K = {K}: L_0 is the cost of the last step's decoder, the log of how "
         f"many of the K bins the final noise spreads over; a bin is 2/(K-1) = {2 / (K - 1):.3g} "
         f"wide on [-1, 1] here against 2/255 = 0.00784 for 8-bit images, so the bits spent "
         f"on imperceptible detail shrink with K." if K < 256 else ""),
      f"2. Paper: the distortion falls steeply at low rate: by reverse step 900 of 1000 the "
      f"receiver has {p_rate:.1%} of the final rate and {p_drop:.1%} of the distortion drop "
      f"(counted from reverse step 100). Ours at reverse step {s9} of {T}: {o_rate:.1%} of the "
      f"rate, {o_drop:.1%} of the drop (from step {s1}). "
      f"{verdict(bool(o_drop > 0.5 and o_rate < 0.5))} (criterion: more than half of the "
      f"drop with less than half of the rate).",
  ]
  if fig:
    lines += ["", f"Figure (Fig. 5 of the paper, ours beside the paper's Table 4 points; ours "
                  f"rescaled by 255/{K - 1}): `{os.path.basename(fig)}`."]
  return "\n".join(lines)


def plot_rate_distortion(path: str, rd: dict, K: int) -> Optional[str]:
  plt = common.pyplot()
  if plt is None:
    return None
  T = len(rd["rate"])
  frac = rd["reverse_step"] / T
  paper = np.asarray(PAPER_TABLE4)
  pfrac = paper[:, 0] / 1000.0
  d255 = rd["distortion"] * 255.0 / (K - 1)
  fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
  axes[0].plot(frac, d255, label=f"ours (RMSE x 255/{K - 1})")
  axes[0].plot(pfrac, paper[:, 2], "o", label="paper (CIFAR-10, RMSE 0-255)")
  axes[0].set_xlabel("reverse step / T")
  axes[0].set_ylabel("distortion (RMSE, 0-255 scale)")
  axes[1].plot(frac, rd["rate"], label="ours")
  axes[1].plot(pfrac, paper[:, 1], "o", label="paper")
  axes[1].set_xlabel("reverse step / T")
  axes[1].set_ylabel("rate (bits/dim)")
  axes[2].plot(rd["rate"], d255, label="ours")
  axes[2].plot(paper[:, 1], paper[:, 2], "o", label="paper")
  axes[2].set_xlabel("rate (bits/dim)")
  axes[2].set_ylabel("distortion (RMSE, 0-255 scale)")
  for ax in axes:
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
  fig.suptitle("DDPM progressive lossy decoding (Ho et al. Fig. 5): test split")
  return common.save_figure(fig, path)


# ---------------------------------------------------------------------------------------------

TITLES = {"table1": "DDPM (Ho et al. 2020) Table 1: NLL test (train), bits/dim",
          "table2": "DDPM (Ho et al. 2020) Table 2: parameterization and objective ablation",
          "table4": "DDPM (Ho et al. 2020) Table 4 / Fig. 5: rate and distortion along the "
                    "reverse process"}


def compute(config, tables, workdir_root: str, fid_weights: str = "", only=()) -> dict:
  """Train (or reuse) the runs the tables need; returns {table: that table's results} (each
  JSON-able: the config, data, the statuses of its runs and its numbers).

  only: names of the runs to train (empty: all the tables need); the others are 'not run'.
  """
  from vdm import data as data_lib
  timer = common.Timer()
  validate_paper_config(config)
  unknown = [n for n in only if n not in RUNS_BY_NAME]
  if unknown:
    raise ValueError(f"--runs: unknown run(s) {unknown}; allowed: {list(RUNS_BY_NAME)}")
  if fid_weights:
    reason = frechet.fid_unavailable_reason(fid_weights)
    if reason:
      raise ValueError(f"--fid_inception_weights: {reason}")
  dataset = data_lib.load_dataset(config.data)
  if not dataset.is_image or not dataset.num_levels:
    raise ValueError(f"config field data.dataset must be an image data set with integer levels, "
                     f"got {config.data.dataset!r}")
  if "table2" in tables and dataset.train_labels is None:
    raise ValueError(f"data set {dataset.name!r} has no labels: Table 2's feature classifier "
                     f"needs them")
  n_test = int(config.eval.num_examples or len(dataset.test))
  n_test = min(n_test, len(dataset.test))
  n_train = int(config.paper.train_eval_examples) or n_test
  if n_train > len(dataset.train):
    raise ValueError(f"config field paper.train_eval_examples={n_train} exceeds the "
                     f"{len(dataset.train)} training images")
  train_idx = np.sort(np.random.default_rng(config.seed).choice(len(dataset.train), n_train,
                                                                replace=False))
  names = [r.name for r in RUNS if any(r.name in TABLE_RUNS[t] for t in tables)]
  ctxs = {name: runs.Run(name, run_config(config, RUNS_BY_NAME[name]),
                         os.path.join(workdir_root, dataset.name, name), dataset)
          for name in names}
  for ctx in ctxs.values():   # every run's fields checked, its objective built, before training
    ctx.setup()
  statuses = {name: (ctxs[name].ensure_trained() if not only or name in only
                     else {"state": "not run", "name": name}) for name in names}

  data = {"name": dataset.name, "shape": list(dataset.shape),
          "num_levels": int(dataset.num_levels), "num_train": len(dataset.train),
          "num_test": len(dataset.test), "n_test": n_test, "n_train_eval": n_train,
          "run_root": os.path.join(workdir_root, dataset.name)}
  compute_table = {
      "table2": lambda: table2(config, dataset, ctxs, statuses, n_test, train_idx, fid_weights),
      "table1": lambda: table1(ctxs, statuses, dataset, train_idx),
      "table4": lambda: table4(ctxs, statuses, dataset)}
  out = {}
  for table in tables:
    out[table] = {"config": json.loads(config.to_json()), "data": data,
                  "statuses": {n: statuses[n] for n in TABLE_RUNS[table]},
                  table: compute_table[table](), "seconds": timer.seconds}
  return out


def render(results: dict, table: str, results_dir: str) -> str:
  """ddpm_<table>.md's body (and figure) from the table's results."""
  body = {"table1": render_table1, "table2": render_table2,
          "table4": render_table4}[table](results, results_dir)
  statuses = results["statuses"]
  ran = [n for n in TABLE_RUNS[table] if statuses[n]["state"] != "not run"]
  reused = [n for n in ran if not statuses[n].get("trained_now")]
  note = (f"\n\nRun directories: `{results['data']['run_root']}/<run>`"
          + (f"; reused from an earlier invocation (not retrained): {', '.join(reused)}."
             if reused else "."))
  times = {n: statuses[n].get("train_seconds") for n in ran}
  if times and all(v is not None for v in times.values()):
    note += (f" Training + final test bound of the runs used, measured when they ran: "
             f"{sum(times.values()) / 60:.1f} min in total ("
             + ", ".join(f"{n} {v / 60:.1f}" for n, v in times.items()) + ").")
  if reused:
    note += " The wall time at the top is the invocation's that computed these results."
  return body + note


README_LABELS = {
    "mean_L_learned": "mu~ prediction, L, learned diagonal Sigma",
    "mean_L_fixed": "mu~ prediction, L, fixed isotropic Sigma",
    "mean_mse": "mu~ prediction, unweighted MSE",
    "eps_L_learned": "eps prediction, L, learned diagonal Sigma",
    "eps_L_fixed": "eps prediction, L, fixed isotropic Sigma",
    "eps_simple": "eps prediction, L_simple"}


def readme_table(results: dict, table: str) -> str:
  """README's summary of one table, from its results."""
  if table == "table2":
    t2 = results["table2"]
    rows = []
    for run in RUNS:
      r = t2["runs"][run.name]
      stable = ("yes" if r["state"].startswith("stable") else
                "not run" if r["state"] == NOT_RUN else "no")
      rows.append([README_LABELS[run.name],
                   f"{run.paper_fid:.2f}" if run.paper_fid is not None else "unstable",
                   stable, fmt(r["nll"]),
                   "—" if r["fd"] is None else f"{r['fd']:.1f} ± {r['fd_sd']:.1f}"])
    return common.markdown_table(["objective", "paper FID (CIFAR-10)", "ours: stable",
                                  "ours: test NLL bound (bits/dim)",
                                  f"ours: {t2['fd_name'].split('-')[0]}"], rows)
  if table == "table1":
    labels = {"eps_L_fixed": "L (eps, fixed isotropic Sigma)", "eps_simple": "L_simple"}
    rows = [[labels[n], f"≤ {PAPER_NLL[n][0]:.2f} ({PAPER_NLL[n][1]:.2f})",
             f"≤ {r['test']:.4f} ({r['train']:.4f})" if "test" in r else r["state"]]
            for n, r in results["table1"].items()]
    return common.markdown_table(["objective", "paper: test (train)",
                                  "ours: test (train), bits/dim"], rows)
  t4, K = results["table4"], results["data"]["num_levels"]
  rd = t4["rate_distortion"]
  (p_rate, p_drop), (o_rate, o_drop) = steepness(PAPER_RD), steepness(rd)
  last = rd["distortion"][-1]
  rows = [["rate = L_T + ... + L_1", f"{PAPER_SPLIT[0]:.2f}", f"{rd['rate'][-1]:.4f}"],
          ["distortion = L_0", f"{PAPER_SPLIT[1]:.2f}", f"{t4['decoder_bpd']:.4f}"],
          ["total", f"{PAPER_SPLIT[2]:.2f}", f"{t4['total_bpd']:.4f}"],
          ["distortion at the last step (RMSE)", f"{PAPER_SPLIT[3]:.2f}",
           f"{last:.3f} ({last * 255 / (K - 1):.2f})"],
          ["at 90% of the reverse steps: share of rate, of distortion drop",
           f"{p_rate:.1%}, {p_drop:.1%}", f"{o_rate:.1%}, {o_drop:.1%}"]]
  return common.markdown_table(
      ["", "paper (CIFAR-10, 0-255)",
       f"ours ({results['data']['name']}, 0-{K - 1}; x 255/{K - 1})"], rows)


def run_tables(config, tables, workdir_root: str, results_dir: str = common.RESULTS,
               fid_weights: str = "", only=(), render_only: bool = False) -> list:
  """results/ddpm_<table>.json (computed, or read back with render_only) and .md; returns the
  Markdown paths."""
  if render_only:
    computed = {t: common.load_results(f"ddpm_{t}", results_dir) for t in tables}
  else:
    computed = compute(config, tables, workdir_root, fid_weights, only)
    for t in tables:
      computed[t].update(command=common.command_line(), machine=common.machine_line())
      common.save_results(f"ddpm_{t}", results_dir, computed[t])
  return [common.write_rendered(f"ddpm_{t}", TITLES[t], results_dir, computed[t],
                                lambda r, t=t: render(r, t, results_dir)) for t in tables]


def define_flags() -> None:
  """The command-line flags (defined only when run as a script, so importing defines none);
  --config=configs/paper/ddpm_digits.py:full for CIFAR-10."""
  common.define_paper_flags("ddpm_digits.py", "ddpm_paper")
  flags.DEFINE_string("table", "all", f"Which table to write: one of {list(TABLES)}.")
  flags.DEFINE_list("runs", [], "Restrict training to these runs (comma list of Table 2 run "
                    "names; default: every run the tables need). Rows of runs left out say "
                    "'not run'.")
  flags.DEFINE_string("fid_inception_weights", "",
                      f"Optional local file {frechet.FID_WEIGHTS_NAME} (pytorch-fid's Inception "
                      "weights): with torch and pytorch_fid installed, Table 2 also reports FID.")


def main(argv):
  FLAGS = flags.FLAGS
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  tables = tables_to_write(FLAGS.table)
  run_tables(FLAGS.config, tables, FLAGS.workdir_root, FLAGS.results_dir,
             FLAGS.fid_inception_weights, tuple(FLAGS.runs), FLAGS.render_only)


if __name__ == "__main__":
  define_flags()
  app.run(main)
