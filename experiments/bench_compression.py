r"""Bits-back compression time against the bound's: does coding stay cheap beside the network?

    python -m experiments.bench_compression [--workdir=workdirs/likelihoods_digits] [--quick]

Model: the digits DDPM of configs/compression_digits.py (T = 100, a 2-level U-Net) with the EMA
parameters of --workdir's newest checkpoint (`python -m experiments.compression` trains it);
--quick: the 8-channel test U-Net of tests/train_configs.py, initialized (no run needed).
Data: the first --batch held-out digits, one lockstep batch.

Timed, alternated rep by rep after one warm-up call each (compiled, so compilation is not
counted):
  calc_bpd  the objective's chain bound (`GaussianDiffusion.calc_bpd` total_bpd over all T
            timesteps) of the batch, one jitted call: T network passes of the batch;
  encode    `objective.encode_bits` of the same batch (`vdm.coding.diffusion.encode`): T jitted
            network calls on the batch plus the host-side entropy coding (constriction);
  decode    `objective.decode_bits` of that message.
Each line: the median seconds, images/s and `ratio` = median / calc_bpd's median (the issue's
goal: encode at most 1.5x calc_bpd), with the bits/dim measured beside the bound.
"""
import os
import time

from absl import app, flags
import jax
import numpy as np

from experiments import common

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The command-line flags: defined only when run as a script, so that importing this
  module defines none (absl refuses a flag defined twice in one process)."""
  flags.DEFINE_string("workdir", os.path.join(common.REPO, "workdirs", "likelihoods_digits"),
                      "A trained digits DDPM run (configs/compression_digits.py).")
  flags.DEFINE_integer("batch", 100, "Images coded in one lockstep batch.")
  flags.DEFINE_integer("reps", 3, "Timed repetitions of each implementation.")
  flags.DEFINE_string("results_dir", common.RESULTS, "Where bench_compression.md goes.")
  flags.DEFINE_bool("quick", False, "A tiny initialized U-Net, batch 8, one rep (for tests).")


BENCH = "compression"


def _model(quick: bool):
  """(config, objective, params, held-out levels)."""
  from vdm import train
  if quick:
    import sys
    sys.path.insert(0, os.path.join(common.REPO, "tests"))
    from train_configs import tiny_digits_config
    config = tiny_digits_config("ddpm")
    run = train.setup(config)
    return config, run.objective, run.objective.init(jax.random.PRNGKey(0)), run.dataset.test
  from configs import compression_digits
  config = compression_digits.get_config()
  restored = train.restore_run(config, FLAGS.workdir)
  return config, restored.run.objective, restored.ema_params, restored.run.dataset.test


def main(argv):
  del argv
  from vdm.objectives import coding_options
  quick = FLAGS.quick
  batch, reps = (8, 1) if quick else (FLAGS.batch, FLAGS.reps)
  config, objective, params, test = _model(quick)
  levels = np.asarray(test[:batch])
  dims = int(np.prod(levels.shape[1:]))
  options = dict(coding_options(config.coding), batch_size=batch)
  x = objective.encode(levels)
  key = jax.random.PRNGKey(0)
  bound_fn = jax.jit(objective.chain_bound)
  state = {}

  def calc_bpd():
    state["bound"] = np.asarray(bound_fn(params, x, key))

  def encode():
    state["encoded"] = objective.encode_bits(params, levels, None, options)

  def decode():
    message = state["encoded"].message.copy()
    state["decoded"] = objective.decode_bits(params, message, batch, options)

  impls = {"calc_bpd": calc_bpd, "encode": encode, "decode": decode}
  times = {k: [] for k in impls}
  for fn in impls.values():            # warm-up: compile everything once
    fn()
  for _ in range(reps):
    for name, fn in impls.items():
      start = time.perf_counter()
      fn()
      times[name].append(time.perf_counter() - start)
  if not np.array_equal(state["decoded"], levels):
    raise AssertionError("the benchmark's round trip failed")
  base = common.median(times["calc_bpd"])
  rate = state["encoded"].measured_bits / (batch * dims)
  records = []
  for name in impls:
    med = common.median(times[name])
    records.append(dict(
        bench=BENCH, case=f"digits_ddpm_T{objective.num_timesteps}" + ("_quick" * quick),
        batch=batch, impl=name, median_s=med, images_per_s=batch / med, ratio=med / base,
        times_s=times[name], rate_bpd=rate, bound_bpd=float(state["bound"].mean()),
        **common.env_info()))
    common.print_json(records[-1])
  if not quick:
    rows = [[r["impl"], f"{r['median_s']:.3f}", f"{r['images_per_s']:.1f}", f"{r['ratio']:.2f}x",
             ", ".join(f"{t:.3f}" for t in r["times_s"])] for r in records]
    body = (f"One lockstep batch of {batch} held-out digits, the digits DDPM of "
            f"configs/compression_digits.py (T = {objective.num_timesteps}, the EMA "
            f"parameters of {os.path.relpath(FLAGS.workdir, common.REPO)}); {reps} alternated "
            f"repetitions after a warm-up call each, in seconds per batch. "
            f"Rate of the encoded batch {rate:.4f} bits/dim, its bound "
            f"{records[0]['bound_bpd']:.4f}. Goal: encode at most 1.5x calc_bpd.\n\n"
            + common.markdown_table(["impl", "median s", "images/s", "vs calc_bpd",
                                     "every rep (s)"], rows))
    print(common.write_result(f"bench_{BENCH}", "Compression time against the bound's", body,
                              results_dir=FLAGS.results_dir))


if __name__ == "__main__":
  define_flags()
  app.run(main)
