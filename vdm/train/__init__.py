"""Training and evaluation: pmap of lax.scan, EMA, orbax checkpoints, metrics, eval and samples.

Public entry points:
- `train_and_evaluate(config, workdir, dataset=None, denoiser=None, objective=None)`: train
  (resuming from the newest good checkpoint), with your own data (`vdm.data.from_arrays`) and
  your own Flax denoiser if you like; returns the final state and the last bound summary.
- `restore(config, workdir)` -> EMA parameters; `restore_run` -> the run and its state.
- `evaluate(config, workdir, full=False)` -> the bound (bits/dim); `sample(config, workdir)`.
- `iwbound(config, workdir)`, `ode_nll(config, workdir)` -> LikelihoodResult: importance-weighted
  bounds for several K, and the probability-flow ODE likelihood, of the held-out examples.
- `compress(config, workdir)`, `decompress(config, workdir, path=None)`: the held-out split
  as a bits-back file (vdm.coding) and back, with the rate beside the bound.
- `setup(config, dataset)` -> a checked `Run`; `bound_on(run, params, examples, key)` -> the
  bound of any parameters on any examples; `draw_samples(run, params_rep, key, n)`.

The package by job: state (train state and optimizer), steps (the pmapped programs), devices
(layout, compilation, replication), checkpoints (finite, verified, with fallback), rundir
(stored config, lock, writability), config_checks (every field up front), evaluation (the
bound and samples of any mode), loop (training), modes (the read-only modes), compression
(--mode=compress and --mode=decompress).
"""
from vdm.train.checkpoints import (CheckpointMismatchError, NonFiniteStateError,
                                   checkpoint_manager, restore_checkpoint, save_checkpoint)
from vdm.train.compression import (CompressResult, DecompressResult, compress, decompress,
                                   newest_compressed)
from vdm.train.config_checks import validate_config
from vdm.train.devices import (AXIS, compiler_options, device_layout, pmap, replicate,
                               unreplicate)
from vdm.train.evaluation import Run, bound_on, draw_samples, evaluate_bound, setup
from vdm.train.loop import NonFiniteLossError, TrainResult, train_and_evaluate
from vdm.train.modes import (EvalResult, LikelihoodResult, RestoredRun, SampleResult, evaluate,
                             iwbound, ode_nll, restore, restore_run, sample)
from vdm.train.rundir import RESUMABLE_FIELDS, RunDirError
from vdm.train.state import (LR_SCHEDULES, OPTIMIZERS, TrainState, create_optimizer, decay_mask,
                             init_state, learning_rate_schedule)
from vdm.train.steps import batch_info, make_eval_step, make_train_step, unroll_substeps
