"""experiments/vdm_paper.py: a smoke test of the whole script with a tiny config (structure and
finite numbers of the table, not the scientific result), and its pure helpers checked against
independent computations."""
import math
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from md_tables import numbers as _numbers, table_rows as _table  # noqa: E402
from subprocess_env import fast_compile_env  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from experiments import runs, stats  # noqa: E402
from experiments import vdm_paper as P  # noqa: E402  (flags are defined only as a script)


def test_smoke_whole_script(tmp_path):
  out = tmp_path / "res" / "vdm_paper.md"
  flags = [
      f"--workdir_root={tmp_path / 'runs'}", f"--results_dir={tmp_path / 'res'}",
      "--config.training.num_steps=2", "--config.training.steps_per_log=1",
      "--config.training.steps_per_save=2", "--config.training.steps_per_eval=2",
      "--config.training.batch_size=8", "--config.optimizer.warmup_steps=0",
      "--config.model.ch=8", "--config.model.ch_mult=(1,)", "--config.model.attn_resolutions=()",
      "--config.model.num_res_blocks=0", "--config.experiment.train_fixed=False",
      "--config.eval.num_examples=8", "--config.eval.batch_size=8",
      "--config.experiment.num_draws=2", "--config.experiment.discrete_T=(3,)",
      "--config.experiment.alt_schedules=('cosine',)", "--config.experiment.num_examples=8",
      "--config.experiment.eval_batch_size=8"]
  env = fast_compile_env()
  proc = subprocess.run([sys.executable, "-m", "experiments.vdm_paper", *flags], cwd=REPO,
                        capture_output=True, text=True, timeout=600, env=env)
  assert proc.returncode == 0, proc.stderr[-3000:]
  text = out.read_text()
  assert text.startswith("# VDM")
  assert "Wall time:" in text and "Machine:" in text and "python -m experiments.vdm_paper" in text
  assert (tmp_path / "res" / "vdm_paper.png").stat().st_size > 1000
  rows_a = _table(text, "setting")
  assert [r[0] for r in rows_a] == ["T = 3", "continuous (T = inf)"]
  for r in rows_a:
    assert all(math.isfinite(v) for v in _numbers(r[2]) + _numbers(r[3]) + _numbers(r[5]))
    assert len(_numbers(r[2])) == 2           # mean ± SE
  assert "2.65" in rows_a[1][1]
  rows_b = _table(text, "schedule")
  assert rows_b[1][0] == "cosine" and math.isfinite(_numbers(rows_b[1][2])[0])
  # the alternative schedule has the model's own endpoints
  assert rows_b[0][1] == rows_b[1][1]
  # (c) with train_fixed=False (the fixed run doubles the compile time): the learned row only.
  text_c = text[text.index("## (c)"):]
  rows_c = _table(text_c, "schedule")
  assert [r[0] for r in rows_c] == ["learned_linear"]
  for r in rows_c:
    assert all(math.isfinite(v) for c in r[1:] for v in _numbers(c))
  assert re.search(r"holds|does NOT hold", text)
  # Rendering is a separate step: --render_only redraws the same Markdown and figure from the
  # saved JSON, without the run directories.
  import json
  saved = json.loads((tmp_path / "res" / "vdm_paper.json").read_text())
  assert [r["T"] for r in saved["a"]] == [3, 0] and list(saved["runs"]) == ["learned_linear"]
  out.unlink()
  (tmp_path / "res" / "vdm_paper.png").unlink()
  proc = subprocess.run([sys.executable, "-m", "experiments.vdm_paper", "--render_only",
                         f"--results_dir={tmp_path / 'res'}",
                         f"--workdir_root={tmp_path / 'none'}"], cwd=REPO, capture_output=True,
                        text=True, timeout=300, env=env)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert out.read_text() == text and not (tmp_path / "none").exists()
  assert (tmp_path / "res" / "vdm_paper.png").stat().st_size > 1000


def test_cosine_schedule_is_the_cosine_log_snr_with_exact_endpoints():
  """Independent form: sigma_t^2 = sigmoid(gamma(t)) = sin^2(a + (b - a) t) with
  tan(a) = exp(g0/2), tan(b) = exp(g1/2) (alpha = cos, sigma = sin)."""
  with jax.enable_x64(True):
    g0, g1 = -11.0, 4.0
    ends = jnp.asarray([g0, g1], jnp.float64)
    t = jnp.linspace(0.0, 1.0, 101, dtype=jnp.float64)
    g = np.asarray(P.alt_gamma("cosine")(ends, t))
    a, b = math.atan(math.exp(g0 / 2)), math.atan(math.exp(g1 / 2))
    want = np.sin(a + (b - a) * np.asarray(t)) ** 2
    np.testing.assert_allclose(1.0 / (1.0 + np.exp(-g)), want, rtol=1e-9, atol=1e-15)
    for name in P.ALT_SCHEDULES:
      gam = np.asarray(P.alt_gamma(name)(ends, t))
      assert gam[0] == g0 and abs(gam[-1] - g1) < 1e-12
      assert np.all(np.diff(gam) > 0)


def test_alt_schedules_give_the_closed_form_continuous_bound():
  """The invariance the experiment tests, with a Bayes-optimal denoiser on Gaussian data: the
  continuous-time bound under the linear, cosine and quadratic schedules (same endpoints), by
  Monte Carlo through vdm_losses, equals the closed form (vdm.diffusion.oracles)."""
  from vdm.diffusion import oracles as O
  from vdm.diffusion.vdm import vdm_losses
  mu, s = np.array([0.2, -0.3]), np.array([0.4, 0.15])
  g0, g1 = -8.0, 4.0
  want = float(O.vdm_gaussian_bound_continuous(mu, s, g0, g1, mu, s**2)["loss"])
  with jax.enable_x64(True):
    x = jnp.asarray(mu + s * np.random.default_rng(0).standard_normal((20000, 2)))
    ends = jnp.asarray([g0, g1], jnp.float64)
    fns = {"linear": lambda e, t: e[0] + (e[1] - e[0]) * t}
    fns.update({n: P.alt_gamma(n) for n in P.ALT_SCHEDULES})
    for name, fn in fns.items():
      loss = np.asarray(vdm_losses(O.vdm_optimal_denoise_fn(mu, s), None, fn, ends, x,
                                   jax.random.PRNGKey(1), None, T=0)["loss"])
      se = loss.std(ddof=1) / math.sqrt(loss.size)
      assert abs(loss.mean() - want) < 5 * se, (name, loss.mean(), want, se)


def test_mc_summary_and_paired_difference():
  rng = np.random.default_rng(0)
  row, col = rng.normal(size=7), rng.normal(size=5)
  samples = row[:, None] + col[None, :]                   # draw effect + example effect
  s = stats.mc_summary(samples)
  assert abs(s["mean"] - (row.mean() + col.mean())) < 1e-12
  assert abs(s["se"] - np.std(row, ddof=1) / math.sqrt(7)) < 1e-12
  assert abs(s["est_var"] - np.var(row, ddof=1)) < 1e-12   # per-example variance over draws
  d = stats.paired_difference(samples + 0.25, samples)
  assert abs(d["mean"] - 0.25) < 1e-12 and d["se"] < 1e-12
  with pytest.raises(ValueError, match="M >= 2"):
    stats.mc_summary(samples[:1])


def test_variance_ratio():
  rng = np.random.default_rng(1)
  b = rng.normal(size=(6, 40)) * rng.uniform(0.5, 2.0, 40)
  r = stats.variance_ratio(3.0 * b + 7.0, b)                   # Var(3 X + 7) = 9 Var(X), exactly
  assert abs(r["ratio"] - 9.0) < 1e-9 and r["se"] < 1e-9
  r = stats.variance_ratio(rng.normal(size=(50, 200)), rng.normal(size=(50, 200)) * 2.0)
  assert abs(r["ratio"] - 0.25) < 4 * r["se"] and 0 < r["se"] < 0.05
  assert "lower" in P.ratio_text({"ratio": 0.5, "se": 0.1})
  assert "no difference" in P.ratio_text({"ratio": 1.01, "se": 0.1})


def test_paired_draws_assembles_padded_batches_in_order():
  """A draw function whose output is known: example values come back in order, padding is
  dropped, and draw d / batch b see the key fold_in(fold_in(key, d), b)."""
  key = jax.random.PRNGKey(3)

  def draw_fn(den, gam, x, k):
    return {"loss": x[:, 0] + jax.random.uniform(k, ())}

  x = jnp.arange(7.0)[:, None]
  out = stats.paired_draws(jax.jit(draw_fn), None, None, x, key, num_draws=3,
                           batch_size=3)["loss"]
  assert out.shape == (3, 7)
  for d in range(3):
    for b in range(3):
      u = float(jax.random.uniform(jax.random.fold_in(jax.random.fold_in(key, d), b), ()))
      idx = np.arange(b * 3, min(b * 3 + 3, 7))
      np.testing.assert_allclose(out[d, idx], idx + u, rtol=1e-6)


def test_bad_settings_raise():
  import ml_collections
  from configs.paper import vdm_digits
  cfg = vdm_digits.get_config()
  P.check_experiment(cfg.experiment)
  bad = ml_collections.ConfigDict(cfg.experiment.to_dict())
  bad.alt_schedules = ("sawtooth",)
  with pytest.raises(ValueError, match="experiment.alt_schedules.*cosine"):
    P.check_experiment(bad)
  bad = ml_collections.ConfigDict(cfg.experiment.to_dict())
  bad.num_draws = 1
  with pytest.raises(ValueError, match="experiment.num_draws"):
    P.check_experiment(bad)
  with pytest.raises(ValueError, match="run must be one of"):
    P.run_config(cfg, "learned_net")
  with pytest.raises(ValueError, match="schedule must be one of"):
    P.alt_gamma("sawtooth")
  # run_config drops the experiment group and sets the schedule; the hash ignores Monte Carlo.
  c1 = P.run_config(cfg, "fixed_linear")
  assert "experiment" not in c1 and c1.vdm.gamma_type == "fixed_linear"
  cfg2 = vdm_digits.get_config()
  cfg2.experiment.num_draws = 7
  assert runs.fingerprint(P.run_config(cfg2, "fixed_linear")) == runs.fingerprint(c1)
