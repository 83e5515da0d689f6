"""experiments/bench_likelihood.py in its --quick form prints well-formed JSON lines and, with
--output, a Markdown table; without NumPyro it still times vdm and says why; a case from another
script runs through `subprocess_case` and `generic_table` (format only: no timing assertions).
"""
import json
import math
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROVENANCE = ("bench", "case", "batch", "impl", "median_s", "items_per_s", "status", "jax",
              "jaxlib", "XLA_FLAGS", "machine", "command")


# The bench as a case of itself through subprocess_case (as a script with absl flags of its own,
# e.g. experiments.bench_ode, would be added), its rows printed and put in a generic_table.
VIA_SUBPROCESS = """
import json
from experiments import bench_likelihood as B
rows = B.subprocess_case("experiments.bench_likelihood", ["--cases=iwae"])(True)
for r in rows:
  print(json.dumps(r))
print(B.generic_table(rows))
"""


def _start(*args, pythonpath=(), code=None):
  env = dict(os.environ, XLA_FLAGS="",
             PYTHONPATH=os.pathsep.join([*pythonpath, REPO]))
  cmd = ["-c", code] if code else ["-m", "experiments.bench_likelihood", *args]
  return subprocess.Popen([sys.executable, *cmd], cwd=REPO, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)


def _finish(proc, timeout=300):
  out, err = proc.communicate(timeout=timeout)
  return proc.returncode, [json.loads(l) for l in out.splitlines() if l.startswith("{")], out, err


def _check_rows(rows):
  assert [r["impl"] for r in rows] == ["vdm", "numpyro"], rows
  for r in rows:
    for key in PROVENANCE:
      assert key in r, key
    assert r["bench"] == "likelihood" and r["case"].startswith("iwae_sbn_")
    assert r["batch"] == 4 and r["num_samples"] == 50
    assert isinstance(r["machine"], dict) and "cpu" in r["machine"]
    assert "--quick" in r["command"]
  vdm = rows[0]
  assert vdm["status"] == "ok" and vdm["median_s"] > 0 and vdm["items_per_s"] > 0
  assert math.isfinite(vdm["value_mean"]) and vdm["value_se"] >= 0
  assert vdm["exact_elbo_sum"] <= vdm["exact_log_px_sum"]
  assert 1 <= vdm["mean_ess"] <= 50 and vdm["rng_floor_median_s"] > 0


def test_quick_run_with_numpyro_and_without(tmp_path):
  # NumPyro made unimportable by a package of that name that raises on import.
  fake = tmp_path / "fake" / "numpyro"
  fake.mkdir(parents=True)
  (fake / "__init__.py").write_text("raise ImportError('hidden for this test')\n")
  report = tmp_path / "bench_likelihood.md"
  both = _start("--quick", "--cases=iwae", f"--output={report}")
  alone = _start(pythonpath=[str(tmp_path / "fake")], code=VIA_SUBPROCESS)
  rc, rows, _, err = _finish(both)
  assert rc == 0, err[-3000:]
  _check_rows(rows)
  numpyro = rows[1]
  assert numpyro["status"] == "ok" and numpyro["median_s"] > 0
  for r in rows:
    assert r["vdm_speedup"] > 0 and math.isfinite(r["agree_z"]) and isinstance(r["agree"], bool)
  text = report.read_text()
  assert "python -m experiments.bench_likelihood --quick" in text
  assert rows[0]["machine"]["cpu"] in text and "| vdm |" in text and "| numpyro |" in text

  rc, rows, out, err = _finish(alone)
  assert rc == 0, err[-3000:]
  _check_rows(rows)
  numpyro = rows[1]
  assert "numpyro not importable" in numpyro["status"], numpyro["status"]
  assert numpyro["median_s"] is None and "vdm_speedup" not in numpyro
  assert "| case | impl |" in out and f"| {rows[0]['case']} | vdm | 4 |" in out
  assert "numpyro not importable" in out.split("| case | impl |")[1]


def test_unknown_case_is_an_error_naming_the_flag():
  rc, _, out, err = _finish(_start("--quick", "--cases=iwae,nope"), timeout=120)
  assert rc != 0 and "--cases" in err and "nope" in err, err[-2000:]
