r"""Exact bounds, one table: enumerable latent-variable models, an enumerable discrete diffusion,
and Gaussian data, where every bound can be set beside the exact negative log-likelihood.

(i) The exact ELBO of each enumerable model of vdm.elbo.models (experiments/elbo_gap.py's
functions): log p(x), the ELBO and KL(q || p(h|x)) by enumeration, checked by NumPy brute force.
(ii) The enumerable discrete diffusion (experiments/discrete_diffusion_exact.py's functions):
E[-ELBO] and the exact E[-log p(x0)] of a random, a trained and the true reverse process.
(iii) Gaussian data with the Bayes-optimal denoiser (vdm.diffusion.oracles, closed forms): the
VDM bound by T and in continuous time, the DDPM bounds on one VP forward process (where they do
not converge to the exact NLL), and Monte Carlo checks through the ordinary code paths. The
report's prose, which derives the limits: experiments/reports/exact_bounds.md.

  python -m experiments.exact_bounds                    # minutes on a CPU
  python -m experiments.exact_bounds --full_scale       # larger models and T (same code)
  python -m experiments.exact_bounds --config.gaussian.mc_num_examples=20000

Writes results/exact_bounds.json and the Markdown rendered from it; `--render_only` redraws the
Markdown from the JSON. Flags are defined only when run as a script (as in the two reused
scripts), so all three import side by side.
"""
from __future__ import annotations

import json
import math

import ml_collections
import numpy as np

from configs.paper.exact_bounds import get_config
from experiments import common, runs, stats
from vdm.diffusion.schedules import betas_from_alphas_cumprod, vp_alphas_cumprod

NAME = "exact_bounds"

LN2 = math.log(2.0)


# ===========================================================================================
# (i) and (ii): the reused scripts' functions.

def elbo_part(cfg: dict) -> list:
  """Rows of experiments/elbo_gap.py for each model, float64, as JSON-able dicts."""
  from experiments import elbo_gap as G
  G.check_settings(cfg["models"], cfg["num_latents"], prefix="config field elbo.")
  out = []
  results = G.run_models(cfg["models"], cfg["num_examples"], cfg["seed"], True,
                         cfg["num_steps"], cfg["learning_rate"], cfg["em_iters"],
                         cfg["num_latents"], log=lambda m: None)
  for name, (model, rows) in zip(cfg["models"], results):
    for r in rows:
      out.append({"model": G.describe(model), "name": name,
                  **{k: (v if isinstance(v, str) else
                         bool(v) if isinstance(v, (bool, np.bool_)) else float(v))
                     for k, v in r.items()}})
  return out


def discrete_part(cfg: dict) -> dict:
  """Summary of experiments/discrete_diffusion_exact.py's three reverse processes (float64)."""
  import jax
  from experiments import discrete_diffusion_exact as X
  with jax.enable_x64(True):
    b = X.build(**{k: cfg[k] for k in X.SETTINGS})
    p_data, rows = b["p_data"], []
    for label, params in b["settings"]:
      r = X.evaluate(b["dd"], params, b["states"])
      rows.append({"reverse": label, "neg_elbo": float(p_data @ r["neg_elbo"]),
                   "nll": float(-(p_data @ r["log_px"])), "kl": float(p_data @ r["kl"]),
                   "residual": X.max_residual(r)})
  dd = b["dd"]
  return {"D": dd.num_vars, "K": dd.num_categories, "T": dd.num_steps,
          "betas": b["betas"].tolist(), "num_paths": b["num_paths"], "entropy": b["entropy"],
          "rows": rows, "train_history": [float(b["history"][0]), float(b["history"][-1])]}


# ===========================================================================================
# (iii) Gaussian data.

def gaussian_data(dim: int, s_min: float, s_max: float, seed: int):
  """(mu [D], s [D]) float64: mu ~ U(-0.5, 0.5) (NumPy generator `seed`), s geometric."""
  if dim < 1 or not 0 < s_min <= s_max:
    raise ValueError(f"config field gaussian: need dim >= 1 and 0 < s_min <= s_max, got "
                     f"dim={dim}, s_min={s_min}, s_max={s_max}")
  mu = np.random.default_rng(seed).uniform(-0.5, 0.5, dim)
  return mu, np.geomspace(s_min, s_max, dim)


def check_gaussian_config(g) -> None:
  """ValueError naming the field for Gaussian settings the closed forms cannot use."""
  gaussian_data(g.dim, g.s_min, g.s_max, g.seed)
  if not g.T_list or any(int(T) != T or T < 2 for T in g.T_list):
    raise ValueError(f"config field gaussian.T_list must list integers >= 2, got {g.T_list}")
  if not g.gamma_max > g.gamma_min:
    raise ValueError(f"config field gaussian: need gamma_min < gamma_max, got {g.gamma_min}, "
                     f"{g.gamma_max}")
  if not 0 < g.vp_beta_min <= g.vp_beta_max:
    raise ValueError(f"config field gaussian: need 0 < vp_beta_min <= vp_beta_max, got "
                     f"{g.vp_beta_min}, {g.vp_beta_max}")
  if int(g.mc_T) < 2 or int(g.mc_num_examples) < 2:
    raise ValueError(f"config field gaussian: need mc_T >= 2 and mc_num_examples >= 2, got "
                     f"{g.mc_T}, {g.mc_num_examples}")


def gaussian_tables(g) -> dict:
  """All closed forms of (iii), nats per example (expectations over x ~ N(mu, s^2))."""
  from vdm.diffusion import oracles as O
  mu, s = gaussian_data(g.dim, g.s_min, g.s_max, g.seed)
  D = mu.shape[0]
  H = O.gaussian_entropy(s)
  x_mean, x_var = mu, s**2
  vdm_fixed = []
  for T in g.T_list:
    gam = np.linspace(g.gamma_min, g.gamma_max, T + 1)
    vdm_fixed.append((T, float(O.vdm_gaussian_bound_discrete(mu, s, gam, x_mean, x_var)["loss"])))
  vdm_cont = float(O.vdm_gaussian_bound_continuous(mu, s, g.gamma_min, g.gamma_max, x_mean,
                                                   x_var)["loss"])
  ddpm = []
  for T in g.T_list:
    ab = vp_alphas_cumprod(T, g.vp_beta_min, g.vp_beta_max)
    betas = betas_from_alphas_cumprod(ab)
    small = O.ddpm_gaussian_bound(betas, "fixed_small", mu, s, x_mean, x_var)
    large = O.ddpm_gaussian_bound(betas, "fixed_large", mu, s, x_mean, x_var)
    gammas = np.log1p(-ab) - np.log(ab)             # gamma of x_1..x_T
    vdm_grid = O.vdm_gaussian_bound_discrete(mu, s, gammas, x_mean, x_var)
    vdm_grid_cont = O.vdm_gaussian_bound_continuous(mu, s, gammas[0], gammas[-1], x_mean, x_var)
    dec_opt = O.optimal_decoder_nll(ab[0], mu, s)
    post_var1 = betas[1] * (1.0 - ab[0]) / (1.0 - ab[1])
    e0 = s**2 * (1.0 - ab[0]) / (ab[0] * s**2 + 1.0 - ab[0])
    ddpm.append({"T": T, "fixed_small": float(small["total"]),
                 "fixed_large": float(large["total"]),
                 "small_opt_decoder": float(small["total"] - small["vb"][0] + dec_opt),
                 "decoder_small": float(small["vb"][0]), "decoder_opt": dec_opt,
                 "vdm_grid": float(vdm_grid["loss"]), "vdm_grid_cont": float(vdm_grid_cont["loss"]),
                 "kl_sum_small": float(small["vb"][1:].sum() + small["prior"]),
                 "kl_sum_vdm": float(vdm_grid["loss_diff"] + vdm_grid["loss_klz"]),
                 "err_over_var": float(np.mean(e0 / post_var1)),
                 "gamma_x1": float(gammas[0]), "gamma_xT": float(gammas[-1])})
  return {"mu": mu, "s": s, "D": D, "H": H, "vdm_fixed": vdm_fixed, "vdm_cont": vdm_cont,
          "ddpm": ddpm}


def _mc(samples) -> tuple:
  a = np.asarray(samples, np.float64)
  return float(a.mean()), float(a.std(ddof=1) / math.sqrt(a.shape[0]))


def gaussian_mc_checks(g) -> list:
  """Monte Carlo through the ordinary code paths vs the closed forms, float64, bits/dim.

  x0 ~ N(mu, s^2) (mc_num_examples draws); per example one draw of the noise at every t.
  Rows: (path, closed form E over the data, MC mean, SE, per-example MC minus closed form of
  that example (mean, SE): the data-noise-free comparison)."""
  import jax
  import jax.numpy as jnp
  from vdm.diffusion import oracles as O
  from vdm.diffusion.ddpm import GaussianDiffusion
  from vdm.diffusion.schedules import FixedLinearGamma
  from vdm.diffusion.vdm import vdm_losses
  mu, s = gaussian_data(g.dim, g.s_min, g.s_max, g.seed)
  D, T, N = mu.shape[0], int(g.mc_T), int(g.mc_num_examples)
  if T < 2 or N < 2:
    raise ValueError(f"config field gaussian: need mc_T >= 2 and mc_num_examples >= 2, got "
                     f"{T}, {N}")
  rng = np.random.default_rng(g.seed + 1)
  x0 = mu + s * rng.standard_normal((N, D))
  scale = 1.0 / (D * LN2)
  rows = []
  with jax.enable_x64(True):
    key = jax.random.PRNGKey(g.seed)
    ab = vp_alphas_cumprod(T, g.vp_beta_min, g.vp_beta_max)
    betas = betas_from_alphas_cumprod(ab)
    for var_type in ("fixed_small", "fixed_large"):
      diff = GaussianDiffusion(betas, "eps", var_type, "kl", num_levels=None, t_chunk_size=25)
      model_fn = O.ddpm_optimal_model_fn(diff.alphas_cumprod, mu, s, "eps")
      out = diff.calc_bpd(model_fn, {}, jnp.asarray(x0), jax.random.fold_in(key, 1))
      mc = np.asarray(out["total_bpd"], np.float64)
      exact = float(O.ddpm_gaussian_bound(betas, var_type, mu, s, mu, s**2)["total"]) * scale
      per_ex = np.asarray(O.ddpm_gaussian_bound(betas, var_type, mu, s, x0)["total"]) * scale
      rows.append((f"GaussianDiffusion.calc_bpd, DDPM {var_type}, T = {T}", exact, *_mc(mc),
                   *_mc(mc - per_ex)))
    gamma_fn = FixedLinearGamma(g.gamma_min, g.gamma_max).apply
    denoise = O.vdm_optimal_denoise_fn(mu, s)
    for TT in (0, T):
      nats = vdm_losses(denoise, None, gamma_fn, {}, jnp.asarray(x0), jax.random.fold_in(key, 2),
                        None, T=TT)["loss"]
      mc = np.asarray(nats, np.float64) * scale
      if TT == 0:   # the closed form of the same bound, given the data's (mean, var) or x0
        bound = lambda *x: O.vdm_gaussian_bound_continuous(mu, s, g.gamma_min, g.gamma_max, *x)
      else:
        gam = np.linspace(g.gamma_min, g.gamma_max, TT + 1)
        bound = lambda *x: O.vdm_gaussian_bound_discrete(mu, s, gam, *x)
      name = f"vdm_losses, VDM T = {TT}" if TT else "vdm_losses, VDM continuous time"
      rows.append((name, float(bound(mu, s**2)["loss"]) * scale, *_mc(mc),
                   *_mc(mc - np.asarray(bound(x0)["loss"]) * scale)))
  return rows


# ===========================================================================================
# Report.

def asymptotic_gaps_bpd() -> dict:
  """T -> inf gaps to the exact NLL on the VP grid (derived in the report), bits per dimension:
  decoder 0.5 (1 - ln 2), first steps gamma_Euler / 2 (nats / ln 2)."""
  dec = 0.5 * (1.0 - LN2) / LN2
  steps = 0.5 * float(np.euler_gamma) / LN2
  return {"decoder": dec, "vdm_grid": steps, "optimal_decoder": steps,
          "fixed_small": steps + dec, "fixed_large": dec}


def _bpd(nats: float, D: int) -> float:
  return nats / (D * LN2)


def _yes(holds: bool) -> str:
  """The report's verdict on a check: 'yes' or 'NO'."""
  return "yes" if holds else "NO"


def _numpy_gap(r: dict) -> float:
  """An ELBO row's larger disagreement with the NumPy brute force (KL or log p(x))."""
  return max(r["kl_vs_numpy"], r["log_px_vs_numpy"])


def summary_rows(elbo_rows, disc, gt, mc_rows) -> list:
  """The headline table: every part's bounds beside the exact values."""
  D, H = gt["D"], _bpd(gt["H"], gt["D"])
  rows = [["(i) exact ELBO", f"{r['name']}, trained, amortized q", "nats / example",
           f"{-r['log_px']:.4f} (-log p(x))", f"{-r['elbo']:.4f} (-ELBO)", f"{r['kl']:.4g} (= KL)",
           f"{r['residual']:.1e}; NumPy {_numpy_gap(r):.1e}"]
          for r in elbo_rows if r["params"].startswith("ELBO-trained") and r["q"] == "amortized"]
  rows += [["(ii) discrete diffusion", r["reverse"], "nats / example",
            f"{r['nll']:.6f} (H = {disc['entropy']:.6f})", f"{r['neg_elbo']:.6f}",
            f"{r['neg_elbo'] - r['nll']:.3e} (KL {r['kl']:.3e})", f"{r['residual']:.1e}"]
           for r in disc["rows"]]
  bounds = ([(f"VDM, T = {T}, fixed endpoints", v) for T, v in gt["vdm_fixed"]]
            + [("VDM, continuous time, fixed endpoints", gt["vdm_cont"])]
            + [(f"DDPM fixed_small, T = {r['T']}", r["fixed_small"]) for r in gt["ddpm"]])
  rows += [["(iii) Gaussian data", setting, "bits/dim", f"{H:.5f}", f"{_bpd(v, D):.5f}",
            f"{_bpd(v, D) - H:.5f}", "closed form"] for setting, v in bounds]
  for name, exact, m, se, dm, dse in mc_rows:
    rows.append(["(iii) Monte Carlo check", name, "bits/dim", f"{exact:.5f} (closed form)",
                 f"{m:.5f} ± {se:.5f}", f"{m - exact:+.5f}",
                 f"{stats.z_score(m, exact, se):+.2f} SE; per-example {dm:+.1e} ± {dse:.1e}"])
  return rows


DDPM_GAPS = ("fixed_small", "fixed_large", "small_opt_decoder", "vdm_grid", "vdm_grid_cont")
DDPM_HEAD = ["T", "gamma(x_1)", "DDPM fixed_small", "DDPM fixed_large",
             "fixed_small, optimal decoder var", "VDM on the grid", "VDM continuous (same ends)",
             "identity", "err / var"]


def gaussian_sections(text, cfg, gt, mc_rows, minutes) -> list:
  """(iii): the VDM table by T, the DDPM table on the VP grid, the Monte Carlo checks."""
  fmt, g, D = common.markdown_table, cfg.gaussian, gt["D"]
  H = _bpd(gt["H"], D)
  cont = gt["vdm_cont"]
  rows = [[f"T = {T}", f"{_bpd(v, D):.6f}", f"{_bpd(v - cont, D):.3e}", f"{_bpd(v, D) - H:.6f}"]
          for T, v in gt["vdm_fixed"]]
  rows.append(["continuous", f"{_bpd(cont, D):.6f}", "0", f"{_bpd(cont, D) - H:.6f}"])
  vs = [v for _, v in gt["vdm_fixed"]] + [cont]
  mono = all(a > b for a, b in zip(vs[:-1], vs[1:]))
  table = fmt(["T", "bound (bits/dim)", "bound - continuous", "bound - exact NLL"], rows)
  out = [text["gaussian"].format(c=cfg, D=D, H=H, mono=_yes(mono), table=table)]
  lim = asymptotic_gaps_bpd()
  rows = [[f"{r['T']}", f"{r['gamma_x1']:.2f}", *[f"{_bpd(r[k], D) - H:.5f}" for k in DDPM_GAPS],
           f"{_bpd(r['kl_sum_small'] - r['kl_sum_vdm'], D):.1e}", f"{r['err_over_var']:.4f}"]
          for r in gt["ddpm"]]
  rows.append(["T -> inf (predicted)", "-inf",
               *[f"{lim[k]:.5f}" for k in ("fixed_small", "fixed_large", "optimal_decoder",
                                           "vdm_grid")], "0", "0", "2"])
  last = gt["ddpm"][-1]
  out.append(text["ddpm"].format(
      c=cfg, beta_span=g.vp_beta_max - g.vp_beta_min, t_valid=g.vp_beta_min / g.s_min**2,
      table=fmt(DDPM_HEAD, rows), lim=lim, T=last["T"],
      **{k: _bpd(last[k], D) - H for k in ("vdm_grid_cont", "fixed_small", "fixed_large")}))
  rows = [[name, f"{exact:.6f}", f"{m:.6f} ± {se:.6f}", f"{stats.z_score(m, exact, se):+.2f}",
           f"{dm:+.2e} ± {dse:.2e}"] for name, exact, m, se, dm, dse in mc_rows]
  ok = all(abs(m - exact) <= 3 * se for _, exact, m, se, _, _ in mc_rows)
  out.append(text["mc"].format(c=cfg, ok=_yes(ok), minutes=minutes, table=fmt(
      ["code path", "closed form E over data", "Monte Carlo", "z", "per-example"], rows)))
  return out


def compute(cfg) -> dict:
  """Every part's numbers, JSON-able (nats, or bits/dim in the Monte Carlo rows)."""
  check_gaussian_config(cfg.gaussian)
  seconds, t = {}, common.Timer()
  elbo_cfg = cfg.elbo.to_dict()
  elbo_cfg["models"] = list(elbo_cfg["models"])
  elbo_rows = elbo_part(elbo_cfg)                # validates the model names first
  seconds["elbo"], t = t.seconds, common.Timer()
  disc = discrete_part(cfg.discrete.to_dict())
  seconds["discrete"], t = t.seconds, common.Timer()
  gt = gaussian_tables(cfg.gaussian)
  gt.update(mu=gt["mu"].tolist(), s=gt["s"].tolist())
  mc_rows = gaussian_mc_checks(cfg.gaussian)
  seconds["gaussian"] = t.seconds
  return {"config": json.loads(cfg.to_json()), "elbo": elbo_rows, "discrete": disc,
          "gaussian": gt, "mc": [list(r) for r in mc_rows], "part_seconds": seconds}


def render(results: dict) -> str:
  """The Markdown body from `compute`'s results (as saved in exact_bounds.json): the summary
  table, then each part with its prose."""
  cfg = ml_collections.ConfigDict(results["config"])
  disc, gt = results["discrete"], results["gaussian"]
  fmt, text = common.markdown_table, common.report_text(NAME)
  minutes = {k: v / 60 for k, v in results["part_seconds"].items()}
  scale = "FULL (--full_scale)" if results.get("full_scale", False) else "CPU default"
  summary = fmt(["part", "setting", "units", "exact (reference)", "bound", "bound - exact",
                 "identity residual / check"],
                summary_rows(results["elbo"], disc, gt, results["mc"]))
  rows = [[r["name"], r["params"], r["q"].replace("\\|", "|"), f"{r['log_px']:.4f}",
           f"{r['elbo']:.4f}", f"{r['kl']:.4g}", f"{r['residual']:.1e}",
           f"{_numpy_gap(r):.1e}", _yes(r["elbo_le_log_px"])] for r in results["elbo"]]
  elbo = fmt(["model", "parameters", "q", "log p(x)", "ELBO", "KL", "|log p - ELBO - KL|",
              "vs NumPy", "ELBO <= log p"], rows)
  rows = [[r["reverse"], f"{r['neg_elbo']:.10f}", f"{r['nll']:.10f}", f"{r['kl']:.3e}",
           f"{disc['entropy']:.10f}", f"{r['residual']:.1e}"] for r in disc["rows"]]
  discrete = fmt(["reverse process", "E[-ELBO]", "E[-log p(x0)] (exact)", "E[KL]", "H(p_data)",
                  "max identity residual"], rows)
  betas = np.round(disc["betas"], 4).tolist()
  out = [text["summary"].format(scale=scale, D=gt["D"], table=summary),
         text["elbo"].format(c=cfg, table=elbo, minutes=minutes["elbo"]),
         text["discrete"].format(d=disc, betas=betas, table=discrete, minutes=minutes["discrete"]),
         *gaussian_sections(text, cfg, gt, results["mc"], minutes["gaussian"])]
  return "\n\n".join(out) + "\n"


def readme_table(results: dict) -> str:
  """README's table of (iii): the VDM and DDPM bounds (bits/dim) of the Gaussian data by T."""
  gt = results["gaussian"]
  D = gt["D"]
  label = lambda T: f"T = {T}" if T <= 1000 else f"T = 10^{round(math.log10(T))}"
  Ts = [T for T, _ in gt["vdm_fixed"]]
  ddpm = {r["T"]: r["fixed_small"] for r in gt["ddpm"]}
  rows = [["VDM, fixed log-SNR endpoints"] + [f"{_bpd(v, D):.5f}" for _, v in gt["vdm_fixed"]]
          + [f"{_bpd(gt['vdm_cont'], D):.5f}"],
          ["DDPM fixed_small (VP grid)"] + [f"{_bpd(ddpm[T], D):.5f}" if T in ddpm else "-"
                                            for T in Ts] + ["-"]]
  return common.markdown_table(["bound"] + [label(T) for T in Ts] + ["continuous"], rows)


def main(argv):
  del argv
  import sys
  from absl import flags
  FLAGS = flags.FLAGS
  full = (lambda: get_config(full_scale=True)) if FLAGS.full_scale else None
  cfg = runs.config_from_cli(FLAGS.config, full, sys.argv)

  common.compute_or_render(
      NAME, "Exact bounds: enumerable models, enumerable discrete diffusion, Gaussian data",
      FLAGS.results_dir, FLAGS.render_only,
      lambda: {**compute(cfg), "full_scale": bool(FLAGS.full_scale)}, render)


def _define_flags():
  from absl import flags
  from ml_collections import config_flags
  config_flags.DEFINE_config_dict("config", get_config(), "Settings of the three parts.")
  flags.DEFINE_bool("full_scale", False, "Larger enumerations and T (get_config(True)); "
                    "--config.* overrides still apply.")
  flags.DEFINE_string("results_dir", common.RESULTS, "Where exact_bounds.json and .md go.")
  flags.DEFINE_bool("render_only", False, "Only redraw the Markdown from the saved JSON.")


if __name__ == "__main__":
  from absl import app
  _define_flags()
  app.run(main)
