"""--mode=compress and --mode=decompress on tiny trained digits runs (DDPM and VDM): the file
round-trips to the held-out examples, its sizes add up, its rate sits at the bound, and every
damaged or mismatched input is refused with a clear error before any decoding."""
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from train_configs import tiny_digits_config, toy_config
from vdm import reporting, train
from vdm.coding import ans, container

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def ddpm_run(tmp_path_factory):
  work = str(tmp_path_factory.mktemp("compress") / "ddpm")
  config = tiny_digits_config("ddpm")
  train.train_and_evaluate(config, work)
  result = train.compress(config, work)
  return config, work, result


def _rewrite(path, header=None, words=None, out=None):
  """Re-pack a file with a changed header or words (a valid digest: only the inner checks
  can catch it)."""
  h, w = container.unpack(open(path, "rb").read())
  blob = container.pack(header(h) if header else h, words(w) if words else w)
  out = out or path + ".edited.vdmbb"
  with open(out, "wb") as f:
    f.write(blob)
  return out


def test_compress_writes_a_verified_file_whose_sizes_add_up(ddpm_run):
  config, work, result = ddpm_run
  r = result.record
  assert result.path == os.path.join(work, "compressed", "test_4.vdmbb")
  assert json.load(open(result.record_path)) == json.loads(json.dumps(r))
  assert r["round_trip"] == "verified" and r["num_examples"] == 12 and r["dims"] == 64
  # The file is exactly the container framing plus 32-bit words.
  size = os.path.getsize(result.path)
  header, words = container.unpack(open(result.path, "rb").read())
  assert r["file_bytes"] == size and r["file_bits"] == 8 * size
  assert r["file_bits"] == container.framing_bits(header) + 32 * words.size
  assert r["framing_bits"] == container.framing_bits(header)
  nd = r["num_examples"] * r["dims"]
  assert r["file_bpd"] == pytest.approx(r["file_bits"] / nd)
  assert r["rate_bpd"] == pytest.approx(
      (r["file_bits"] - r["framing_bits"] - r["seed_bits"] - r["checksum_bits"]) / nd)
  # The file's rate and the coder's exact bit count differ by the word rounding only; the
  # coder's overhead on its own trajectories is small; the rate is one draw of the bound.
  assert abs(r["rate_bpd"] - r["coder_rate_bpd"]) <= 64 / nd
  assert abs(r["coder_overhead_bpd"]) < 0.02 + 96 / nd
  assert abs(r["overhead_bpd"]) < 4 * r["overhead_bpd_se"] + 0.1
  assert r["overhead_percent"] == pytest.approx(100 * r["overhead_bpd"] / r["bound_bpd"])
  # Header: what identifies the model and the coder.
  assert header["step"] == 4 and header["num_examples"] == 12
  assert header["coder"] == {"chain": "ddpm", "T": 10, "clip_denoised": False,
                             "precision_bits": 12, "R": 8.0, "batch_size": 5}
  assert header["params_sha256"] == train.checkpoints.state_digest(
      train.restore(config, work))
  table = reporting.compression_table(r)
  assert f"{r['rate_bpd']:.4f}" in table and "round trip verified" in table
  # Only the seed words that pops reached are stored.
  assert 0 < r["seed_bits"] <= 32 * header["seed"]["words"]


def test_decompress_restores_the_held_out_examples_from_the_file(ddpm_run):
  config, work, result = ddpm_run
  out = train.decompress(config, work)
  test = np.asarray(train.restore_run(config, work).run.dataset.test[:12])
  assert out.levels.dtype == test.dtype and np.array_equal(out.levels, test)
  assert np.array_equal(np.load(out.path), test)
  assert out.record["equal_to_held_out_split"] is True
  assert out.path == os.path.join(work, "compressed", "test_4.decoded.npy")


def test_damaged_files_are_refused_before_decoding(ddpm_run, tmp_path):
  config, work, result = ddpm_run
  blob = open(result.path, "rb").read()
  cases = {
      "truncated": (blob[:-7], r"truncated"),
      "flipped": (blob[:200] + bytes([blob[200] ^ 1]) + blob[201:], r"digest .* corrupted"),
      "not ours": (b"PK\x03\x04" + blob[4:], r"not a vdm compressed file"),
      "version": (blob[:6] + b"\x09" + blob[7:], r"version 9 is not supported"),
      "trailing": (blob + b"\0", r"trailing bytes"),
  }
  for name, (data, message) in cases.items():
    path = str(tmp_path / f"{name.replace(' ', '_')}.vdmbb")
    with open(path, "wb") as f:
      f.write(data)
    with pytest.raises(container.ContainerError, match=message):
      train.decompress(config, work, path)
  # A valid container around changed words: the message's own checks catch it.
  def flip(w):
    w = w.copy()
    w[len(w) // 2] ^= np.uint32(1 << 7)
    return w
  with pytest.raises(ans.MessageError):
    train.decompress(config, work, _rewrite(result.path, words=flip))


def test_mismatched_model_or_checkpoint_is_refused(ddpm_run):
  config, work, result = ddpm_run
  other = tiny_digits_config("ddpm")
  other.diffusion.beta_end = 0.4
  with pytest.raises(ValueError, match=r"written by another model: its config hash"):
    train.decompress(other, work, allow_config_change=True)
  params = _rewrite(result.path, header=lambda h: dict(h, params_sha256="0" * 64))
  with pytest.raises(ValueError, match=r"other parameters than the checkpoint of step 4"):
    train.decompress(config, work, params)
  missing = _rewrite(result.path, header=lambda h: dict(h, step=3))
  with pytest.raises(FileNotFoundError, match=r"no checkpoint of step 3"):
    train.decompress(config, work, missing)
  coder = _rewrite(result.path, header=lambda h: dict(h, coder=dict(h["coder"], T=20)))
  with pytest.raises(ValueError, match=r"another chain"):
    train.decompress(config, work, coder)


def test_compress_refuses_bad_input_before_compute(ddpm_run, tmp_path):
  config, work, _ = ddpm_run
  bad = tiny_digits_config("ddpm")
  bad.coding.precision_bits = 30
  with pytest.raises(ValueError, match=r"coding.precision_bits"):
    train.compress(bad, work)
  bad = tiny_digits_config("ddpm")
  bad.coding.latent_range = 0.0
  with pytest.raises(ValueError, match=r"coding.latent_range"):
    train.compress(bad, work)
  # Continuous data have no lossless code.
  toy = toy_config(num_steps=2)
  toy_work = str(tmp_path / "toy")
  train.train_and_evaluate(toy, toy_work)
  with pytest.raises(ValueError, match=r"needs integer data"):
    train.compress(toy, toy_work)
  with pytest.raises(FileNotFoundError, match=r"no compressed file"):
    train.decompress(toy, toy_work)


def test_vdm_run_compresses_and_decompresses(tmp_path):
  config = tiny_digits_config("vdm", num_steps=2)
  config.coding.num_examples, config.coding.batch_size = 6, 6
  work = str(tmp_path / "vdm")
  train.train_and_evaluate(config, work)
  result = train.compress(config, work)
  r = result.record
  assert r["coder"]["chain"] == "vdm" and r["coder"]["T"] == 10
  assert "VDM discrete-time bound (T=10)" == r["bound"]
  # Two training steps leave p far from q at T = 10 (latents escape their windows, where the
  # coder pays less than the exact codelength): one-sided here; tests/test_coding_diffusion.py
  # checks the VDM chain's rate against its bound with an exact denoiser.
  assert r["coder_overhead_bpd"] < 0.02 + 96 / (6 * 64)
  out = train.decompress(config, work)
  assert out.record["equal_to_held_out_split"] is True


def test_command_line_compress_and_decompress(ddpm_run, tmp_path):
  config, work, _ = ddpm_run
  env = dict(os.environ, PYTHONPATH=os.path.join(REPO, "tests") + os.pathsep + REPO)
  base = [sys.executable, "-m", "vdm.main", "--config=tests/train_configs.py:compress",
          f"--workdir={work}"]
  done = subprocess.run(base + ["--mode=decompress"], cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-2000:]
  assert "Equal to the held-out split: True" in done.stdout
  bad = str(tmp_path / "bad.vdmbb")
  with open(bad, "wb") as f:
    f.write(b"nothing here")
  done = subprocess.run(base + ["--mode=decompress", f"--compressed_file={bad}"], cwd=REPO,
                        env=env, capture_output=True, text=True, timeout=600)
  assert done.returncode == 1
  assert "vdm: error:" in done.stderr and "not a vdm compressed file" in done.stderr


def test_container_round_trips_and_counts_its_framing():
  header = {"format": "x", "n": 3}
  words = np.array([1, 2**32 - 1, 7], np.uint32)
  blob = container.pack(header, words)
  back, w = container.unpack(blob)
  assert back == header and np.array_equal(w, words) and w.dtype == np.uint32
  assert 8 * len(blob) == container.framing_bits(header) + 32 * words.size
  with pytest.raises(container.ContainerError, match="truncated"):
    container.unpack(blob[:20])
