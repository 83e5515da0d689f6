"""experiments.bench_ode runs in its --quick form and prints well-formed JSON lines (fields
only: speed is measured by running the script, not by tests)."""
import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

FIELDS = ("bench", "case", "batch", "impl", "median_s", "items_per_s", "nfe", "scipy_median_s",
          "scipy_items_per_s", "scipy_nfe", "ratio", "per_nfe_ratio", "bpd_mean",
          "scipy_bpd_mean", "jax", "jaxlib", "XLA_FLAGS", "machine", "command")


def test_bench_ode_quick_prints_json_lines():
  env = dict(os.environ, XLA_FLAGS="", PYTHONPATH=REPO)
  out = subprocess.run([sys.executable, "-m", "experiments.bench_ode", "--quick"], cwd=REPO,
                       env=env, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  rows = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
  assert {r["impl"] for r in rows} == {"vdm_dopri5_batch", "vdm_dopri5_per_example"}, rows
  for r in rows:
    for key in FIELDS:
      assert key in r, key
    assert r["bench"] == "ode_likelihood" and r["batch"] == 4
    assert r["median_s"] > 0 and r["items_per_s"] > 0 and r["scipy_median_s"] > 0
    assert isinstance(r["nfe"], int) and r["nfe"] > 0 and r["scipy_nfe"] > 0
    assert r["ratio"] == r["scipy_median_s"] / r["median_s"]
