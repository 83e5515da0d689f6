r"""DDPM (Ho et al. 2020) Tables 1, 2 and 4 / Fig. 5, paper values beside ours, one command.

  python -m experiments.ddpm_paper --table=all          # CPU scale (digits), ~1 h on 2 cores
  python -m experiments.ddpm_paper --table=table2 --config.training.num_steps=500
  python -m experiments.ddpm_paper --config=configs/paper/ddpm_digits.py:full   # CIFAR-10, GPU/TPU

Table 2: six runs (RUNS), mu~ or eps prediction crossed with the objective (the bound L with a
learned or a fixed Sigma, or the unweighted MSE); Table 1: the test and train bounds of two of
them; Table 4 / Fig. 5: rate and distortion along the reverse process of eps + L_simple. Runs
live in <workdir_root>/<dataset>/<run> (experiments.runs: a finished run is reused, never
retrained; an unfinished one resumes; a diverged one is recorded, not retried). Each table goes to
results/ddpm_<table>.json; its Markdown (prose: experiments/reports/ddpm_paper.md) and figure
are rendered from that file; `--render_only` redraws them without any run directory.
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

from experiments import common, frechet, runs, stats
from vdm import checks

TABLES = ("table1", "table2", "table4", "all")
FIXED_VAR_TYPES = ("fixed_large", "fixed_small")
REFERENCES = ("test", "train")

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
  for field, allowed in (("fixed_var_type", FIXED_VAR_TYPES), ("fd_reference", REFERENCES),
                         ("fid_reference", REFERENCES)):
    checks.choice(f"config field paper.{field}", p[field], allowed)
  for field in ("train_eval_examples", "num_samples", "fd_bootstrap"):
    checks.nonnegative_int(f"config field paper.{field}", p[field])
  checks.positive_int("config field paper.sample_batch_size", p.sample_batch_size)
  checks.choice("config field model.objective (the DDPM tables)", config.model.objective,
                ("ddpm",))


def run_config(base, run: Run):
  """The training config of one run: the base with the run's mean, loss and variance types."""
  cfg = copy.deepcopy(base)
  del cfg.paper
  cfg.diffusion.mean_type = run.mean_type
  cfg.diffusion.loss_type = run.loss_type
  cfg.diffusion.var_type = "learned" if run.variance == "learned" else base.paper.fixed_var_type
  cfg.training.steps_per_eval = cfg.training.num_steps   # one bound evaluation, at the end
  return cfg


# Helpers for the tables.

NOT_RUN = "not run (left out by --runs)"
EXPLODED_FACTOR = 10.0   # a bound above 10 log2 K bits/dim counts as exploded
UNRESOLVED = "unresolved"


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
  uniform = math.log2(dataset.num_levels)
  if not math.isfinite(total) or total > EXPLODED_FACTOR * uniform:
    return (f"unstable: bound {total:.3g} bits/dim exploded (> {EXPLODED_FACTOR:g} log2 K = "
            f"{EXPLODED_FACTOR * uniform:.1f})")
  if samples_info is not None and samples_info["nonfinite_fraction"] > 0:
    return f"unstable: {100 * samples_info['nonfinite_fraction']:.1f}% non-finite sample values"
  if total > uniform:
    return f"stable (bound worse than the uniform code, log2 K = {uniform:.3f})"
  return "stable"


def minutes(sec) -> str:
  return "—" if sec is None else f"{sec / 60:.1f}"


def fd_text(r: dict, digits: int = 3) -> str:
  """A run's feature distance ± its bootstrap s.d. ('—' without one)."""
  return "—" if r["fd"] is None else f"{r['fd']:.{digits}f} ± {r['fd_sd']:.{digits}f}"


def step_at(fraction: float, T: int) -> int:
  """The reverse step (1..T) at a fraction of the T steps."""
  return max(1, int(round(fraction * T)))


def scale_text(results: dict) -> str:
  """The Scale paragraph of every table (after "Scale. "): our data, model and training."""
  c, data = results["config"], results["data"]
  return common.report_text("ddpm_paper")["scale"].format(
      c=c, data=data, shape="x".join(map(str, data["shape"])),
      ch_mult=tuple(c["model"]["ch_mult"]), attn=tuple(c["model"]["attn_resolutions"]))


def headers(section: str, **fields) -> list:
  """A table's column headers: the items of a '- ' list section of the report's template."""
  return [h[2:] for h in common.report_text("ddpm_paper")[section].format(**fields).split("\n")]


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


# Table 2.

def table2(config, dataset, ctxs: dict, statuses: dict, n_test: int, train_idx,
           fid_weights: str) -> dict:
  """Table 2's numbers: per run its state, NLL, feature distance (+ bootstrap s.d.), FID and
  the first 64 samples; the classifier, the real-vs-real floor and the FID status."""
  p, K, clf_timer = config.paper, dataset.num_levels, common.Timer()
  n_samples = int(p.num_samples) or n_test
  clf = frechet.train_classifier(dataset.train, dataset.train_labels, dataset.test,
                                 dataset.test_labels, K, p.classifier)
  test_v, train_v = dataset.test[:n_test], dataset.train[train_idx]
  ref_v, other_v = (test_v, train_v) if p.fd_reference == "test" else (train_v, test_v)
  ref_f, other_f = clf.features(ref_v), clf.features(other_v)
  fid_ref_v = dataset.train if p.fid_reference == "train" else dataset.test
  out = {"fd_name": f"FD_{dataset.name}-classifier", "n_samples": n_samples,
         "test_accuracy": clf.test_accuracy, "num_reference": len(ref_v),
         "num_other": len(other_v),
         "floor": frechet.frechet_distance_features(other_f, ref_f),
         "floor_sd": frechet.bootstrap_std(other_f, ref_f, int(p.fd_bootstrap)),
         "classifier_seconds": clf_timer.seconds,
         "fid_reason": frechet.fid_unavailable_reason(fid_weights or None),
         "num_fid_reference": len(fid_ref_v),
         "real": _pack(dataset.test[:64]), "runs": {}}
  for run in RUNS:
    ctx, status = ctxs[run.name], statuses[run.name]
    bound = ctx.bound() if status["state"] == "trained" else None
    r, info = {"nll": None, "fd": None, "fd_sd": None, "fid": None, "samples": None}, None
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
  text, t2, p, data = (common.report_text("ddpm_paper"), results["table2"],
                       results["config"]["paper"], results["data"])
  K, log2k = data["num_levels"], math.log2(data["num_levels"])
  rows = [[run.objective, run.paper_is or "— (unstable)",
           "— (unstable)" if run.paper_fid is None else f"{run.paper_fid:.2f}",
           f"≤ {PAPER_NLL[run.name][0]:.2f} (Table 1)" if run.name in PAPER_NLL
           else "not reported", r["state"], common.number(r["nll"]), fd_text(r),
           "not computed¹" if r["fid"] is None else common.number(r["fid"], 2),
           minutes(r["seconds"])]
          for run, r in ((run, t2["runs"][run.name]) for run in RUNS)]
  fid = (text["fid_missing"] if t2["fid_reason"] else text["fid_computed"]).format(t2=t2, p=p)
  body = text["table2"].format(
      t2=t2, p=p, data=data, scale=scale_text(results), factor=EXPLODED_FACTOR,
      exploded=EXPLODED_FACTOR * log2k, log2k=log2k,
      var=text["var_fixed_large" if p["fixed_var_type"] == "fixed_large" else "var_fixed_small"],
      features=int(p["classifier"]["features"]), epochs=int(p["classifier"]["epochs"]),
      other="training" if p["fd_reference"] == "test" else "test",
      bootstrap=int(p["fd_bootstrap"]), fid=fid,
      table=common.markdown_table(headers("table2_headers", fd_name=t2["fd_name"]), rows),
      claims="\n".join(table2_conclusions(t2["runs"], t2["fd_name"])))
  samples = {n: _unpack(r["samples"]) for n, r in t2["runs"].items() if r["samples"]}
  fig = plot_samples(os.path.join(results_dir, "ddpm_table2.png"), samples, _unpack(t2["real"]),
                     K)
  if fig:
    body += "\n\n" + text["table2_figure"].format(fig=os.path.basename(fig))
  return body


def table2_conclusions(results: dict, fd_name: str) -> list:
  """The numbered claims under Table 2 (one line each): the paper's conclusion, ours and the
  verdict; an FD difference within 2 combined bootstrap s.d. leaves a claim unresolved."""
  text, out = common.report_text("ddpm_paper"), []
  fd = {n: fd_text(r) for n, r in results.items()}
  stable = [n for n in RUNS_BY_NAME
            if results[n]["state"].startswith("stable") and results[n]["fd"] is not None]

  def resolved(a, b):
    """|FD a - FD b| exceeds 2 combined bootstrap s.d. (both stable)."""
    ra, rb = results[a], results[b]
    return abs(ra["fd"] - rb["fd"]) > 2.0 * math.hypot(ra["fd_sd"], rb["fd_sd"])

  def worse(a, b):
    """a is worse than b: a unstable while b stable (True), or both stable and FD a > FD b by
    more than 2 combined bootstrap s.d. (True; by less: UNRESOLVED; FD a < FD b by more:
    False)."""
    if b not in stable or results[a]["state"] == NOT_RUN:
      return None
    if a not in stable:
      return True
    return results[a]["fd"] > results[b]["fd"] if resolved(a, b) else UNRESOLVED

  def claim(section, holds=None, **fields):
    out.append(text[section].format(n=len(out) + 1, r=results, fd=fd, verdict=verdict(holds),
                                    **fields))

  ranked = sorted(stable, key=lambda n: results[n]["fd"])
  if any(results[n]["state"] == NOT_RUN for n in RUNS_BY_NAME):
    claim("claim_best_not_run")
  elif ranked:
    best = ranked[0]
    if best == "eps_simple":   # best, resolved only if it beats the runner-up by more than noise
      holds = True if len(ranked) == 1 or resolved(best, ranked[1]) else UNRESOLVED
    else:
      holds = UNRESOLVED if "eps_simple" in stable and not resolved(best, "eps_simple") else False
    claim("claim_best", holds, fd_name=fd_name, best=fd[best],
          objective=RUNS_BY_NAME[best].objective, runner_up=text["claim_runner_up"].format(
              fd=fd[ranked[1]], name=ranked[1]) if len(ranked) > 1 else "")
  else:
    out.append(text["claim_none_stable"])
  for mean, fixed, learned, paper in (
      ("eps", "eps_L_fixed", "eps_L_learned", "unstable"),
      ("mu~", "mean_L_fixed", "mean_L_learned", "FID 23.69 vs 13.22 with fixed Sigma")):
    claim("claim_learned", worse(learned, fixed), mean=mean, paper=paper,
          learned=results[learned]["state"], learned_fd=fd[learned],
          fixed=results[fixed]["state"], fixed_fd=fd[fixed])
  claim("claim_mse", worse("mean_mse", "mean_L_fixed"))
  if "eps_L_fixed" in stable and "mean_L_fixed" in stable:
    a, b = results["eps_L_fixed"], results["mean_L_fixed"]
    diff, tol = abs(a["fd"] - b["fd"]), 2.0 * math.hypot(a["fd_sd"], b["fd_sd"])
    claim("claim_eps_vs_mean", diff <= tol, diff=diff, tol=tol,
          where="within" if diff <= tol else "outside")
  nlls = {n: results[n]["nll"] for n in RUNS_BY_NAME
          if results[n]["nll"] is not None and math.isfinite(results[n]["nll"])}
  if nlls:
    order = sorted(nlls, key=nlls.get)
    claim("claim_nll", best=nlls[order[0]], objective=RUNS_BY_NAME[order[0]].objective,
          order=", ".join(f"{n} {nlls[n]:.3f}" for n in order))
  return out


def plot_samples(path: str, samples: dict, real, num_levels: int) -> Optional[str]:
  """One panel of 64 samples per stable run plus the real images (PNG)."""
  plt = common.pyplot()
  if plt is None:
    return None
  from vdm import reporting
  panels = [("real test images", real)] + list(samples.items())
  fig, axes = plt.subplots(1, len(panels), figsize=(2.6 * len(panels), 2.9), squeeze=False)
  for ax, (title, v) in zip(axes[0], panels):
    grid = reporting.image_grid(frechet.encode_levels(v, num_levels), num_levels)
    ax.imshow(grid if grid.ndim == 3 and grid.shape[-1] == 3 else np.squeeze(grid),
              cmap="gray", interpolation="nearest")
    ax.set_title(title, fontsize=8)
    ax.axis("off")
  return common.save_figure(fig, path)


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


def table1_table(t1: dict) -> str:
  """Table 1, paper beside ours (in ddpm_table1.md and README)."""
  rows = []
  for name in TABLE_RUNS["table1"]:
    r, (paper_test, paper_train) = t1[name], PAPER_NLL[name]
    row = [{"eps_L_fixed": "L", "eps_simple": "L_simple"}[name] + " (eps prediction, fixed "
           "isotropic Sigma)", f"≤ {paper_test:.2f} ({paper_train:.2f})"]
    rows.append(row + ([r["state"], "—", "—", "—"] if "test" not in r else
                       [f"≤ {r['test']:.4f} ({r['train']:.4f})",
                        common.number(r["test"] - r["train"]), f"{paper_test - paper_train:.2f}",
                        minutes(r["seconds"])]))
  return common.markdown_table(headers("table1_headers"), rows)


def render_table1(results: dict, results_dir: str) -> str:
  """Table 1's Markdown from its results (no figure)."""
  del results_dir
  text, t1 = common.report_text("ddpm_paper"), results["table1"]
  ours = {n: (r["test"], r["train"]) for n, r in t1.items() if "test" in r}
  claims = text["table1_missing"]
  if len(ours) == 2:
    (tl, trl), (ts, trs) = ours["eps_L_fixed"], ours["eps_simple"]
    gap = max(abs(tl - trl), abs(ts - trs))
    claims = text["table1_claims"].format(bound=tl, simple=ts, diff=ts - tl,
                                          verdict=verdict(tl < ts), gap=gap,
                                          gap_verdict=verdict(gap <= 0.03))
  return text["table1"].format(data=results["data"], c=results["config"],
                               scale=scale_text(results), claims=claims,
                               table=table1_table(t1))


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
  s9, s1 = step_at(0.9, T), step_at(0.1, T)
  rate, dist = np.asarray(rd["rate"]), np.asarray(rd["distortion"])
  return (float(rate[s9 - 1] / rate[-1]),
          float((dist[s1 - 1] - dist[s9 - 1]) / (dist[s1 - 1] - dist[-1])))


def split_table(t4: dict, data: dict) -> str:
  """The split of the lossless codelength into rate and distortion and the steepness of the
  rate-distortion curve, paper beside ours (in ddpm_table4.md and README)."""
  rd, K, total, l0 = t4["rate_distortion"], data["num_levels"], t4["total_bpd"], t4["decoder_bpd"]
  (p_rate, p_drop), (o_rate, o_drop) = steepness(PAPER_RD), steepness(rd)
  last = rd["distortion"][-1]
  rows = [["rate = L_T + ... + L_1 (bits/dim)", f"{PAPER_SPLIT[0]:.2f}", f"{rd['rate'][-1]:.4f}"],
          ["distortion = L_0 (bits/dim)", f"{PAPER_SPLIT[1]:.2f}", f"{l0:.4f}"],
          ["total = rate + distortion (bits/dim)", f"{PAPER_SPLIT[2]:.2f}", f"{total:.4f}"],
          ["distortion / total", f"{PAPER_SPLIT[1] / PAPER_SPLIT[2]:.1%}", f"{l0 / total:.1%}"],
          ["distortion at the last step (RMSE)", f"{PAPER_SPLIT[3]:.2f}",
           f"{last:.4f} ({last * 255 / (K - 1):.3f})"],
          ["at 90% of the reverse steps: share of rate, of distortion drop",
           f"{p_rate:.1%}, {p_drop:.1%}", f"{o_rate:.1%}, {o_drop:.1%}"]]
  return common.markdown_table(
      ["", "paper (CIFAR-10, 0-255)", f"ours ({data['name']}, 0-{K - 1}; x 255/{K - 1})"], rows)


def render_table4(results: dict, results_dir: str) -> str:
  """Table 4's Markdown (and ddpm_table4.png) from its results."""
  text, t4, data = common.report_text("ddpm_paper"), results["table4"], results["data"]
  K = data["num_levels"]
  head = text["table4_intro"].format(scale=scale_text(results))
  if "rate_distortion" not in t4:
    return head + "\n\n" + text["table4_missing"].format(state=t4["state"])
  rd = {k: np.asarray(v) for k, v in t4["rate_distortion"].items()}
  T, total, l0 = len(rd["rate"]), t4["total_bpd"], t4["decoder_bpd"]
  rate_total, to255 = float(rd["rate"][-1]), 255.0 / (K - 1)
  rows = [[s_paper, f"{rate_p:.5f}", f"{dist_p:.5f}", s, f"{rd['rate'][s - 1]:.5f}",
           f"{rd['distortion'][s - 1]:.5f}", f"{rd['distortion'][s - 1] * to255:.3f}"]
          for s_paper, rate_p, dist_p in PAPER_TABLE4 for s in [step_at(s_paper / 1000, T)]]
  (p_rate, p_drop), (o_rate, o_drop) = steepness(PAPER_RD), steepness(rd)
  fig = plot_rate_distortion(os.path.join(results_dir, "ddpm_table4.png"), rd, K)
  body = text["table4"].format(
      table=common.markdown_table(headers("table4_headers", T=T, k1=K - 1), rows),
      split=split_table(t4, data),
      check=rate_total + l0, total=total, residual=rate_total + l0 - total, l0=l0,
      share=l0 / total, verdict=verdict(l0 / total > 0.5),
      small_k=" " + text["table4_small_k"].format(K=K, bin=2 / (K - 1)) if K < 256 else "",
      p_rate=p_rate, p_drop=p_drop, s9=step_at(0.9, T), T=T, o_rate=o_rate, o_drop=o_drop,
      s1=step_at(0.1, T), steep_verdict=verdict(bool(o_drop > 0.5 and o_rate < 0.5)))
  if fig:
    body += "\n\n" + text["table4_figure"].format(k1=K - 1, fig=os.path.basename(fig))
  return head + "\n\n" + body


def plot_rate_distortion(path: str, rd: dict, K: int) -> Optional[str]:
  """Fig. 5: distortion against reverse steps, rate against reverse steps, distortion against
  rate; ours (rescaled to 0-255) beside the paper's Table 4 points (PNG)."""
  plt = common.pyplot()
  if plt is None:
    return None
  frac, paper = rd["reverse_step"] / len(rd["rate"]), np.asarray(PAPER_TABLE4)
  pfrac, d255 = paper[:, 0] / 1000.0, rd["distortion"] * 255.0 / (K - 1)
  step, rate, dist = "reverse step / T", "rate (bits/dim)", "distortion (RMSE, 0-255 scale)"
  panels = ((frac, d255, pfrac, paper[:, 2], f"ours (RMSE x 255/{K - 1})",
             "paper (CIFAR-10, RMSE 0-255)", step, dist),
            (frac, rd["rate"], pfrac, paper[:, 1], "ours", "paper", step, rate),
            (rd["rate"], d255, paper[:, 1], paper[:, 2], "ours", "paper", rate, dist))
  fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
  for ax, (x, y, px, py, ours, theirs, xlabel, ylabel) in zip(axes, panels):
    ax.plot(x, y, label=ours)
    ax.plot(px, py, "o", label=theirs)
    ax.set(xlabel=xlabel, ylabel=ylabel)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
  fig.suptitle("DDPM progressive lossy decoding (Ho et al. Fig. 5): test split")
  return common.save_figure(fig, path)


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
  for name in only:
    checks.choice("--runs (each run)", name, RUNS_BY_NAME)
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
  n_test = min(int(config.eval.num_examples or len(dataset.test)), len(dataset.test))
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
  return {table: {"config": json.loads(config.to_json()), "data": data,
                  "statuses": {n: statuses[n] for n in TABLE_RUNS[table]},
                  table: compute_table[table](), "seconds": timer.seconds} for table in tables}


def render(results: dict, table: str, results_dir: str) -> str:
  """ddpm_<table>.md's body (and figure) from the table's results, then a note on its runs."""
  text, statuses = common.report_text("ddpm_paper"), results["statuses"]
  body = {"table1": render_table1, "table2": render_table2,
          "table4": render_table4}[table](results, results_dir)
  ran = [n for n in TABLE_RUNS[table] if statuses[n]["state"] != "not run"]
  reused = [n for n in ran if not statuses[n].get("trained_now")]
  note = [text["run_dirs"].format(root=results["data"]["run_root"], reused=text["reused"].format(
      runs=", ".join(reused)) if reused else ".")]
  times = {n: statuses[n].get("train_seconds") for n in ran}
  if times and None not in times.values():
    note.append(text["train_times"].format(total=sum(times.values()) / 60, each=", ".join(
        f"{n} {v / 60:.1f}" for n, v in times.items())))
  return body + "\n\n" + " ".join(note + ([text["wall_time"]] if reused else []))


# README's labels where they are not the Table 2 row's label with ', ' for ': '.
README_LABELS = {"mean_mse": "mu~ prediction, unweighted MSE",
                 "eps_simple": "eps prediction, L_simple"}


def readme_table(results: dict, table: str) -> str:
  """README's summary of one table, from its results."""
  if table == "table2":
    t2 = results["table2"]
    stable = lambda s: "yes" if s.startswith("stable") else "not run" if s == NOT_RUN else "no"
    rows = [[README_LABELS.get(run.name, run.objective.replace(": ", ", ")),
             "unstable" if run.paper_fid is None else f"{run.paper_fid:.2f}",
             stable(r["state"]), common.number(r["nll"]), fd_text(r, 1)]
            for run, r in ((run, t2["runs"][run.name]) for run in RUNS)]
    return common.markdown_table(["objective", "paper FID (CIFAR-10)", "ours: stable",
                                  "ours: test NLL bound (bits/dim)",
                                  f"ours: {t2['fd_name'].split('-')[0]}"], rows)
  if table == "table1":
    return table1_table(results["table1"])
  return split_table(results["table4"], results["data"])


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
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  F = flags.FLAGS
  run_tables(F.config, tables_to_write(F.table), F.workdir_root, F.results_dir,
             F.fid_inception_weights, tuple(F.runs), F.render_only)


if __name__ == "__main__":
  define_flags()
  app.run(main)
