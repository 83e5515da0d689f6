"""experiments.compression end to end at toy size (its claims must hold even there), and
experiments.bench_compression --quick's JSON lines (fields only: speed is measured by running
the script, not by tests)."""
import json
import os
import subprocess
import sys

import ml_collections
import numpy as np

from experiments import compression
from train_configs import tiny_digits_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config():
  config = tiny_digits_config("ddpm")
  config.coding.num_examples, config.coding.batch_size, config.coding.bound_draws = 10, 5, 2
  x = config.experiment = ml_collections.ConfigDict()
  x.ddpm_repeats = 2
  x.models = ("bernoulli_mixture", "sbn")
  x.num_latents, x.fit_examples, x.fit_steps = 4, 100, 10
  x.fit_learning_rate, x.model_batch_size = 0.05, 64
  return config


def test_experiment_rows_claims_and_rendering(tmp_path):
  config = _config()
  results = {"machine": {}, "command": "test", "seconds": 1.0,
             "config": dict(config.experiment.items())}
  results["enumerable"] = compression.enumerable_rows(config)
  results["ddpm"] = compression.ddpm_results(config, str(tmp_path / "run"))
  rows = results["enumerable"]
  assert [(r["model"], r["posterior"]) for r in rows] == [
      ("bernoulli_mixture", "exact"), ("bernoulli_mixture", "encoder"), ("sbn", "exact"),
      ("sbn", "encoder")]
  for r in rows:
    assert r["round_trip"] and r["num_examples"] == 297
    if r["posterior"] == "exact":   # exact -log2 p(x), by enumeration, is the ideal codelength
      assert abs(r["ideal_bits"] - r["target_bits"]) < 1e-3 * r["target_bits"]
      assert r["target_bits"] == r["exact_bits"]
    else:                           # -ELBO >= -log2 p(x)
      assert r["target_bits"] >= r["exact_bits"] - 1e-9
  d = results["ddpm"]
  assert d["repeats"] == 2 and len(d["rates_bpd"]) == 2 and d["num_examples"] == 10
  assert d["rate_bpd"] == np.mean(d["rates_bpd"]) and d["first"]["round_trip"] == "verified"
  verdicts = {c[0]: c[1] for c in compression.claims(results)}
  assert verdicts["every round trip is exact"] == "holds"
  assert verdicts["exact posterior: the rate is -log2 p(x) (up to the coder's rounding)"] == "holds"
  assert all(v in ("holds", "does NOT hold", "not resolved") for v in verdicts.values())
  text = compression.render(json.loads(json.dumps(results)))
  assert "| sbn | exact | -log2 p(x) |" in text and "2.65 | 2.72 | +2.6%" in text
  assert f"{d['rate_bpd']:.4f}" in text


def test_bench_compression_quick_prints_json_lines():
  env = dict(os.environ, XLA_FLAGS="", PYTHONPATH=REPO)
  out = subprocess.run([sys.executable, "-m", "experiments.bench_compression", "--quick"],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  rows = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
  assert [r["impl"] for r in rows] == ["calc_bpd", "encode", "decode"]
  for r in rows:
    for key in ("bench", "case", "batch", "median_s", "images_per_s", "ratio", "rate_bpd",
                "bound_bpd", "jax", "jaxlib", "XLA_FLAGS", "machine", "command"):
      assert key in r, key
    assert r["bench"] == "compression" and r["batch"] == 8 and r["median_s"] > 0
    assert r["ratio"] == r["median_s"] / rows[0]["median_s"]
