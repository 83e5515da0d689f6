"""Benchmark scripts run in their --quick form and print well-formed JSON lines (no timing
assertions: speed is measured by running the scripts, not by tests)."""
import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run_quick(module, *args):
  env = dict(os.environ, XLA_FLAGS="", PYTHONPATH=REPO)
  out = subprocess.run([sys.executable, "-m", module, "--quick", *args], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=900)
  assert out.returncode == 0, out.stderr[-3000:]
  return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]


def test_bench_bound_quick_prints_json_lines():
  rows = _run_quick("experiments.bench_bound")
  cases = [r for r in rows if r.get("bench") != "matmul_peak"]
  assert cases, rows
  for r in cases:
    for key in ("bench", "case", "batch", "median_s", "images_per_s", "jax", "jaxlib",
                "XLA_FLAGS", "machine", "command"):
      assert key in r, key
    assert r["median_s"] > 0 and r["images_per_s"] > 0
