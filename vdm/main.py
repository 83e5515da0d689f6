"""Command line: python -m vdm.main --config=configs/<experiment>.py --workdir=DIR [--mode=...]

Modes: train (resumes from DIR/checkpoints), eval (bound decomposition of the latest
checkpoint), bpd (the same over the whole test split), sample (PNG grid of samples).
Config fields are overridable: --config.training.num_steps=100.

Multi-host (a TPU pod, or several CPU processes): pass --jax_distributed. On a TPU pod or a
cluster JAX knows, jax.distributed.initialize() finds the coordinator itself; elsewhere give
--coordinator_address=HOST:PORT --num_processes=N --process_id=I.
"""
from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Work directory (checkpoints, metrics, eval).")
_MODE = flags.DEFINE_enum("mode", "train", ["train", "eval", "sample", "bpd"], "What to run.")
_DISTRIBUTED = flags.DEFINE_bool("jax_distributed", False,
                                 "Call jax.distributed.initialize (multi-host).")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "HOST:PORT of process 0.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index.")

flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  import jax
  if _DISTRIBUTED.value:
    jax.distributed.initialize(coordinator_address=_COORDINATOR.value,
                               num_processes=_NUM_PROCESSES.value, process_id=_PROCESS_ID.value)
  from vdm import train
  logging.info("JAX process %d/%d, %d local devices (%s)", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.default_backend())
  config = _CONFIG.value
  from vdm import reporting
  if _MODE.value == "train":
    result = train.train_and_evaluate(config, _WORKDIR.value)
    summary, step = result.summary, int(result.state.step)
  elif _MODE.value in ("eval", "bpd"):
    summary = train.evaluate(config, _WORKDIR.value, full=_MODE.value == "bpd")
    step = None
  else:
    train.sample(config, _WORKDIR.value)
    return
  if jax.process_index() == 0 and summary:
    print(reporting.decomposition_table(summary, "latest" if step is None else step))
    print(f"Files: {_WORKDIR.value}/eval (every term, per timestep), "
          f"{_WORKDIR.value}/samples, {_WORKDIR.value}/metrics.jsonl")


def run():
  app.run(main)


if __name__ == "__main__":
  run()
