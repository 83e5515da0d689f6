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


def test_bench_bound_quick_prints_json_lines(tmp_path):
  rows = _run_quick("experiments.bench_bound", f"--output={tmp_path / 'bench_bound.md'}")
  cases = [r for r in rows if r.get("bench") != "matmul_peak"]
  assert cases, rows
  for r in cases:
    for key in ("bench", "case", "batch", "median_s", "images_per_s", "jax", "jaxlib",
                "XLA_FLAGS", "machine", "command"):
      assert key in r, key
    assert r["median_s"] > 0 and r["images_per_s"] > 0
  # The report keeps one section per CPU model: another CPU's rows survive this CPU's run.
  from experiments import bench_bound, common
  with open(tmp_path / "bench_bound.jsonl") as f:
    saved = [json.loads(line) for line in f]
  assert sum(r["bench"] == "bound_run" for r in saved) == 1
  here, malloc = common.cpu_and_allocator(saved[0])
  assert malloc in ("system", "tcmalloc")
  assert f"## {here}, {malloc}, measured " in (tmp_path / "bench_bound.md").read_text()
  other = [dict(r, machine=dict(r["machine"], cpu="Other CPU")) for r in saved]
  merged = common.merge_rows_by_cpu(str(tmp_path / "bench_bound.jsonl"), other)
  merged = common.merge_rows_by_cpu(str(tmp_path / "bench_bound.jsonl"), saved)
  assert len(merged) == 2 * len(saved)
  text = bench_bound.render(merged)
  assert text.index("## Other CPU (") < text.index(f"## {here}")
  sections = text.split("\n## ")[1:]
  assert len(sections) == 2
  assert sections[0].count("| calc_bpd, chunk") == sections[1].count("| calc_bpd, chunk") > 0
  # A run on another allocator of the same CPU keeps this one's section (one per allocator).
  other_malloc = [dict(r, malloc="preload:x") for r in saved]
  merged = common.merge_rows_by_cpu(str(tmp_path / "bench_bound.jsonl"), other_malloc)
  text = bench_bound.render(merged)
  assert f"## {here}, {malloc}, measured " in text and f"## {here}, preload:x, measured " in text


def test_every_experiment_module_imports_in_one_process():
  """Scripts define their absl flags only when run, so that tests (and users) may import any
  two of them in one process: absl raises DuplicateFlagError for a flag defined twice."""
  code = ("import glob, importlib, os\n"
          "from absl import flags\n"
          "names = sorted(os.path.basename(p)[:-3] for p in glob.glob('experiments/*.py'))\n"
          "for n in names:\n"
          "  if n != '__init__': importlib.import_module('experiments.' + n)\n"
          "print(len(names), sorted(flags.FLAGS))\n")
  env = dict(os.environ, PYTHONPATH=REPO)
  out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  count, defined = out.stdout.split(" ", 1)
  assert int(count) > 20
  assert "'quick'" not in defined and "'output'" not in defined, defined
