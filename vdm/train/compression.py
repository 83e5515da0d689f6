"""--mode=compress and --mode=decompress: the held-out split as an actual file, by bits-back
coding with the trained EMA model (vdm.coding), and back.

compress(config, workdir):
1. every check first: one process, integer data with the discretized decoder
   (`objective.check_codable`), the coding group, a writable DIR, the newest good checkpoint;
2. the bound of the coded chain (`objective.chain_bound`: calc_bpd's total_bpd for a DDPM) on
   the same examples, per example (the mean of coding.bound_draws draws), with the evaluation
   key of that step;
3. bits-back encode of the first coding.num_examples held-out examples in lockstep batches of
   coding.batch_size (each network call serves the whole batch);
4. the file DIR/compressed/test_<step>.vdmbb (`vdm.coding.container`: a header naming the model
   by hashes of its config and parameters, the message words, a sha256 digest). It is written
   to a temporary name, read back from disk and decoded (coding.verify), and only then renamed
   into place: a file under the final name has passed its round trip;
5. DIR/eval/compress_<step>.json: sizes and rates (below), the bound, timings.

decompress(config, workdir, path=None): the file alone (plus the checkpoint of the step it
names) gives the data back: the container is checked (magic, length, digest), then the config
hash and the checkpoint's parameter hash against the header, all before any decoding; decoding
ends by checking the message's checksum and that what remains is exactly the seed. Writes
DIR/compressed/test_<step>.decoded.npy and DIR/eval/decompress_<step>.json (with the comparison
against the held-out split).

Sizes (record fields). N examples of D dimensions; file_bits = 8 x the file's bytes =
framing_bits (magic, lengths, header JSON, digest) + 32 x message words; the message words are
the seed words (the one-off "clean" bits of BB-ANS, recovered by decoding; only those that
the coder's pops reached are stored, the untouched bottom of the seed is regenerated from its
generator's seed, `EncodeResult.untouched_words`), the examples' net
growth, and the 160-bit checksum header. rate_bpd = (file_bits - framing_bits - seed_bits -
checksum_bits) / (N D) is the per-example rate measured from the file (its word rounding is at
most 31 bits per file); file_bpd = file_bits / (N D) counts everything. overhead_bpd = rate_bpd -
bound_bpd (and in percent of the bound), with the standard error of the paired per-example
difference between the coded trajectory's ideal codelength and the bound (both one Monte Carlo
draw per example); coder_overhead_bpd = rate_bpd - ideal_bpd is the coder's own overhead on the
trajectories it coded.
"""
from __future__ import annotations

import glob
import hashlib
import io
import json
import os
import re
import tempfile
import time
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from vdm import random_streams as streams
from vdm.coding import ans, container
from vdm.objectives import coding_options
from vdm.train import checkpoints as ckpt
from vdm.train import rundir
from vdm.train.evaluation import mean_and_se, per_example, record_path, setup
from vdm.train.modes import restore_run

SUFFIX = ".vdmbb"
FORMAT = "vdm.coding bits-back"
# Header fields a decoder reads (anything else in the header is informational).
_HEADER_KEYS = ("format", "objective", "config_sha256", "params_sha256", "step", "num_examples",
                "data_shape", "num_levels", "data_dtype", "coder", "seed")


class CompressResult(NamedTuple):
  record: dict              # what DIR/eval/compress_<step>.json holds
  step: int
  path: str                 # the compressed file
  record_path: str


class DecompressResult(NamedTuple):
  levels: np.ndarray        # [N, *data_shape], the dataset's dtype
  record: dict
  step: int
  path: str                 # the decoded .npy
  record_path: str


def compressed_dir(workdir: str) -> str:
  return os.path.join(workdir, "compressed")


def compressed_path(workdir: str, step: int) -> str:
  return os.path.join(compressed_dir(workdir), f"test_{step}{SUFFIX}")


def newest_compressed(workdir: str) -> str:
  """DIR/compressed/test_<step>.vdmbb of the largest step; FileNotFoundError if none."""
  found = []
  for p in glob.glob(os.path.join(compressed_dir(workdir), f"test_*{SUFFIX}")):
    m = re.fullmatch(rf"test_(\d+){re.escape(SUFFIX)}", os.path.basename(p))
    if m:
      found.append((int(m.group(1)), p))
  if not found:
    raise FileNotFoundError(f"no compressed file in {compressed_dir(workdir)}: run "
                            f"--mode=compress first, or pass the file's path")
  return max(found)[1]


def model_fingerprint(config, objective) -> str:
  """sha256 (hex) of what determines the trained model: every config field that changes
  training (the base groups, less the fields that may change on resume) and the denoiser."""
  fields = rundir.base_fields_of_json(rundir.config_as_json(config))
  kept = {k: v for k, v in fields.items()
          if k not in rundir.RESUMABLE_FIELDS and k not in rundir.EVAL_ONLY_FIELDS
          and k.split(".")[0] not in rundir.RESUMABLE_GROUPS}
  blob = json.dumps({"config": kept, "denoiser": repr(objective.net),
                     "objective": type(objective).__name__}, sort_keys=True)
  return hashlib.sha256(blob.encode()).hexdigest()


def _check_one_process(mode: str) -> None:
  if jax.process_count() > 1:
    raise ValueError(f"--mode={mode} runs in one process (the entropy coder is sequential); "
                     f"got {jax.process_count()} processes: run it without --jax_distributed")


def _coder_settings(objective, options: dict) -> dict:
  """What the header records of the coder: the chain and every option decode needs."""
  chain = ({"chain": "ddpm", "T": int(objective.num_timesteps),
            "clip_denoised": bool(objective.clip_bound)}
           if hasattr(objective, "diffusion") else
           {"chain": "vdm", "T": int(objective.iw_num_timesteps)})
  return dict(chain, **{k: options[k] for k in ("precision_bits", "R", "batch_size")})


def _bound_name(coder: dict) -> str:
  if coder["chain"] == "ddpm":
    return f"calc_bpd total_bpd (T={coder['T']})"
  return f"VDM discrete-time bound (T={coder['T']})"


def _write_bytes_atomic(path: str, blob: bytes) -> str:
  """Write blob to a temporary file beside path (fsynced); returns the temporary name."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-",
                             suffix=os.path.splitext(path)[1])
  with os.fdopen(fd, "wb") as f:
    f.write(blob)
    f.flush()
    os.fsync(f.fileno())
  return tmp


def _read_file(path: str) -> tuple:
  try:
    with open(path, "rb") as f:
      blob = f.read()
  except OSError as e:
    raise FileNotFoundError(f"compressed file {path} cannot be read ({e.strerror})") from None
  header, words = container.unpack(blob, name=path)
  missing = [k for k in _HEADER_KEYS if k not in header]
  if header.get("format") != FORMAT or missing:
    raise container.ContainerError(f"{path}: not a vdm compressed split (header lacks "
                                   f"{', '.join(missing) or 'the format name'})")
  return header, words, len(blob)


def _decode_words(objective, params, header: dict, words) -> np.ndarray:
  """Decode the header's examples from the words; checks that what remains is the seed."""
  c = header["coder"]
  message = ans.Message.from_words(words)
  options = dict(precision_bits=c["precision_bits"], R=c["R"], batch_size=c["batch_size"])
  levels = objective.decode_bits(params, message, header["num_examples"], options)
  seed = header["seed"]
  initial = ans.Message.seeded(seed["words"], seed["generator"]).words()[seed["unstored"]:]
  if not np.array_equal(message.words(), initial):
    raise ans.MessageError("the decoded message did not return to its seed words: the file is "
                           "corrupted or the model differs from the encoder's")
  return levels


def compress(config: ml_collections.ConfigDict, workdir: str, **kwargs) -> CompressResult:
  """Compress the first coding.num_examples held-out examples (module docstring).
  kwargs: as `restore_run` (allow_config_change, dataset, denoiser, objective)."""
  _check_one_process("compress")
  rundir.check_writable(workdir)
  restored = restore_run(config, workdir, **kwargs)
  run, params, step = restored.run, restored.ema_params, restored.step
  objective = run.objective
  objective.check_codable()
  options = coding_options(config.coding)
  test = run.dataset.test
  levels = np.asarray(test[:config.coding.num_examples or len(test)])
  n, dims = len(levels), int(np.prod(levels.shape[1:]))

  start = time.perf_counter()
  draws = int(config.coding.bound_draws)
  # One compiled bound for every draw (lax.map over the draws' keys, not an unrolled loop).
  bound = per_example(
      run, lambda p, x, k: {"bound_bpd": jax.lax.map(
          lambda i: objective.chain_bound(p, x, jax.random.fold_in(k, i)),
          jnp.arange(draws)).mean(axis=0)},
      params, levels, streams.eval_key(config.seed, step), options["batch_size"])["bound_bpd"]
  bound_s = time.perf_counter() - start
  logging.info("compress: the bound of %d examples: %.4f bits/dim (%.1f s)", n, bound.mean(),
               bound_s)

  start = time.perf_counter()
  result = objective.encode_bits(params, levels, None, options)
  encode_s = time.perf_counter() - start
  header = {"format": FORMAT, "version": container.VERSION,
            "objective": type(objective).__name__,
            "config_sha256": model_fingerprint(config, objective),
            "params_sha256": ckpt.state_digest(params), "step": step, "num_examples": n,
            "data_shape": list(levels.shape[1:]), "num_levels": int(run.dataset.num_levels),
            "data_dtype": levels.dtype.str, "coder": _coder_settings(objective, options),
            "seed": {"words": result.seed_words, "generator": options["seed"],
                     "unstored": result.untouched_words},
            "source": f"{run.dataset.name} test split, examples 0..{n - 1}"}
  blob = container.pack(header, result.message.words()[result.untouched_words:])
  path = compressed_path(workdir, step)
  tmp = _write_bytes_atomic(path, blob)
  decode_s = None
  try:
    if config.coding.verify:
      start = time.perf_counter()
      back_header, back_words, _ = _read_file(tmp)
      decoded = _decode_words(objective, params, back_header, back_words)
      decode_s = time.perf_counter() - start
      if not np.array_equal(decoded, levels):
        raise ans.MessageError(f"the round trip of {path} failed: decoded examples differ from "
                               f"the data ({int((decoded != levels).sum())} values); the file "
                               f"was not kept")
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)

  file_bits = 8 * len(blob)
  framing = container.framing_bits(header)
  seed_bits = 32 * (result.seed_words - result.untouched_words)   # the seed words stored
  per_dim = 1.0 / (n * dims)
  rate = (file_bits - framing - seed_bits - result.header_bits) * per_dim
  ideal = result.ideal_bits / dims
  bound_mean, bound_se = mean_and_se(bound)
  ideal_mean, ideal_se = mean_and_se(ideal)
  _, diff_se = mean_and_se(ideal - bound)
  record = {
      "mode": "compress", "step": step, "file": path, "num_examples": n, "dims": dims,
      "units": "bits/dim", "bound": _bound_name(header["coder"]),
      "coder": header["coder"], "seed": header["seed"],
      "file_bytes": len(blob), "file_bits": file_bits, "framing_bits": framing,
      "seed_bits": seed_bits, "checksum_bits": int(result.header_bits),
      "file_bpd": file_bits * per_dim, "rate_bpd": rate,
      "coder_rate_bpd": result.measured_bits * per_dim,
      "ideal_bpd": ideal_mean, "ideal_bpd_se": ideal_se,
      "bound_bpd": bound_mean, "bound_bpd_se": bound_se,
      "overhead_bpd": rate - bound_mean, "overhead_bpd_se": diff_se,
      "overhead_percent": 100.0 * (rate - bound_mean) / bound_mean,
      "coder_overhead_bpd": rate - ideal_mean,
      "one_off_bpd": (framing + seed_bits + result.header_bits) * per_dim,
      "bound_seconds": bound_s, "encode_seconds": encode_s, "decode_seconds": decode_s,
      "encode_images_per_s": n / encode_s,
      "decode_images_per_s": None if decode_s is None else n / decode_s,
      "encode_over_bound_time": encode_s / bound_s,
      "round_trip": "verified" if config.coding.verify else "not checked (coding.verify=False)",
      "bound_draws": draws, "bound_bpd_per_example": bound.tolist(),
      "ideal_bpd_per_example": ideal.tolist(),
  }
  rpath = record_path(workdir, "compress", step)
  os.makedirs(os.path.dirname(rpath), exist_ok=True)
  rundir.write_json_atomic(rpath, record)
  logging.info("compress at step %d: %s, %.4f bits/dim (bound %.4f +- %.4f, overhead %.2f%%), "
               "%.1f images/s", step, path, rate, bound_mean, bound_se,
               record["overhead_percent"], record["encode_images_per_s"])
  return CompressResult(record, step, path, rpath)


def decompress(config: ml_collections.ConfigDict, workdir: str, path: Optional[str] = None,
               **kwargs) -> DecompressResult:
  """Decode a compressed file of this run (default: `newest_compressed(workdir)`) with the
  checkpoint of the step it names (module docstring). kwargs: as `restore_run`."""
  _check_one_process("decompress")
  rundir.check_writable(workdir)
  path = path or newest_compressed(workdir)
  header, words, size = _read_file(path)
  run = setup(config, kwargs.pop("dataset", None), kwargs.pop("denoiser", None),
              kwargs.pop("objective", None))
  fingerprint = model_fingerprint(config, run.objective)
  if header["config_sha256"] != fingerprint:
    raise ValueError(f"{path} was written by another model: its config hash is "
                     f"{header['config_sha256'][:16]}..., this config's is {fingerprint[:16]}...; "
                     f"decompress with the config (and --workdir) of the run that wrote it")
  if header["objective"] != type(run.objective).__name__:
    raise ValueError(f"{path} was written by a {header['objective']}, this config builds a "
                     f"{type(run.objective).__name__}")
  restored = restore_run(config, workdir, dataset=run.dataset, objective=run.objective,
                         step=int(header["step"]), **kwargs)
  params = restored.ema_params
  if ckpt.state_digest(params) != header["params_sha256"]:
    raise ValueError(f"{path} was written with other parameters than the checkpoint of step "
                     f"{header['step']} in {workdir} holds (parameter hash differs): the "
                     f"checkpoint was replaced, or the file comes from another run")
  shape = tuple(header["data_shape"])
  if shape != tuple(run.dataset.shape) or header["num_levels"] != run.dataset.num_levels:
    raise ValueError(f"{path} holds examples of shape {shape} with {header['num_levels']} "
                     f"levels; this run's data are {tuple(run.dataset.shape)} with "
                     f"{run.dataset.num_levels}")
  if header["coder"] != _coder_settings(run.objective, dict(header["coder"])):
    raise ValueError(f"{path} was coded through another chain ({header['coder']}) than this "
                     f"run's model gives")
  start = time.perf_counter()
  levels = _decode_words(restored.run.objective, params, header, words)
  seconds = time.perf_counter() - start
  levels = levels.astype(np.dtype(header["data_dtype"]))
  n = int(header["num_examples"])
  test = np.asarray(run.dataset.test[:n])
  same = bool(test.shape == levels.shape and np.array_equal(test, levels))
  out = os.path.splitext(path)[0] + ".decoded.npy"
  buffer = io.BytesIO()
  np.save(buffer, levels)
  os.replace(_write_bytes_atomic(os.path.abspath(out), buffer.getvalue()), out)
  step = int(header["step"])
  record = {"mode": "decompress", "step": step, "file": path, "file_bytes": size,
            "num_examples": n, "decoded": out, "decode_seconds": seconds,
            "decode_images_per_s": n / seconds, "equal_to_held_out_split": same}
  rpath = record_path(workdir, "decompress", step)
  os.makedirs(os.path.dirname(rpath), exist_ok=True)
  rundir.write_json_atomic(rpath, record)
  logging.info("decompress: %d examples from %s in %.1f s -> %s (equal to the held-out split: "
               "%s)", n, path, seconds, out, same)
  return DecompressResult(levels, record, step, out, rpath)
