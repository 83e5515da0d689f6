"""Command line: python -m vdm.main --config=configs/<experiment>.py --workdir=DIR [--mode=...]

Modes: train (resumes from DIR/checkpoints), eval (bound decomposition of the newest
checkpoint: eval.num_examples test examples), bpd (the same over the whole test split), sample
(a PNG grid of samples), iwbound (importance-weighted bounds for each K of
likelihood.iw_num_samples beside the bound), ode_nll (the probability-flow ODE likelihood),
compress (the held-out split as a bits-back file DIR/compressed/test_<step>.vdmbb, its rate
beside the bound; config group `coding`), decompress (the data back from that file, or from
--compressed_file, and the checkpoint it names).
Config fields are overridable: --config.training.num_steps=100.

Console: our progress (step, loss, steps/s, ETA) and the bound; the libraries' INFO lines
(orbax, jax) go to DIR/log.txt only, unless --verbosity is given. Errors in the config, the
data or the run directory print one message (the traceback is in DIR/log.txt) and exit 1.
A run stopped by SIGTERM or Ctrl-C saves its state and exits 128 + the signal number (143 for
SIGTERM, 130 for SIGINT), so schedulers see the preemption.

Multi-host (a TPU pod, or several CPU processes): pass --jax_distributed. On a TPU pod or a
cluster JAX knows, jax.distributed.initialize() finds the coordinator itself; elsewhere give
--coordinator_address=HOST:PORT --num_processes=N --process_id=I.
"""
import logging as py_logging
import os
import sys
import traceback

from absl import app, flags, logging
from ml_collections import config_flags

MODES = ("train", "eval", "sample", "bpd", "iwbound", "ode_nll", "compress", "decompress")

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Work directory (checkpoints, metrics, eval).")
_MODE = flags.DEFINE_enum("mode", "train", list(MODES), "What to run.")
_ALLOW_CHANGE = flags.DEFINE_bool(
    "allow_config_change", False,
    "Resume or evaluate even if the config differs from DIR/config.json in fields that change "
    "what is trained (the stored config is kept).")
_COMPRESSED_FILE = flags.DEFINE_string(
    "compressed_file", None, "--mode=decompress: the file to decode (default: the newest "
    "DIR/compressed/test_<step>.vdmbb).")
_DISTRIBUTED = flags.DEFINE_bool("jax_distributed", False,
                                 "Call jax.distributed.initialize (multi-host).")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "HOST:PORT of process 0.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index.")

flags.mark_flags_as_required(["config", "workdir"])

LOG_FILE = "log.txt"


def _parse_flags(argv):
  """absl's parsing, with one clear line for a bad --config.<field> override."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    sys.stderr.write(f"vdm: error: {e}\nRun with --helpfull for the flags.\n")
    sys.exit(2)
  except (AttributeError, KeyError, TypeError, ValueError) as e:
    bad = [a for a in argv[1:] if a.startswith("--config.")]
    sys.stderr.write(f"vdm: error: a config override could not be applied ({e!s}): "
                     f"{' '.join(bad)}\nConfig fields are those of configs/base.py, e.g. "
                     f"--config.training.num_steps=100.\n")
    sys.exit(2)


class _OursOrWarnings(py_logging.Filter):
  """Passes vdm's own records and every warning or error; the rest go to the log file only."""

  def __init__(self):
    super().__init__()
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    self._ours = tuple(os.path.join(root, d) + os.sep for d in ("vdm", "experiments"))

  def filter(self, record):
    return record.levelno >= py_logging.WARNING or record.pathname.startswith(self._ours)


def _route_logs(workdir: str):
  """Console: ours; DIR/log.txt: everything. Returns the log file's path (None if unwritable)."""
  path = None
  try:
    os.makedirs(workdir, exist_ok=True)
    handler = py_logging.FileHandler(os.path.join(workdir, LOG_FILE))
    handler.setFormatter(py_logging.Formatter("%(asctime)s %(levelname)s %(name)s "
                                              "%(filename)s:%(lineno)d] %(message)s"))
    py_logging.getLogger().addHandler(handler)
    path = handler.baseFilename
  except OSError:
    pass
  if not flags.FLAGS["verbosity"].present:
    logging.get_absl_handler().addFilter(_OursOrWarnings())
  return path


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  import jax
  if _DISTRIBUTED.value:
    jax.distributed.initialize(coordinator_address=_COORDINATOR.value,
                               num_processes=_NUM_PROCESSES.value, process_id=_PROCESS_ID.value)
  workdir = _WORKDIR.value
  log_path = _route_logs(workdir)
  from vdm import reporting, train
  logging.info("JAX process %d/%d, %d local devices (%s)", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.default_backend())
  config, mode = _CONFIG.value, _MODE.value
  kwargs = dict(allow_config_change=_ALLOW_CHANGE.value)
  is_main = jax.process_index() == 0
  try:
    if mode == "train":
      result = train.train_and_evaluate(config, workdir, **kwargs)
      summary, step = result.summary, int(result.state.step)
      where = (f"Files: {workdir}/eval/bound_{step}.json (every term, per timestep), "
               f"{workdir}/samples, {workdir}/metrics.jsonl (TensorBoard: {workdir}/tensorboard)")
    elif mode in ("eval", "bpd"):
      result = train.evaluate(config, workdir, full=mode == "bpd", **kwargs)
      summary, step, where = result.summary, result.step, f"Record: {result.path}"
    elif mode in ("iwbound", "ode_nll"):
      result = getattr(train, mode)(config, workdir, **kwargs)
      if is_main:
        print(reporting.likelihood_table(result.record))
        print(f"Record: {result.path}")
      return
    elif mode == "compress":
      result = train.compress(config, workdir, **kwargs)
      if is_main:
        print(reporting.compression_table(result.record))
        print(f"File: {result.path}\nRecord: {result.record_path}")
      return
    elif mode == "decompress":
      result = train.decompress(config, workdir, _COMPRESSED_FILE.value, **kwargs)
      r = result.record
      print(f"{r['num_examples']} examples decoded from {r['file']} ({r['file_bytes']} bytes) "
            f"in {r['decode_seconds']:.1f} s: {result.path}\nEqual to the held-out split: "
            f"{r['equal_to_held_out_split']}\nRecord: {result.record_path}")
      return
    else:
      result = train.sample(config, workdir, **kwargs)
      if is_main:
        print(f"{len(result.samples)} samples from the checkpoint of step {result.step}: "
              f"{result.path or '(vector data: no image grid)'}")
      return
  except (ValueError, FileNotFoundError, FloatingPointError, train.RunDirError) as e:
    if log_path:
      with open(log_path, "a") as f:
        f.write(traceback.format_exc())
    sys.stderr.write(f"vdm: error: {e}\n" + (f"(traceback in {log_path})\n" if log_path else ""))
    sys.exit(1)
  if is_main and summary:
    print(reporting.decomposition_table(summary, step))
    print(where)
  if mode == "train" and result.stopped_by:
    sys.exit(128 + int(result.stopped_by))


def run():
  app.run(main, flags_parser=_parse_flags)


if __name__ == "__main__":
  run()
