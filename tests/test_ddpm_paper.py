"""DDPM paper tables (experiments/ddpm_paper.py) and the feature-space Frechet distance.

- The Frechet distance against independent computations: SciPy's sqrtm formula, closed forms
  for commuting (diagonal) and 1-D Gaussians, and moment estimates written out by hand.
- The verdict logic of the tables on synthetic results (pure functions).
- One smoke run of the whole script (`python -m experiments.ddpm_paper --table=all`, tiny config,
  two of the six runs) in a subprocess, then a check of each table file's structure and that its
  numbers are finite (not the scientific result), and a rerun that reuses the trained runs.
"""
import math
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import scipy.linalg

from experiments import ddpm_paper as P
from experiments import frechet
from md_tables import table_rows
from subprocess_env import fast_compile_env

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ---------------------------------------------------------------------------------------------
# Frechet distance.

def _random_psd(rng, f, rank=None):
  a = rng.normal(size=(f, rank or f))
  return a @ a.T + (0.0 if rank else 0.1) * np.eye(f)


def _frechet_scipy(mu1, s1, mu2, s2):
  """The TTUR/pytorch-fid formula: Tr(s1 + s2 - 2 sqrtm(s1 s2)), sqrtm from SciPy."""
  covmean = scipy.linalg.sqrtm(s1 @ s2)
  covmean = np.real(covmean)
  return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


@pytest.mark.parametrize("seed,f", [(0, 1), (1, 3), (2, 8), (3, 16)])
def test_frechet_matches_scipy_sqrtm(seed, f):
  rng = np.random.default_rng(seed)
  mu1, mu2 = rng.normal(size=f), rng.normal(size=f)
  s1, s2 = _random_psd(rng, f), _random_psd(rng, f)
  ours = frechet.frechet_distance(mu1, s1, mu2, s2)
  ref = _frechet_scipy(mu1, s1, mu2, s2)
  assert ours == pytest.approx(ref, rel=1e-9, abs=1e-9)
  assert frechet.frechet_distance(mu2, s2, mu1, s1) == pytest.approx(ours, rel=1e-9, abs=1e-9)


def test_frechet_closed_forms():
  # Commuting (diagonal) covariances: d^2 = |mu1 - mu2|^2 + sum (sqrt(a) - sqrt(b))^2.
  rng = np.random.default_rng(4)
  a, b = rng.uniform(0.1, 3.0, 6), rng.uniform(0.1, 3.0, 6)
  mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
  expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
  got = frechet.frechet_distance(mu1, np.diag(a), mu2, np.diag(b))
  assert got == pytest.approx(expected, rel=1e-12)
  # 1-D: the 2-Wasserstein distance (m1 - m2)^2 + (s1 - s2)^2.
  got = frechet.frechet_distance([1.5], [[4.0]], [-0.5], [[0.25]])
  assert got == pytest.approx((2.0) ** 2 + (2.0 - 0.5) ** 2, rel=1e-12)
  # Same Gaussian: 0. For a singular covariance the square root of the zero eigenvalues turns
  # rounding (1e-16 relative) into O(sqrt(1e-16)) = 1e-8 relative errors, hence the looser bound.
  s = _random_psd(rng, 5)
  assert abs(frechet.frechet_distance(mu1[:5], s, mu1[:5], s)) < 1e-9 * np.trace(s)
  s = _random_psd(rng, 5, rank=2)
  assert abs(frechet.frechet_distance(mu1[:5], s, mu1[:5], s)) < 1e-6 * np.trace(s)
  # A rotation of an isotropic Gaussian changes nothing; a shift of the mean adds |shift|^2.
  assert frechet.frechet_distance(np.zeros(3), 2 * np.eye(3), np.ones(3), 2 * np.eye(3)) == \
      pytest.approx(3.0, rel=1e-12)


def test_frechet_features_uses_sample_moments():
  rng = np.random.default_rng(5)
  f1, f2 = rng.normal(size=(40, 4)), 2.0 + 0.5 * rng.normal(size=(30, 4))

  def moments(x):   # written out: mean and unbiased covariance
    m = x.sum(0) / len(x)
    return m, (x - m).T @ (x - m) / (len(x) - 1)

  expected = _frechet_scipy(*moments(f1), *moments(f2))
  assert frechet.frechet_distance_features(f1, f2) == pytest.approx(expected, rel=1e-9)
  sd = frechet.bootstrap_std(f1, f2, 20, seed=1)
  assert math.isfinite(sd) and sd > 0
  assert math.isnan(frechet.bootstrap_std(f1, f2, 1))


def test_frechet_bad_shapes():
  with pytest.raises(ValueError, match="mu1 and mu2"):
    frechet.frechet_distance(np.zeros(3), np.eye(3), np.zeros(2), np.eye(2))
  with pytest.raises(ValueError, match="sigma1 and sigma2"):
    frechet.frechet_distance(np.zeros(3), np.eye(2), np.zeros(3), np.eye(3))
  with pytest.raises(ValueError, match="features"):
    frechet.gaussian_stats(np.zeros((1, 3)))


def test_quantize_round_trip_and_fid_reason(tmp_path):
  v = np.arange(17, dtype=np.uint8).reshape(1, 17, 1, 1)
  assert np.array_equal(frechet.quantize_samples(frechet.encode_levels(v, 17), 17), v)
  x = np.array([-3.0, 3.0, np.nan, 0.0])
  assert frechet.quantize_samples(x, 17).tolist() == [0, 16, 0, 8]
  assert "cannot be downloaded" in frechet.fid_unavailable_reason(None)
  assert "not a file" in frechet.fid_unavailable_reason(str(tmp_path / "missing.pth"))


# ---------------------------------------------------------------------------------------------
# Verdict logic on synthetic results.

def _results(fds, states=None):
  states = states or {}
  return {name: {"state": states.get(name, "stable"), "nll": 3.0 + i,
                 "fd": fds.get(name), "fd_sd": 0.01, "fid": None}
          for i, name in enumerate(P.RUNS_BY_NAME)}


def test_table2_conclusions_follow_the_numbers():
  fds = {"mean_L_learned": 5.0, "mean_L_fixed": 2.0, "mean_mse": 4.0, "eps_L_learned": 6.0,
         "eps_L_fixed": 2.01, "eps_simple": 1.0}
  text = "\n".join(P.table2_conclusions(_results(fds), "FD_x"))
  assert text.count("**holds**") == 5 and "does NOT hold" not in text
  fds["eps_simple"] = 3.0          # no longer the best
  lines = P.table2_conclusions(_results(fds), "FD_x")
  assert "**does NOT hold**" in lines[0]
  fds["eps_L_fixed"] = 2.5         # now eps and mu with L fixed differ by far more than 2 s.d.
  lines = P.table2_conclusions(_results(fds), "FD_x")
  assert "**does NOT hold**" in lines[4]
  # Diverged learned-variance runs count as worse than their fixed counterpart.
  res = _results(fds, {"eps_L_learned": "unstable: non-finite loss"})
  res["eps_L_learned"]["fd"] = None
  assert "**holds**" in P.table2_conclusions(res, "FD_x")[1]
  # Runs left out: nothing can be checked about them.
  res = _results(fds, {"mean_L_learned": P.NOT_RUN})
  lines = P.table2_conclusions(res, "FD_x")
  missing = "**not resolved** (a run it needs was not run)"
  assert missing in lines[0] and missing in lines[2]


def test_run_state_and_bad_inputs():
  class D:
    num_levels = 17
  assert P.run_state({"state": "diverged", "message": "non-finite loss nan at step 7; kept"},
                     None, D()) == "unstable: non-finite loss nan at step 7"
  worse = {"summary": {"total_bpd": math.log2(17) + 0.01}}
  assert P.run_state({"state": "trained"}, worse, D()).startswith(
      "stable (bound worse than the uniform code")
  exploded = {"summary": {"total_bpd": 10 * math.log2(17) + 0.01}}
  assert P.run_state({"state": "trained"}, exploded, D()).startswith("unstable: bound")
  assert P.run_state({"state": "trained"}, {"summary": {"total_bpd": float("nan")}},
                     D()).startswith("unstable: bound")
  ok = {"summary": {"total_bpd": 1.0}}
  assert P.run_state({"state": "trained"}, ok, D()) == "stable"
  assert P.run_state({"state": "trained"}, ok, D(), {"nonfinite_fraction": 0.5}).startswith(
      "unstable")
  assert P.run_state({"state": "not run"}, None, D()) == P.NOT_RUN
  with pytest.raises(ValueError, match="--table must be one of"):
    P.tables_to_write("table3")
  from configs.paper import ddpm_digits
  config = ddpm_digits.get_config()
  config.paper.fixed_var_type = "learned"
  with pytest.raises(ValueError, match="paper.fixed_var_type"):
    P.validate_paper_config(config)
  with pytest.raises(ValueError, match="must be one of"):
    ddpm_digits.get_config("gpu")
  full = ddpm_digits.get_config("full")
  assert full.data.dataset == "cifar10" and full.training.num_steps == 800000
  # Each run changes only the mean, loss and variance types of the base config.
  cfg = P.run_config(ddpm_digits.get_config(), P.RUNS_BY_NAME["mean_L_learned"])
  assert (cfg.diffusion.mean_type, cfg.diffusion.loss_type, cfg.diffusion.var_type) == \
      ("mean", "kl", "learned")
  assert "paper" not in cfg


# ---------------------------------------------------------------------------------------------
# Smoke run of the script.

TINY = ["--config.training.num_steps=3", "--config.training.steps_per_log=1",
        "--config.training.steps_per_save=3", "--config.training.batch_size=16",
        "--config.model.ch=8", "--config.model.ch_mult=(1,)",
        "--config.model.attn_resolutions=()", "--config.model.num_groups=4",
        "--config.diffusion.num_timesteps=10", "--config.diffusion.t_chunk_size=10",
        "--config.optimizer.warmup_steps=1", "--config.eval.num_examples=20",
        "--config.eval.batch_size=20", "--config.paper.classifier.epochs=1",
        "--config.paper.classifier.channels=8", "--config.paper.classifier.features=8",
        "--config.paper.fd_bootstrap=3"]
# One run (eps + L_simple: it feeds all three tables); the other rows say 'not run'. Each run
# costs ~30 s of CPU, nearly all compilation (init, train step, bound, sampler).
RUNS = ["--runs=eps_simple"]


def _run(tmp, *flags):
  cmd = [sys.executable, "-m", "experiments.ddpm_paper", f"--workdir_root={tmp}/w",
         f"--results_dir={tmp}/r", *flags, *TINY, *RUNS]
  proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900,
                        env=fast_compile_env())
  assert proc.returncode == 0, proc.stderr[-3000:]
  return proc


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("ddpm_paper")
  _run(tmp, "--table=all")
  return tmp


def _head_ok(text, table):
  assert text.startswith(f"# DDPM (Ho et al. 2020) {table}")
  assert "python -m experiments.ddpm_paper" in text and "--table=" in text
  assert "Machine:" in text and re.search(r"Wall time: [0-9.]+ min", text)
  assert "T = 10" in text and "3 steps at batch 16" in text   # the scale we ran at


def _finite(cell):
  v = float(cell)
  assert math.isfinite(v), cell
  return v


def test_smoke_table2(smoke):
  text = (smoke / "r" / "ddpm_table2.md").read_text()
  _head_ok(text, "Table 2")
  rows = table_rows(text, "Objective (Ho et al. Table 2 row)")
  assert [r[0] for r in rows] == [r.objective for r in P.RUNS]
  for run, row in zip(P.RUNS, rows):
    assert row[2] == (f"{run.paper_fid:.2f}" if run.paper_fid else "— (unstable)")
    if run.name == "eps_simple":
      assert row[4].startswith(("stable", "unstable"))
      _finite(row[5])
      fd, sd = row[6].split(" ± ")
      assert _finite(fd) >= -1e-9 and _finite(sd) >= 0
      assert row[7] == "not computed¹"
      _finite(row[8])
    else:
      assert row[4] == P.NOT_RUN and row[5] == "—" and row[6] == "—"
  assert "FD_digits-classifier" in text and "FID (Inception) could not be computed here" in text
  assert "Does the paper's conclusion hold" in text
  png = (smoke / "r" / "ddpm_table2.png").read_bytes()
  assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_smoke_table1_and_reuse(smoke):
  path = smoke / "r" / "ddpm_table1.md"
  text = path.read_text()
  _head_ok(text, "Table 1")
  rows = table_rows(text, "Objective")
  assert [r[1] for r in rows] == ["≤ 3.70 (3.69)", "≤ 3.75 (3.72)"]
  assert rows[0][2] == P.NOT_RUN   # eps + L fixed was left out by --runs
  test, train = map(_finite, re.fullmatch(r"≤ (\S+) \((\S+)\)", rows[1][2]).groups())
  assert _finite(rows[1][3]) == pytest.approx(test - train, abs=2e-4)
  assert "was not run (--runs)" in text
  # Rerunning reuses the trained runs: no new training step, no new checkpoint.
  metrics = smoke / "w" / "digits" / "eps_simple" / "metrics.jsonl"
  before = metrics.read_text()
  _run(smoke, "--table=table1")
  assert metrics.read_text() == before
  assert "reused from an earlier invocation (not retrained): eps_simple." in path.read_text()


def test_smoke_table4(smoke):
  text = (smoke / "r" / "ddpm_table4.md").read_text()
  _head_ok(text, "Table 4")
  rows = table_rows(text, "Paper: reverse step (T = 1000)")
  assert [int(r[0]) for r in rows] == list(range(1000, 0, -100))
  assert [int(r[3]) for r in rows] == list(range(10, 0, -1))   # the same fractions of T = 10
  rates = [_finite(r[4]) for r in rows]
  assert all(a >= b - 1e-5 for a, b in zip(rates, rates[1:]))  # cumulative: KL terms are >= 0
  for r in rows:
    assert _finite(r[5]) >= 0 and _finite(r[6]) == pytest.approx(_finite(r[5]) * 255 / 16,
                                                                   abs=2e-3)
  split = {r[0]: r for r in table_rows(text, "")}
  rate = _finite(split["rate = L_T + ... + L_1 (bits/dim)"][2])
  dist = _finite(split["distortion = L_0 (bits/dim)"][2])
  total = _finite(split["total = rate + distortion (bits/dim)"][2])
  assert rate + dist == pytest.approx(total, abs=2e-4)
  assert split["rate = L_T + ... + L_1 (bits/dim)"][1] == "1.78"
  png = (smoke / "r" / "ddpm_table4.png").read_bytes()
  assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_smoke_render_only(smoke, tmp_path):
  """Rendering is a separate step: every table and figure is redrawn, identically, from the saved
  ddpm_<table>.json alone (no run directories: the runs are not even looked up)."""
  import shutil
  res = tmp_path / "r"
  shutil.copytree(smoke / "r", res)
  before = {t: (res / f"ddpm_{t}.md").read_text() for t in ("table1", "table2", "table4")}
  for f in res.glob("ddpm_table*.[mp][dn]*"):
    f.unlink()
  proc = subprocess.run([sys.executable, "-m", "experiments.ddpm_paper", "--render_only",
                         "--table=all", f"--results_dir={res}", f"--workdir_root={tmp_path}/none"],
                        cwd=REPO, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  # table1 was last rendered by the reuse test's --table=table1 run; each JSON holds its own.
  for t, text in before.items():
    assert (res / f"ddpm_{t}.md").read_text() == text
  for t in ("table2", "table4"):
    assert (res / f"ddpm_{t}.png").read_bytes()[:4] == b"\x89PNG"
  assert not (tmp_path / "none").exists()
