r"""How tight is the bound? The ELBO, importance-weighted bounds and the probability-flow ODE
likelihood side by side, against exact values where they are known.

    python -m experiments.likelihoods [--config=configs/likelihoods_digits.py] [--render_only]

What it runs:
- A Gaussian oracle: data N(mu, diag s^2) (data.gaussian, dimension experiment.oracle_dim) and
  the Bayes-optimal VDM denoiser (vdm.diffusion.oracles), fixed linear log-SNR schedule. Every
  number has an exact counterpart: the continuous-time VDM bound and the T-step bound in closed
  form, the T-step chain's exact log p(x) (a linear-Gaussian chain), the data's own density.
  The K-sample bounds (vdm.diffusion.iwbound) approach the chain's exact value as K grows, and
  the ODE likelihood (vdm.diffusion.ode) the data density (up to the prior mismatch at t = 1).
- A digits DDPM (the config's run, trained or reused in --workdir): calc_bpd's bound, the
  K-sample bounds for each K of likelihood.iw_num_samples and the ODE likelihood with the
  Hutchinson and the exact divergence (--mode=iwbound and --mode=ode_nll of vdm.main, on the
  same held-out examples). The ODE value on digits is an upper bound on the discrete NLL by
  uniform dequantization; the bounds of calc_bpd and iwbound are bounds on the discrete NLL
  directly (a discretized decoder).
What it claims: on the oracle, each estimate lies where theory puts it (ELBO <= L_K <= exact,
L_K increasing in K, L_K -> exact; the ODE value equals the data density to solver and Monte
Carlo error); on digits, L_K decreases (in bits/dim) with K below calc_bpd's bound.
Writes results/likelihoods.json (the numbers), results/likelihoods.md and
results/likelihoods.png; --render_only redraws the last two from the JSON.
"""
import math
import os

from absl import app, flags, logging
import numpy as np

from experiments import common, stats

FLAGS = flags.FLAGS

NAME = "likelihoods"
LN2 = math.log(2.0)


# ------------------------------------------------------------------------------------------
# The runs: what is computed.

def _row(name, values_bpd, exact_bpd=None, seconds=None, **extra) -> dict:
  """A table row: mean and SE over the examples, and the paired gap to the exact value."""
  from vdm.train.evaluation import mean_and_se as _mean_se
  row = {"quantity": name, **extra}
  row["bpd"], row["bpd_se"] = _mean_se(values_bpd)
  if exact_bpd is not None:
    row["gap"], row["gap_se"] = _mean_se(np.asarray(values_bpd) - np.asarray(exact_bpd))
  row["seconds"] = seconds
  return row


def oracle_results(config) -> dict:
  """The Gaussian oracle's rows (bits/dim, continuous densities: may be negative)."""
  import jax
  import jax.numpy as jnp
  from configs.base import get_base_config
  from vdm import data as data_lib
  from vdm.diffusion import iwbound, ode, oracles
  x_cfg = config.experiment
  data_cfg = get_base_config().data
  data_cfg.dataset, data_cfg.dim = "gaussian", x_cfg.oracle_dim
  data_cfg.num_test = x_cfg.oracle_num_examples
  dataset = data_lib.load_dataset(data_cfg)
  mu, s = dataset.params["mu"], dataset.params["s"]
  x = np.asarray(dataset.test, np.float64)
  D, T = x.shape[1], x_cfg.oracle_num_steps
  g0, g1 = x_cfg.oracle_gamma_min, x_cfg.oracle_gamma_max
  gammas = g0 + (g1 - g0) * np.arange(T + 1) / T
  to_bpd = lambda nats: np.asarray(nats, np.float64) / (D * LN2)
  data_nll = to_bpd(oracles.gaussian_nll(x, mu, s))
  chain_nll = to_bpd(-oracles.vdm_gaussian_chain_log_marginal(gammas, mu, s, x))
  rows = [_row("exact -log p(x) of the data", data_nll, data_nll),
          _row(f"exact -log p(x) of the T = {T} chain", chain_nll, chain_nll),
          _row("VDM continuous-time bound (closed form)",
               to_bpd(oracles.vdm_gaussian_bound_continuous(mu, s, g0, g1, x)["loss"]), data_nll),
          _row(f"T = {T} bound (closed form)",
               to_bpd(oracles.vdm_gaussian_bound_discrete(mu, s, gammas, x)["loss"]), chain_nll)]
  denoise_fn = oracles.vdm_optimal_denoise_fn(mu, s)
  gamma_fn = lambda p, t: g0 + (g1 - g0) * t
  with jax.enable_x64():
    xj = jnp.asarray(x)
    for k in x_cfg.oracle_iw_num_samples:
      timer = common.Timer()
      out = iwbound.vdm_iw_bound(denoise_fn, None, gamma_fn, {}, xj, jax.random.key(k), None,
                                 T, int(k), sample_chunk_size=min(int(k), 250))
      rows.append(_row(f"L_K, K = {k} (T = {T} chain)", np.asarray(out["iw_bound_bpd"]),
                       chain_nll, timer.seconds, K=int(k)))
    for divergence in ("exact", "hutchinson"):
      timer = common.Timer()
      out = ode.log_likelihood(denoise_fn, None, xj, jax.random.key(7),
                               ode.VDMProcess(gamma_fn, {}), divergence=divergence,
                               rtol=config.likelihood.ode_rtol, atol=config.likelihood.ode_atol,
                               t0=1e-5)
      rows.append(_row(f"probability-flow ODE, {divergence} divergence",
                       -np.asarray(out["log_likelihood"]) / (D * LN2), data_nll, timer.seconds,
                       nfe=float(np.mean(out["nfe"]))))
  return {"D": D, "T": T, "num_examples": int(len(x)), "gamma": [g0, g1], "rows": rows}


def digits_results(config, workdir: str) -> dict:
  """The trained digits model's rows, from --mode=iwbound and --mode=ode_nll."""
  from vdm import train
  timer = common.Timer()
  result = train.train_and_evaluate(config, workdir)
  train_seconds = timer.seconds
  iw = train.iwbound(config, workdir).record
  rows = []
  for r in iw["rows"]:
    if r["K"] == "calc_bpd":
      rows.append({"quantity": f"calc_bpd bound ({config.diffusion.num_timesteps} terms)",
                   "bpd": r["total_bpd"], "bpd_se": r["total_bpd_se"], "seconds": r["seconds"]})
    else:
      rows.append({"quantity": f"L_K, K = {r['K']}", "K": r["K"], "bpd": r["iw_bound_bpd"],
                   "bpd_se": r["iw_bound_bpd_se"], "ess": r["ess"], "seconds": r["seconds"]})
  divergences = ["hutchinson"] + (["exact"] if config.experiment.ode_exact_divergence else [])
  for divergence in divergences:
    cfg = config.copy_and_resolve_references()
    cfg.likelihood.ode_divergence = divergence
    rec = train.ode_nll(cfg, workdir).record
    r = rec["rows"][0]
    rows.append({"quantity": f"probability-flow ODE, {divergence} divergence (dequantized)",
                 "bpd": r["ode_nll_bpd"], "bpd_se": r["ode_nll_bpd_se"], "nfe": r["nfe"],
                 "seconds": r["seconds"]})
  return {"step": int(result.state.step), "num_examples": iw["num_examples"],
          "train_seconds": train_seconds, "T": config.diffusion.num_timesteps, "rows": rows}


# ------------------------------------------------------------------------------------------
# The claims: what must hold.

def claims(results: dict) -> list:
  """(claim, holds: bool, evidence) for the oracle's and the digits model's rows."""
  out = []
  orc = {r["quantity"]: r for r in results["oracle"]["rows"]}
  iw = [r for r in results["oracle"]["rows"] if "K" in r]
  T = results["oracle"]["T"]
  bound = orc[f"T = {T} bound (closed form)"]
  se = lambda r: 4 * r.get("gap_se", r["bpd_se"]) + 1e-4
  out.append(("oracle: L_1 equals the closed-form T-step bound (in expectation)",
              abs(iw[0]["bpd"] - bound["bpd"]) <= 4 * iw[0]["bpd_se"] + 1e-3,
              f"{iw[0]['bpd']:.4f} vs {bound['bpd']:.4f}"))
  out.append(("oracle: L_K improves with K and stays a bound (gap to the exact chain NLL >= 0)",
              all(b["bpd"] <= a["bpd"] + se(a) for a, b in zip(iw, iw[1:]))
              and all(r["gap"] >= -se(r) for r in iw),
              ", ".join(f"K={r['K']}: gap {r['gap']:.4f}" for r in iw)))
  out.append(("oracle: the largest K closes most of the ELBO's gap",
              iw[-1]["gap"] < 0.25 * iw[0]["gap"] + se(iw[-1]),
              f"{iw[0]['gap']:.4f} -> {iw[-1]['gap']:.4f} bits/dim"))
  for div in ("exact", "hutchinson"):
    r = orc[f"probability-flow ODE, {div} divergence"]
    out.append((f"oracle: the ODE ({div} divergence) gives the data density",
                abs(r["gap"]) <= 4 * r["gap_se"] + 5e-3, f"gap {r['gap']:.4f} +- {r['gap_se']:.4f}"))
  dig = [r for r in results["digits"]["rows"] if "K" in r]
  calc = results["digits"]["rows"][0]
  out.append(("digits: L_K (bits/dim) does not increase with K and is below calc_bpd's bound "
              "for K > 1",
              all(b["bpd"] <= a["bpd"] + 4 * a["bpd_se"] for a, b in zip(dig, dig[1:]))
              and all(r["bpd"] <= calc["bpd"] + 4 * calc["bpd_se"] for r in dig[1:]),
              ", ".join(f"K={r['K']}: {r['bpd']:.4f}" for r in dig)))
  ode_rows = {r["quantity"].split(", ")[1].split(" ")[0]: r for r in results["digits"]["rows"]
              if r["quantity"].startswith("probability-flow ODE")}
  if "exact" in ode_rows:   # the same dequantized examples; SEs over the examples (unpaired)
    e, h = ode_rows["exact"], ode_rows["hutchinson"]
    out.append(("digits: the ODE with Hutchinson's divergence agrees with the exact divergence",
                abs(h["bpd"] - e["bpd"]) <= 4 * math.hypot(h["bpd_se"], e["bpd_se"]),
                f"{h['bpd']:.4f} vs {e['bpd']:.4f}"))
  return out


# ------------------------------------------------------------------------------------------
# The rendering: Markdown and a figure, from the saved results alone.

def _cell(r, key):
  v = r.get(key)
  if v is None:
    return ""
  se = r.get(f"{key}_se")
  return f"{v:.4f} +- {se:.4f}" if se is not None else f"{v:.4g}"


def render(results: dict, results_dir: str) -> str:
  o, d = results["oracle"], results["digits"]
  lines = [f"## Gaussian oracle (D = {o['D']}, {o['num_examples']} examples, VDM chain with "
           f"T = {o['T']}, gamma {o['gamma'][0]} .. {o['gamma'][1]}, Bayes-optimal denoiser)",
           "", "Continuous data: bits/dim of a density (negative values are fine here). "
           "`gap` is the paired difference to the exact value the row estimates (the chain's "
           "NLL for the T-step bounds, the data's for the continuous-time ones).", "",
           common.markdown_table(["quantity", "bits/dim", "gap to exact", "NFE", "seconds"],
                                 [[r["quantity"], _cell(r, "bpd"), _cell(r, "gap"),
                                   _cell(r, "nfe"), _cell(r, "seconds")] for r in o["rows"]]),
           "", f"## Digits DDPM (T = {d['T']}, learned-range variances, {d['step']} steps; "
           f"{d['num_examples']} held-out images)", "",
           "Discrete data: every row bounds the discrete NLL in bits/dim (no exact value is "
           "known); +- one standard error over the examples.", "",
           common.markdown_table(["quantity", "bits/dim", "ESS", "NFE", "seconds"],
                                 [[r["quantity"], _cell(r, "bpd"), _cell(r, "ess"),
                                   _cell(r, "nfe"), _cell(r, "seconds")] for r in d["rows"]]),
           "", "## Claims", "",
           common.markdown_table(["claim", "verdict", "evidence"],
                                 [[c, stats.verdict(ok), ev]
                                  for c, ok, ev in claims(results)]),
           "", "![bound against K](likelihoods.png)"]
  figure(results, os.path.join(results_dir, f"{NAME}.png"))
  return "\n".join(lines)


def figure(results: dict, path: str) -> str:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, 2, figsize=(11, 4))
  for ax, part, title in ((axes[0], "oracle", "Gaussian oracle (gap to exact)"),
                          (axes[1], "digits", "digits DDPM")):
    rows = results[part]["rows"]
    iw = [r for r in rows if "K" in r]
    key = "gap" if part == "oracle" else "bpd"
    ks = [r["K"] for r in iw]
    ax.errorbar(ks, [r[key] for r in iw], yerr=[r[f"{key}_se"] for r in iw], marker="o",
                label="L_K (importance-weighted)")
    for r in rows:
      if r["quantity"].startswith("probability-flow ODE"):
        ax.axhline(r[key], ls="--", lw=1, label=r["quantity"].replace("probability-flow ", ""))
    if part == "oracle":
      ax.axhline(0.0, color="k", lw=1, label="exact (chain NLL)")
    else:
      ax.axhline(rows[0]["bpd"], color="gray", lw=1, label="calc_bpd bound")
    ax.set_xscale("log")
    ax.set_xlabel("K")
    ax.set_ylabel("bits/dim" + (" above exact" if part == "oracle" else ""))
    ax.set_title(title)
    ax.legend(fontsize=7)
  return common.save_figure(fig, path)


def compute(config, workdir: str) -> dict:
  timer = common.Timer()
  results = {"oracle": oracle_results(config)}
  logging.info("oracle done in %.0f s", timer.seconds)
  results["digits"] = digits_results(config, workdir)
  return results


def main(argv):
  del argv
  common.run_experiment(NAME, "How tight is the bound?", compute,
                        lambda results: render(results, FLAGS.results_dir))


if __name__ == "__main__":
  common.define_experiment_flags("likelihoods_digits.py", "likelihoods_digits", "the digits model")
  app.run(main)
