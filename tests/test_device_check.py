"""experiments/device_check.py (the accelerator check) on CPU with --quick: the script runs as a
user types it and writes every figure; bfloat16 activations give the float32 training loss to
within 1% (the network's output within 5%) on generic
weights; the bound does not depend on the timestep chunk size."""
import json
import math
import os
import subprocess
import sys

from md_tables import table_rows
from subprocess_env import fast_compile_env

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_quick_device_check_writes_every_figure(tmp_path):
  out = tmp_path / "device_check.md"
  proc = subprocess.run([sys.executable, "-m", "experiments.device_check", "--quick",
                         f"--output={out}"], cwd=REPO, capture_output=True, text=True,
                        timeout=600, env=fast_compile_env())
  assert proc.returncode == 0, proc.stderr[-3000:]
  rows = [json.loads(l) for l in proc.stdout.splitlines() if l.startswith('{"bench"')]
  saved = [json.loads(l) for l in (tmp_path / "device_check.jsonl").read_text().splitlines()]
  assert [r["part"] for r in saved] == [r["part"] for r in rows] == [
      "train_step", "train_step", "dtype_agreement", "substeps", "calc_bpd", "calc_bpd"]
  steps = [r for r in rows if r["part"] in ("train_step", "substeps")]
  assert [(r["dtype"], r["substeps"]) for r in steps] == [
      ("float32", 1), ("bfloat16", 1), ("float32", 2)]
  for r in steps:
    assert r["all_finite"] and r["steps_per_s"] > 0 and r["tflop_per_s"] > 0
    assert r["images_per_s"] == r["steps_per_s"] * r["batch"]
  # The same initial parameters and batch: the first step's loss does not depend on substeps.
  assert steps[0]["first_loss"] == steps[2]["first_loss"]
  agree = rows[2]
  # bf16 differs from f32, but only a little: the loss within 1%, the output within 5%.
  assert 0 < agree["relative_difference"] < 1e-2, agree
  assert 0 < agree["output_relative_difference"] < 5e-2, agree
  bounds = [r for r in rows if r["part"] == "calc_bpd"]
  assert [r["t_chunk_size"] for r in bounds] == [5, 10]
  assert all(r["finite"] and r["seconds_per_image"] > 0 and r["tflop_per_s"] > 0
             for r in bounds)
  # Chunking the timesteps is a layout choice: the bound is the same to float32 rounding.
  assert math.isclose(bounds[0]["total_bpd"], bounds[1]["total_bpd"], rel_tol=1e-5)
  text = out.read_text()
  assert text.startswith("# Device check") and "jax " in text and "Backend: cpu" in text
  train_table = table_rows(text, "dtype")
  assert [r[:2] for r in train_table] == [["float32", "1"], ["bfloat16", "1"], ["float32", "2"]]
  assert len(table_rows(text, "t_chunk_size")) == 2
