"""experiments/exact_bounds.py: a smoke test of the whole script with a tiny config (structure and
finite numbers of the table, not the scientific result), and its closed-form helpers checked
against independent computations."""
import json
import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from md_tables import numbers as _numbers, table_rows as _table  # noqa: E402
from subprocess_env import fast_compile_env  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from experiments import exact_bounds as X  # noqa: E402  (flags are defined only as a script)


def test_smoke_whole_script(tmp_path):
  out = tmp_path / "exact_bounds.md"
  flags = [f"--results_dir={tmp_path}", "--config.elbo.models=('sbn',)",
           "--config.elbo.num_examples=10", "--config.elbo.num_steps=2",
           "--config.elbo.em_iters=2", "--config.elbo.num_latents=3",
           "--config.discrete.train_steps=3", "--config.gaussian.T_list=(10,100)",
           "--config.gaussian.mc_T=5", "--config.gaussian.mc_num_examples=50"]
  proc = subprocess.run([sys.executable, "-m", "experiments.exact_bounds", *flags], cwd=REPO,
                        capture_output=True, text=True, timeout=600, env=fast_compile_env())
  assert proc.returncode == 0, proc.stderr[-3000:]
  text = out.read_text()
  assert text.startswith("# Exact bounds")
  assert "Wall time:" in text and "python -m experiments.exact_bounds" in text
  summary = _table(text, "part")
  parts = [r[0] for r in summary]
  assert parts.count("(i) exact ELBO") == 1                  # one trained row per model
  assert parts.count("(ii) discrete diffusion") == 3
  assert parts.count("(iii) Monte Carlo check") == 4
  for r in summary:
    nums = [v for c in r[3:6] for v in _numbers(c)]
    assert nums and all(math.isfinite(v) for v in nums), r
  ddpm = _table(text, "T | gamma(x_1)")
  assert [r[0] for r in ddpm] == ["10", "100", "T -> inf (predicted)"]
  for r in ddpm[:2]:
    assert all(math.isfinite(v) for c in r[1:] for v in _numbers(c)), r
  vdm = _table(text, "T | bound (bits/dim)")
  assert [r[0] for r in vdm] == ["T = 10", "T = 100", "continuous"]
  elbo = _table(text, "model")
  assert {r[0] for r in elbo} == {"sbn"}
  assert all(r[-1] == "yes" for r in elbo)                   # ELBO <= log p in every row
  # The Markdown is the rendering of the saved JSON; --render_only redraws it identically.
  saved = json.loads((tmp_path / "exact_bounds.json").read_text())
  assert saved["config"]["elbo"]["models"] == ["sbn"] and len(saved["mc"]) == 4
  out.unlink()
  proc = subprocess.run([sys.executable, "-m", "experiments.exact_bounds",
                         f"--results_dir={tmp_path}", "--render_only"], cwd=REPO,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert out.read_text() == text


def test_vp_schedule_is_ddpms_linear_schedule_at_T_1000():
  """The continuous VP process discretized with T = 1000 steps has DDPM's linear betas
  (1e-4 .. 0.02) to first order; and the betas rebuild alpha_bar by a cumulative product."""
  from vdm.diffusion.schedules import (betas_from_alphas_cumprod, get_beta_schedule,
                                       vp_alphas_cumprod)
  ab = vp_alphas_cumprod(1000)
  betas = betas_from_alphas_cumprod(ab)
  assert np.max(np.abs(betas - get_beta_schedule("linear", 1000))) < 3e-4
  np.testing.assert_allclose(np.cumprod(1.0 - betas), ab, rtol=1e-12)
  assert abs(math.log(ab[-1]) + (0.1 + 19.9 / 2)) < 1e-12


def test_optimal_decoder_nll_against_monte_carlo():
  """E[-log N(x0; E[x0|x1], v*)] with v* = E Var(x0|x1): by sampling (x0, x1) and the
  posterior mean of vdm.diffusion.oracles.optimal_x0, with v* the empirical squared error."""
  from vdm.diffusion import oracles as O
  mu, s, ab1 = np.array([0.3, -0.2]), np.array([0.5, 0.05]), 0.99
  rng = np.random.default_rng(0)
  n = 400000
  x0 = mu + s * rng.standard_normal((n, 2))
  x1 = math.sqrt(ab1) * x0 + math.sqrt(1 - ab1) * rng.standard_normal((n, 2))
  with jax.enable_x64(True):
    xhat = np.asarray(O.optimal_x0(jnp.asarray(x1), math.sqrt(ab1), 1 - ab1, mu, s))
  err = np.mean((x0 - xhat) ** 2, axis=0)
  mc = np.sum(0.5 * (math.log(2 * math.pi) + np.log(err) + 1.0))
  assert abs(O.optimal_decoder_nll(ab1, mu, s) - mc) < 0.01


def test_predicted_limits_match_the_closed_forms_at_large_T():
  """The report's T -> inf gaps (gamma_Euler / 2 and (1 - ln 2) / 2 nats per dimension) against
  the closed-form bounds of vdm.diffusion.oracles at T = 2e6 (the approach is O(1/T) with a large
  constant: the VP grid's beta(t) varies), with data wide enough that
  beta_1 << s^2."""
  import ml_collections
  g = X.get_config().gaussian
  g = ml_collections.ConfigDict(g.to_dict())
  g.dim, g.s_min, g.s_max, g.T_list = 2, 0.3, 0.6, (2_000_000,)
  gt = X.gaussian_tables(g)
  lim = X.asymptotic_gaps_bpd()
  r = gt["ddpm"][0]
  gap = lambda k: (r[k] - gt["H"]) / (gt["D"] * math.log(2))
  assert abs(gap("fixed_small") - lim["fixed_small"]) < 1e-3
  assert abs(gap("fixed_large") - lim["fixed_large"]) < 1e-3
  assert abs(gap("vdm_grid") - lim["vdm_grid"]) < 1e-3
  assert abs(gap("small_opt_decoder") - lim["optimal_decoder"]) < 1e-3
  assert abs(gap("vdm_grid_cont")) < 1e-4
  assert abs(r["err_over_var"] - 2.0) < 1e-3
  # brute-force the Euler sum of the step excess: sum_i 1/i - ln(1 + 1/i)
  i = np.arange(1, 2_000_001, dtype=np.float64)
  euler = np.sum(1 / i - np.log1p(1 / i))
  assert abs(0.5 * euler / math.log(2) - lim["vdm_grid"]) < 1e-6


def test_bad_settings_raise():
  g = X.get_config().gaussian
  g.T_list = (1, 10)
  with pytest.raises(ValueError, match="gaussian.T_list"):
    X.check_gaussian_config(g)
  with pytest.raises(ValueError, match="config field gaussian"):
    X.gaussian_data(0, 0.1, 0.2, 0)
  with pytest.raises(ValueError, match="config field elbo.models.*allowed"):
    X.elbo_part({"models": ["nope"], "num_latents": 3, "num_examples": 4,
                 "seed": 0, "num_steps": 1, "learning_rate": 0.1, "em_iters": 1})
  with pytest.raises(ValueError, match="config field elbo.num_latents"):
    X.elbo_part({"models": ["sbn"], "num_latents": 17, "num_examples": 4,
                 "seed": 0, "num_steps": 1, "learning_rate": 0.1, "em_iters": 1})
  with pytest.raises(ValueError, match="num_steps.*too many to enumerate"):
    X.discrete_part({**X.get_config().discrete.to_dict(), "num_vars": 4, "num_categories": 4,
                     "num_steps": 4})
