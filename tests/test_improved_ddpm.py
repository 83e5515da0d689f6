"""Tests of experiments/improved_ddpm.py (Nichol & Dhariwal 2021, L_simple / L_hybrid / L_vlb x
linear / cosine).

- A smoke test runs `python -m experiments.improved_ddpm` exactly as a user types it (in a
  subprocess from the repo root) with a tiny config (8-channel one-level U-Net, T = 10, 6 steps,
  12 test images) for ONE run (cosine L_vlb with importance-sampled timesteps: the learned
  variance and the importance sampler), checks the written table's structure, that its numbers
  are finite and agree with the run's bound file, and that a rerun reuses the finished run.
  (Every run compiles its own U-Net train and eval steps, ~20 CPU-seconds even this small, so
  all seven runs would not fit a test's budget.)
- The report of the full table (all seven runs) is checked by running the script over finished
  run directories made by the test with known bound terms and loss curves: the script reuses
  them (no training), and every number of the table, the verdicts on the paper's orderings and
  the loss-noise statistics are compared with values the test computes itself.
- Config plumbing: per-run settings, improved-diffusion's linear-schedule rescaling, the
  full-scale (CIFAR-10) config, --config overrides on it, and the --runs check.

None of these tests checks the scientific result (that is the experiment's job).
"""
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from md_tables import table  # noqa: E402
from subprocess_env import fast_compile_env  # noqa: E402
from experiments import improved_ddpm as E  # noqa: E402  (no flags defined at import)
from experiments import runs  # noqa: E402

ALL_RUNS = ["linear_simple", "linear_hybrid", "linear_vlb", "cosine_simple", "cosine_hybrid",
            "cosine_vlb", "cosine_vlb_uniform"]
TINY_FLAGS = ["--config.model.ch=8", "--config.model.num_groups=4",
              "--config.model.ch_mult=(1,)", "--config.model.attn_resolutions=()",
              "--config.diffusion.num_timesteps=10", "--config.diffusion.t_chunk_size=10",
              "--config.training.num_steps=6", "--config.training.batch_size=8",
              "--config.training.steps_per_log=1", "--config.training.steps_per_eval=6",
              "--config.training.steps_per_save=6", "--config.optimizer.warmup_steps=0",
              "--config.eval.num_examples=12", "--config.eval.batch_size=12"]


def tiny_base():
  """The CPU base config with TINY_FLAGS applied (as the script applies them)."""
  from configs.paper import improved_ddpm_digits
  c = improved_ddpm_digits.get_config()
  c.model.ch, c.model.num_groups, c.model.ch_mult, c.model.attn_resolutions = 8, 4, (1,), ()
  c.diffusion.num_timesteps, c.diffusion.t_chunk_size = 10, 10
  t = c.training
  t.num_steps, t.batch_size, t.steps_per_log, t.steps_per_eval, t.steps_per_save = 6, 8, 1, 6, 6
  c.optimizer.warmup_steps = 0
  c.eval.num_examples, c.eval.batch_size = 12, 12
  return c


def run_script(*flags, timeout=600):
  proc = subprocess.run([sys.executable, "-m", "experiments.improved_ddpm", *flags], cwd=REPO,
                        capture_output=True, text=True, timeout=timeout,
                        env=fast_compile_env())
  assert proc.returncode == 0, proc.stderr[-4000:]
  return proc



def as_dict(headers, row):
  return dict(zip(headers, row))


NLL = "ours: NLL bound (bits/dim)"


# ------------------------------------------------------------------------------------------

def test_smoke_one_real_run_and_reuse(tmp_path):
  out = tmp_path / "improved_ddpm.md"
  flags = ["--runs=cosine_vlb", "--novlb_uniform", f"--workdir_root={tmp_path / 'w'}",
           f"--results_dir={tmp_path}", *TINY_FLAGS]
  run_script(*flags)
  text = out.read_text()
  assert text.startswith("# Improved DDPM")
  assert "python -m experiments.improved_ddpm " + " ".join(flags[:4]) in text
  assert "Machine: " in text and "Wall time: " in text
  assert "T = 10; 6 steps at batch 8" in text
  headers, rows = table(text, "schedule")
  assert len(rows) == 1 and len(rows[0]) == len(headers) == 12
  r = as_dict(headers, rows[0])
  assert (r["schedule"], r["objective"], r["variance"], r["t sampler"]) == (
      "cosine", "L_vlb", "learned_range", "importance")
  assert r["status"] == "ok"
  total, prior, dec, rest = (float(r[k]) for k in (NLL, "L_T prior", "L_0 decoder",
                                                   "sum L_t, t>=1"))
  assert all(math.isfinite(v) for v in (total, prior, dec, rest))
  assert total > 0 and prior >= 0 and dec >= 0 and rest >= 0
  assert abs(total - (prior + dec + rest)) < 2e-4 * max(1.0, total)
  assert (r["paper CIFAR-10 (T=4K)"], r["paper ImageNet64 (200K it, T=4K)"]) == ("2.94", "3.57")
  # The table's number is the run's final bound on the test images.
  workdir = tmp_path / "w" / f"cosine_vlb-{runs.fingerprint(E.run_config(tiny_base(), 'cosine_vlb', False))}"
  bound = json.loads((workdir / "eval" / "bound_6.json").read_text())
  assert len(bound["terms"]["vb"]) == 10
  assert float(r[NLL]) == pytest.approx(bound["summary"]["total_bpd"], abs=1e-4)
  assert (workdir / "checkpoints").is_dir()
  # The other runs are missing, so no ordering can be judged.
  _, claims = table(text, "claim (paper: holds)")
  assert len(claims) == 7 and all(c[1].startswith("not resolved") for c in claims)
  png = out.with_suffix(".png").read_bytes()
  assert png[:8] == b"\x89PNG\r\n\x1a\n"

  # A rerun reuses the finished run: same number, marked reused, no new training.
  metrics_before = (workdir / "metrics.jsonl").read_text()
  run_script(*flags)
  headers2, rows2 = table(out.read_text(), "schedule")
  r2 = as_dict(headers2, rows2[0])
  assert r2["status"] == "ok (reused)" and r2[NLL] == r[NLL]
  assert (workdir / "metrics.jsonl").read_text() == metrics_before


# ------------------------------------------------------------------------------------------

def fake_finished_runs(root, base, totals, losses, diverged=()):
  """Finished run directories with known bound terms and training losses.

  totals: run -> total bits/dim; losses: run -> per-step training loss [num_steps].
  Returns run -> dict(vb, prior, workdir, seconds).
  """
  rng = np.random.default_rng(0)
  T, N = base.diffusion.num_timesteps, base.training.num_steps
  made = {}
  for i, run in enumerate(ALL_RUNS):
    config = E.run_config(base, run, False)
    # The layout and record of the script before experiments.runs: migrated on first use.
    workdir = runs.legacy_dir(root, run, config)
    os.makedirs(os.path.join(workdir, "eval"))
    seconds = 60.0 * (i + 1)
    status = "diverged" if run in diverged else "ok"
    with open(os.path.join(workdir, "run_info.json"), "w") as f:
      json.dump({"run": run, "status": status, "seconds": seconds}, f)
    with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
      for step, loss in enumerate(losses[run], start=1):
        f.write(json.dumps({"step": step, "split": "train", "loss": float(loss)}) + "\n")
    prior = float(rng.uniform(1e-3, 1e-2))
    w = rng.uniform(0.5, 1.5, size=T)
    vb = w / w.sum() * (totals[run] - prior)
    if status == "ok":
      summary = {"total_bpd": prior + vb.sum(), "prior_bpd": prior, "decoder_bpd": vb[0],
                 "diffusion_bpd": vb[1:].sum()}
      quarter = np.minimum(np.arange(T) * 4 // T, 3)
      summary.update({f"vb_q{q}_bpd": vb[quarter == q].sum() for q in range(4)})
      with open(os.path.join(workdir, "eval", f"bound_{N}.json"), "w") as f:
        json.dump({"step": N, "summary": summary, "terms": {"vb": vb.tolist(),
                                                            "prior_bpd": prior}}, f)
    made[run] = dict(vb=vb, prior=prior, workdir=workdir, seconds=seconds, status=status)
  return made


def test_full_table_report_from_finished_runs(tmp_path):
  base = tiny_base()
  base.training.num_steps = 40
  # Orderings chosen so that some of the paper's claims hold and some do not.
  totals = {"linear_simple": 3.40, "linear_hybrid": 3.30, "linear_vlb": 3.50,
            "cosine_simple": 3.20, "cosine_hybrid": 3.35, "cosine_vlb": 3.10,
            "cosine_vlb_uniform": 3.60}
  rng = np.random.default_rng(1)
  losses = {r: rng.normal(3.0, 0.1, size=40) for r in ALL_RUNS}
  losses["cosine_vlb_uniform"] = rng.normal(3.0, 2.0, size=40)
  made = fake_finished_runs(str(tmp_path / "w"), base, totals, losses)
  out = tmp_path / "improved_ddpm.md"
  flags = [f"--workdir_root={tmp_path / 'w'}", f"--results_dir={tmp_path}", *TINY_FLAGS,
           "--config.training.num_steps=40"]
  run_script(*flags, timeout=300)
  text = out.read_text()
  headers, rows = table(text, "schedule")
  assert len(rows) == 7
  seen = []
  for row in rows:
    r = as_dict(headers, row)
    run = f"{r['schedule']}_{r['objective'][2:]}" + ("_uniform" if r["t sampler"] == "uniform"
                                                     and r["objective"] == "L_vlb" else "")
    seen.append(run)
    m = made[run]
    assert r["status"] == "ok (reused)"
    assert float(r[NLL]) == pytest.approx(m["prior"] + m["vb"].sum(), abs=6e-5)
    assert float(r["L_T prior"]) == pytest.approx(m["prior"], abs=6e-5)
    assert float(r["L_0 decoder"]) == pytest.approx(m["vb"][0], abs=6e-5)
    assert float(r["sum L_t, t>=1"]) == pytest.approx(m["vb"][1:].sum(), abs=6e-5)
    assert float(r["run min"]) == pytest.approx(m["seconds"] / 60.0, abs=0.051)
    expected_var = "fixed_large" if run.endswith("simple") else "learned_range"
    expected_sampler = "importance" if run.endswith("_vlb") else "uniform"
    assert (r["variance"], r["t sampler"]) == (expected_var, expected_sampler)
  assert seen == ALL_RUNS
  # The earlier layout (sha1-named directories with run_info.json) was migrated: moved to the
  # fingerprint-named directory with an experiment_run.json of the one schema.
  for run in ALL_RUNS:
    config = E.run_config(base, run, False)
    new = os.path.join(str(tmp_path / "w"), f"{run}-{runs.fingerprint(config)}")
    assert not os.path.exists(made[run]["workdir"]) and os.path.isdir(new)
    status = json.load(open(os.path.join(new, runs.STATUS)))
    assert status["schema"] == runs.SCHEMA and status["state"] == "trained"
    assert status["fingerprint"] == runs.fingerprint(config)
  # Where the bound is paid: per quarter of the timesteps, summing to the total.
  qh, qrows = table(text, "cell")
  assert [r[0] for r in qrows] == ALL_RUNS
  for r in qrows:
    m = made[r[0]]
    quarters = [m["vb"][:3].sum(), m["vb"][3:5].sum(), m["vb"][5:8].sum(), m["vb"][8:].sum()]
    np.testing.assert_allclose([float(v) for v in r[1:5]], quarters, atol=6e-5)
    assert float(r[5]) == pytest.approx(m["vb"][-1], abs=6e-5)
    assert float(r[6]) == pytest.approx(m["prior"], abs=6e-5)
    assert float(r[7]) == pytest.approx(sum(quarters) + m["prior"], abs=6e-5)
    assert float(r[8]) == pytest.approx(sum(quarters) + m["prior"] - m["vb"][-1], abs=1e-4)
  paper = {as_dict(headers, row)["schedule"] + as_dict(headers, row)["objective"]:
           as_dict(headers, row)["paper CIFAR-10 (T=4K)"] for row in rows[:6]}
  assert paper == {"linearL_simple": "3.37", "linearL_hybrid": "3.26", "linearL_vlb": "n/a",
                   "cosineL_simple": "3.26", "cosineL_hybrid": "3.17", "cosineL_vlb": "2.94"}

  # The paper's orderings, judged independently here from the totals.
  t = totals
  expected = [
      t["linear_vlb"] < min(t["linear_hybrid"], t["linear_simple"]),
      t["cosine_vlb"] < min(t["cosine_hybrid"], t["cosine_simple"]),
      t["linear_hybrid"] < t["linear_simple"], t["cosine_hybrid"] < t["cosine_simple"],
      t["cosine_simple"] < t["linear_simple"], t["cosine_hybrid"] < t["linear_hybrid"],
      t["cosine_vlb"] < t["linear_vlb"]]
  _, claims = table(text, "claim (paper: holds)")
  assert [c[1] for c in claims] == ["holds" if e else "does NOT hold" for e in expected]
  assert f"{sum(expected)} of 7 orderings hold here, {7 - sum(expected)} do not" in text

  # The loss-noise comparison: std of the per-batch loss over the second half of training.
  nh, nrows = table(text, "run")
  assert [r[0] for r in nrows] == ["cosine_vlb (importance)", "cosine_vlb_uniform"]
  for r, run in zip(nrows, ["cosine_vlb", "cosine_vlb_uniform"]):
    half = losses[run][20:]
    d = as_dict(nh, r)
    assert int(d["batches"]) == 20
    assert float(d["mean loss"]) == pytest.approx(half.mean(), abs=6e-4)
    assert float(d["std of per-batch loss"]) == pytest.approx(half.std(ddof=1), abs=6e-4)
    assert float(d["successive-diff std"]) == pytest.approx(
        math.sqrt(sum((b - a) ** 2 for a, b in zip(half[:-1], half[1:])) / 19 / 2), abs=6e-4)
  assert "than importance-sampled: **yes**" in text
  assert out.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"
  # Rendering is a separate step: --render_only redraws the same Markdown from the saved JSON
  # (no run directory needed).
  saved = json.loads((tmp_path / "improved_ddpm.json").read_text())
  assert sorted(saved["records"]) == sorted(ALL_RUNS)
  out.unlink()
  (tmp_path / "improved_ddpm.png").unlink()
  run_script(f"--results_dir={tmp_path}", "--render_only", f"--workdir_root={tmp_path / 'none'}",
             timeout=300)
  assert out.read_text() == text and not (tmp_path / "none").exists()
  assert (tmp_path / "improved_ddpm.png").read_bytes()[:4] == b"\x89PNG"


def test_diverged_run_is_reported_and_orderings_left_open(tmp_path):
  base = tiny_base()
  base.training.num_steps = 40
  totals = {r: 3.0 + 0.1 * i for i, r in enumerate(ALL_RUNS)}
  losses = {r: np.linspace(4.0, 3.0, 40) for r in ALL_RUNS}
  fake_finished_runs(str(tmp_path / "w"), base, totals, losses, diverged=("cosine_vlb",))
  out = tmp_path / "improved_ddpm.md"
  run_script(f"--workdir_root={tmp_path / 'w'}", f"--results_dir={tmp_path}", *TINY_FLAGS,
             "--config.training.num_steps=40", "--novlb_uniform", timeout=300)
  text = out.read_text()
  headers, rows = table(text, "schedule")
  assert len(rows) == 6
  r = as_dict(headers, rows[5])
  assert (r["schedule"], r["objective"], r["status"], r[NLL]) == (
      "cosine", "L_vlb", "diverged (reused)", "nan")
  _, claims = table(text, "claim (paper: holds)")
  verdicts = dict((c[0], c[1]) for c in claims)
  assert verdicts["cosine: L_vlb (importance-sampled) gives the best NLL"].startswith("not resolved")
  assert verdicts["L_vlb: cosine beats linear in NLL"].startswith("not resolved")
  # linear_simple 3.0 < linear_hybrid 3.1: L_hybrid does not beat L_simple.
  assert verdicts["linear: L_hybrid beats L_simple in NLL"] == "does NOT hold"


# ------------------------------------------------------------------------------------------

def test_run_configs_set_only_schedule_and_objective():
  base = tiny_base()
  expected = {"simple": ("mse", "fixed_large", "uniform"),
              "hybrid": ("hybrid", "learned_range", "uniform"),
              "vlb": ("kl", "learned_range", "importance")}
  hashes = set()
  for run in E.RUNS:
    schedule, objective = run.split("_")
    c = E.run_config(base, run, False)
    d = c.diffusion
    assert (d.loss_type, d.var_type, d.timestep_sampler) == expected[objective]
    assert d.beta_schedule == schedule and d.hybrid_lambda == 0.001
    # Nothing else changes (T <= 1000: the linear endpoints are kept).
    other = c.to_dict()
    for k in ("beta_schedule", "loss_type", "var_type", "timestep_sampler"):
      other["diffusion"].pop(k)
    ref = base.to_dict()
    for k in ("beta_schedule", "loss_type", "var_type", "timestep_sampler"):
      ref["diffusion"].pop(k)
    assert other == ref
    hashes.add(runs.fingerprint(c))
  hashes.add(runs.fingerprint(E.run_config(base, E.VLB_UNIFORM, False)))
  assert len(hashes) == 7
  with pytest.raises(ValueError, match="run must be one of"):
    E.run_config(base, "cosine_l2", False)


def test_full_scale_config_matches_the_paper_cifar10_settings():
  from vdm.diffusion.schedules import get_beta_schedule
  c = E.full_scale_config()
  assert c.data.dataset == "cifar10" and c.diffusion.num_timesteps == 4000
  assert (c.model.ch, tuple(c.model.ch_mult), c.model.num_res_blocks) == (128, (1, 2, 2, 2), 3)
  assert tuple(c.model.attn_resolutions) == (16, 8)
  assert (c.optimizer.learning_rate, c.training.batch_size, c.training.num_steps) == (
      1e-4, 128, 500000)
  assert c.optimizer.ema_rate == 0.9999 and c.eval.num_examples == 0
  lin, cos = E.run_config(c, "linear_hybrid", True), E.run_config(c, "cosine_vlb", True)
  assert (lin.model.dropout, cos.model.dropout) == (0.1, 0.3)
  # improved-diffusion's linear schedule at T = 4000: 1e-4 * 1000/T .. 0.02 * 1000/T.
  d = lin.diffusion
  betas = get_beta_schedule("linear", 4000, beta_start=d.beta_start, beta_end=d.beta_end)
  np.testing.assert_allclose(betas[[0, -1]], [2.5e-5, 5e-3], rtol=1e-12)
  assert cos.diffusion.timestep_sampler == "importance" and cos.diffusion.loss_type == "kl"


def test_overrides_reach_the_full_scale_config():
  cpu = tiny_base()
  cpu.data.data_dir = "/data/cifar-10-batches-py"
  argv = ["prog", "--full_scale", "--config.data.data_dir=/data/cifar-10-batches-py",
          "--config.training.num_steps", "6"]
  assert runs.override_keys(argv) == ["data.data_dir", "training.num_steps"]
  full = E.base_config(cpu, True, argv)
  assert full.data.data_dir == "/data/cifar-10-batches-py" and full.training.num_steps == 6
  assert full.data.dataset == "cifar10" and full.model.ch == 128   # not overridden
  same = E.base_config(cpu, False, argv)
  assert same.to_dict() == cpu.to_dict() and same is not cpu


def test_parse_runs_orders_and_rejects():
  assert E.parse_runs(["linear_simple", "cosine_vlb"], True) == [
      "cosine_vlb", "linear_simple", "cosine_vlb_uniform"]
  assert E.parse_runs(list(E.RUNS), False)[0] == "cosine_vlb"
  with pytest.raises(ValueError, match=r"--runs=.*allowed values.*linear_simple"):
    E.parse_runs(["cosine_l2"], False)
  with pytest.raises(ValueError, match="--runs"):
    E.parse_runs([], False)
