"""Smoke tests of the exact-ELBO experiment scripts: each runs as `python -m experiments.<name>`
with tiny flags (exactly the command a user types, in a subprocess from the repo root, so the
scripts' absl flags never meet in one process); the tests check the structure of the written
table and that its numbers are finite and self-consistent, not the scientific result."""
import gzip
import hashlib
import json
import math
import os
import struct
import subprocess
import sys

import numpy as np
import pytest

from md_tables import table_rows  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(module, *flags):
  proc = subprocess.run([sys.executable, "-m", f"experiments.{module}", *flags], cwd=REPO,
                        capture_output=True, text=True, timeout=600)
  return proc


def run_ok(module, *flags):
  proc = run(module, *flags)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return proc


def test_elbo_gap_smoke(tmp_path):
  out = tmp_path / "elbo_gap.md"
  flags = ["--models=bernoulli_mixture,rbm", "--num_examples=12", "--num_steps=3",
           "--em_iters=2", "--num_latents=3", f"--output={out}"]
  run_ok("elbo_gap", *flags)
  text = out.read_text()
  assert text.startswith("# ")
  assert "python -m experiments.elbo_gap " + " ".join(flags) in text
  rows = table_rows(text, "model")
  # bernoulli_mixture: random, trained, trained + exact q, EM; rbm: three rows.
  assert [r[0].split("(")[0] for r in rows] == ["BernoulliMixture"] * 4 + ["RBM"] * 3
  for r in rows:
    log_px, elbo, kl, residual, kl_np, lp_np = map(float, r[3:9])
    assert all(math.isfinite(v) for v in (log_px, elbo, kl, residual, kl_np, lp_np))
    assert elbo <= log_px + 1e-9 and kl >= -1e-12
    assert residual < 1e-9 and kl_np < 1e-9 and lp_np < 1e-9  # float64 by default
    assert r[9] == "yes"
    if r[2] == "exact p(h\\|x)":
      assert kl < 1e-9
  assert "BernoulliMixture" in text.split("non-decreasing")[1]


def test_discrete_diffusion_exact_smoke(tmp_path):
  out = tmp_path / "dd.md"
  run_ok("discrete_diffusion_exact", "--num_vars=1", "--num_categories=3", "--num_steps=2",
         "--train_steps=5", f"--output={out}")
  text = out.read_text()
  rows = table_rows(text, "reverse process")
  assert len(rows) == 3 and rows[2][0].startswith("true reverse process")
  for r in rows:
    neg_elbo, nll, kl, entropy, residual = map(float, r[1:6])
    assert residual < 1e-9                                  # the identities, float64
    assert abs(neg_elbo - nll - kl) < 1e-3 * abs(kl) + 1e-9    # KL printed to 4 digits
    assert neg_elbo >= nll - 1e-12
  assert abs(float(rows[2][3])) < 1e-9                     # Bayes reverse: tight
  proc = run("discrete_diffusion_exact", "--num_vars=4", "--num_categories=4", "--num_steps=4",
             f"--output={out}")
  assert proc.returncode != 0 and "too many to enumerate" in proc.stderr


def test_elbo_derivation_smoke(tmp_path):
  out = tmp_path / "deriv.md"
  flags = ["--num_latents=2", "--data_dim=3", "--seed=1", f"--output={out}"]
  run_ok("elbo_derivation", *flags)
  text = out.read_text()
  assert "python -m experiments.elbo_derivation " + " ".join(flags) in text
  assert len(table_rows(text, "h")) == 4  # 2**2 states
  steps = {int(r[0]): r for r in table_rows(text, "step")}
  assert sorted(steps) == [1, 2, 3, 4, 5, 6]
  value = lambda r: float(r[2].split("=")[-1])
  v = {k: value(r) for k, r in steps.items()}
  assert all(math.isfinite(x) for x in v.values())
  assert abs(v[1] - v[2]) < 1e-9 and abs(v[2] - v[3]) < 1e-9       # equalities
  assert v[4] <= v[1]                                                # Jensen
  assert abs(v[4] - v[5]) < 1e-9 and abs(v[5] - v[6]) < 1e-9
  gap = {r[0]: r[1] for r in table_rows(text, "quantity")}
  assert abs(float(gap["(log p(x) - ELBO) - KL"])) < 1e-9


def _write_idx(path, array):
  codes = {np.dtype(np.uint8): 0x08}
  header = struct.pack(">BBBB", 0, 0, codes[array.dtype], array.ndim)
  header += struct.pack(">" + "I" * array.ndim, *array.shape)
  with gzip.open(path, "wb") as f:
    f.write(header + array.astype(">u1").tobytes())


@pytest.fixture
def fake_mnist(tmp_path):
  """A tiny MNIST-shaped data set in the original IDX .gz format (random pixels)."""
  rng = np.random.default_rng(0)
  d = tmp_path / "mnist"
  d.mkdir()
  for split, n in (("train", 60), ("t10k", 20)):
    _write_idx(d / f"{split}-images-idx3-ubyte.gz",
               rng.integers(0, 256, size=(n, 28, 28)).astype(np.uint8))
    _write_idx(d / f"{split}-labels-idx1-ubyte.gz", rng.integers(0, 10, size=n).astype(np.uint8))
  # Their own digests (vdm.data checks the files against DIR/SHA256SUMS when there is one).
  (d / "SHA256SUMS").write_text("".join(
      f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.name}\n" for p in sorted(d.glob("*.gz"))))
  return d


def test_rbm_exact_smoke(tmp_path, fake_mnist):
  out = tmp_path / "rbm.md"
  flags = [f"--data_dir={fake_mnist}", "--num_hidden=4", "--epochs=1", "--cd_k=1,2",
           "--batch_size=20", "--train_eval_subset=30", "--chunk_size=4", f"--output={out}"]
  run_ok("rbm_exact", *flags)
  text = out.read_text()
  assert "python -m experiments.rbm_exact " + " ".join(flags) in text
  assert "numpy.random.default_rng(0)" in text  # the binarization seed is stated
  rows = table_rows(text, "model")
  assert [r[0] for r in rows] == ["CD1(4)", "CD2(4)"]
  for r in rows:
    log_z, test_lp, train_lp = float(r[1]), float(r[2]), float(r[3])
    assert all(math.isfinite(v) for v in (log_z, test_lp, train_lp))
    assert test_lp < 0 and train_lp < 0  # log-probabilities of binary images
  w0 = table_rows(text.split("closed form.")[1], "model")
  assert len(w0) == 2
  for r in w0:
    assert abs(float(r[1]) - float(r[2])) < 1e-8  # enumeration == closed form at W = 0


def test_rbm_exact_missing_file_names_it(tmp_path):
  proc = run("rbm_exact", f"--data_dir={tmp_path}", "--epochs=1", f"--output={tmp_path}/x.md")
  assert proc.returncode != 0
  assert "train-images-idx3-ubyte.gz" in proc.stderr


def test_bench_elbo_quick(tmp_path):
  md, jsonl = tmp_path / "bench.md", tmp_path / "bench.jsonl"
  proc = run_ok("bench_elbo", "--quick", f"--output={md}", f"--jsonl={jsonl}")
  rows = [json.loads(l) for l in jsonl.read_text().splitlines()]
  printed = [json.loads(l) for l in proc.stdout.splitlines() if l.startswith("{")]
  assert rows == printed
  keys = {"bench", "case", "batch", "median_s", "items_per_s", "gflop_per_s", "peak_mem_mb",
          "jax", "jaxlib", "XLA_FLAGS", "machine", "command", "impl", "status"}
  assert [r["impl"] for r in rows] == ["vdm", "numpyro_bernoulli", "numpyro_categorical"]
  for r in rows:
    assert keys <= set(r), keys - set(r)
    assert r["case"] == "sbn_D64_H8" and r["batch"] == 8
  vdm = rows[0]
  assert vdm["status"] == "ok"
  for k in ("median_s", "items_per_s", "gflop_per_s", "peak_mem_mb"):
    assert math.isfinite(vdm[k]) and vdm[k] > 0
  assert abs(vdm["items_per_s"] * vdm["median_s"] - 8 * 2**8) < 1e-6 * 8 * 2**8
  assert vdm["gap_minus_kl_max"] < 1e-3
  for r in rows[1:]:  # NumPyro ran and agreed, or says why not
    if r["status"] == "ok":
      assert math.isfinite(r["median_s"]) and r["median_s"] > 0
      assert r["log_px_abs_diff_to_vdm"] < 1e-2  # float32 sums of 8 log p(x) of ~ -40 nats
    else:
      assert r["status"].startswith(("failed", "skipped", "numpyro not importable"))
  assert "python -m experiments.bench_elbo --quick" in md.read_text()
