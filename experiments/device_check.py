r"""One prepared check on an accelerator: the CIFAR-10 DDPM U-Net's training step and its bound.

  python -m experiments.device_check            # on whatever backend JAX finds (GPU: ~5 min)
  python -m experiments.device_check --quick    # a tiny U-Net, for CPU and the tests (< 1 min)

On the devices JAX finds (all local devices, pmapped as vdm.train does), with CIFAR-shaped
synthetic data (uniform random 8-bit levels; the speed does not depend on the pixel values):

  (1) the Adam step of the 35.7M-parameter DDPM CIFAR-10 U-Net (configs/cifar10_ddpm.py) at
      global batch 128, built exactly as vdm.train builds it (`make_train_step`, EMA, the
      trainer's XLA options): steps/s, images/s, compile seconds and achieved TFLOP/s (XLA's
      cost analysis of the compiled step), with `model.dtype` float32 and bfloat16 (parameters
      and optimizer state in float32, activations in bfloat16), and the loss of the first step
      of both on the same parameters and batch (bf16 against f32);
  (2) `calc_bpd` (the full T = 1000 bound, the eval step of vdm.train) on 256 CIFAR-shaped
      images for several `diffusion.t_chunk_size`: seconds per image and TFLOP/s;
  (3) the step of (1) with training.substeps > 1: a pmap of lax.scan over the substeps (on
      CPU vdm.train unrolls that loop, see vdm.train.steps.unroll_substeps; elsewhere it is a
      scan), steps/s per substep count.

The paper's reference: 21 steps/s on a TPU v3-8 at batch 128 (Ho et al. 2020, App. B).
Writes results/device_check.md (the machine, jax version and every figure; --output) and prints
one JSON object per line. Installs nothing: on the GPU machine,

  pip install -e . && pip install -U "jax[cuda12]"   # a CUDA jaxlib from the package index

then the command above.
"""
from __future__ import annotations

import json
import os
import time

from absl import app, flags
import numpy as np

from experiments import common

FLAGS = flags.FLAGS
PAPER_STEPS_PER_S = 21.0     # Ho et al. 2020, App. B: TPU v3-8, batch 128
DTYPES = ("float32", "bfloat16")


def settings(quick: bool) -> dict:
  """What to measure: full (the issue's) or quick (CPU tests) sizes."""
  if quick:
    return {"model": dict(ch=8, ch_mult=(1,), num_res_blocks=1, attn_resolutions=(),
                          dropout=0.1, num_groups=4),
            "batch": 4, "timed_steps": 2, "num_timesteps": 10, "bound_images": 8,
            "bound_batch": 4, "chunks": (5, 10), "substeps": (2,)}
  return {"model": {}, "batch": 128, "timed_steps": 20, "num_timesteps": 1000,
          "bound_images": 256, "bound_batch": 128, "chunks": (50, 100, 250), "substeps": (10,)}


def base_config(s: dict, dtype: str):
  """configs/cifar10_ddpm.py with the sizes of `s`, synthetic data and `dtype` activations."""
  from configs import cifar10_ddpm
  config = cifar10_ddpm.get_config()
  config.data.dataset = "custom"
  for k, v in s["model"].items():
    config.model[k] = v
  config.model.dtype = dtype
  config.diffusion.num_timesteps = s["num_timesteps"]
  t = config.training
  t.batch_size, t.num_devices, t.substeps = s["batch"], 0, 1
  t.num_steps = 10**6
  config.eval.batch_size = s["bound_batch"]
  return config


def synthetic_cifar(n_train: int, n_test: int):
  """uint8 levels [N, 32, 32, 3] (K = 256), uniform at random, as a vdm.data.Dataset."""
  from vdm import data
  rng = np.random.default_rng(0)
  return data.from_arrays(rng.integers(0, 256, (n_train, 32, 32, 3), dtype=np.uint8),
                          rng.integers(0, 256, (n_test, 32, 32, 3), dtype=np.uint8),
                          num_levels=256, name="cifar_shaped")


def _flops(compiled) -> float | None:
  """FLOPs of one call of a compiled program (XLA's cost analysis), or None if unknown. The
  analysis counts the body of a while loop (a lax.scan) once, whatever its trip count."""
  try:
    cost = compiled.cost_analysis()
  except Exception:  # noqa: BLE001  (not every backend implements it)
    return None
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else None
  return float(cost["flops"]) if cost and "flops" in cost else None


def _block(tree):
  import jax
  return jax.tree_util.tree_map(lambda a: a.block_until_ready(), tree)


def train_step_figures(config, dataset, timed_steps: int) -> dict:
  """Compile vdm.train's pmapped step for `config` and time it: steps/s, images/s, TFLOP/s,
  compile seconds, the first step's loss and whether every loss was finite."""
  import jax
  from vdm import data as data_lib, train
  run = train.setup(config, dataset)
  t, o = config.training, config.optimizer
  optimizer = train.create_optimizer(o, t.num_steps)
  schedule = train.learning_rate_schedule(o, t.num_steps)
  step_fn = train.make_train_step(run.objective, optimizer, o.ema_rate, schedule,
                                  train.unroll_substeps(config))
  mapped = jax.pmap(step_fn, axis_name=train.AXIS, devices=run.devices, donate_argnums=(0,))
  state = train.replicate(train.init_state(run.objective, optimizer, config.seed), run.devices)

  def batch(step):
    return np.stack([data_lib.get_batch(dataset.train, seed=config.seed, step=s,
                                        global_batch_size=t.batch_size,
                                        local_device_count=len(run.devices))
                     for s in range(step, step + t.substeps)], axis=1)

  timer = time.perf_counter()
  compiled = mapped.lower(state, batch(0)).compile(train.compiler_options(config))
  compile_s = time.perf_counter() - timer
  state, metrics = compiled(state, batch(0))           # warm-up (and the first step's loss)
  first_loss = float(np.asarray(metrics["loss"])[0, 0])
  losses = [np.asarray(metrics["loss"])]
  calls = max(1, timed_steps // t.substeps)
  batches = [batch(t.substeps * (i + 1)) for i in range(calls)]
  _block(state)
  timer = time.perf_counter()
  for b in batches:
    state, metrics = compiled(state, b)
    losses.append(metrics["loss"])
  _block((state, metrics))
  seconds = time.perf_counter() - timer
  steps = calls * t.substeps
  flops = _flops(compiled)
  if flops and not train.unroll_substeps(config):
    flops *= t.substeps               # the scan's body, counted once, runs substeps times
  return {"steps_per_s": steps / seconds, "images_per_s": steps * t.batch_size / seconds,
          "tflop_per_s": (flops * calls / seconds / 1e12) if flops else None,
          "compile_s": compile_s, "first_loss": first_loss, "timed_steps": steps,
          "all_finite": bool(all(np.all(np.isfinite(np.asarray(l))) for l in losses)),
          "devices": len(run.devices), "substeps": t.substeps, "batch": t.batch_size}


def bound_figures(config, dataset, num_images: int) -> dict:
  """Compile vdm.train's eval step (the full bound, calc_bpd) for `config` and time it on
  num_images held-out images (after a warm-up call): seconds per image, TFLOP/s."""
  import jax
  from vdm import data as data_lib, train
  run = train.setup(config, dataset)
  params = train.replicate(train.init_state(run.objective, train.create_optimizer(
      config.optimizer, 1), config.seed).ema_params, run.devices)
  mapped = jax.pmap(train.make_eval_step(run.objective), axis_name=train.AXIS,
                    devices=run.devices)
  batches = list(data_lib.eval_batches(dataset.test[:num_images],
                                       global_batch_size=config.eval.batch_size,
                                       local_device_count=len(run.devices)))
  keys = [train.replicate(jax.random.fold_in(jax.random.PRNGKey(0), i), run.devices)
          for i in range(len(batches))]
  timer = time.perf_counter()
  compiled = mapped.lower(params, *batches[0], keys[0]).compile(
      train.compiler_options(config, "eval"))
  compile_s = time.perf_counter() - timer
  _block(compiled(params, *batches[0], keys[0]))
  timer = time.perf_counter()
  sums = [compiled(params, b, m, k) for (b, m), k in zip(batches, keys)]
  _block(sums)
  seconds = time.perf_counter() - timer
  total = sum(float(np.asarray(s["total_bpd"])[0]) for s in sums) / num_images
  # The bound's chunks are a loop (counted once by the cost analysis): count the network
  # passes instead, bound_network_passes per image at the cost of one pass.
  flops = forward_flops(run, config.eval.batch_size // len(run.devices))
  return {"seconds_per_image": seconds / num_images, "seconds": seconds, "compile_s": compile_s,
          "tflop_per_s": (flops * run.objective.bound_network_passes * num_images / seconds
                          / 1e12) if flops else None,
          "total_bpd": total, "finite": bool(np.isfinite(total)),
          "t_chunk_size": int(config.diffusion.t_chunk_size), "images": num_images}


def forward_flops(run, batch: int) -> float | None:
  """FLOPs of one network pass per image (XLA's cost of model_fn on a batch, over batch)."""
  import jax
  import jax.numpy as jnp
  obj = run.objective
  params = obj.init(jax.random.PRNGKey(0))
  x = jnp.zeros((batch,) + tuple(obj.data_shape), jnp.float32)
  t = jnp.zeros((batch,), jnp.int32)
  flops = _flops(jax.jit(obj.model_fn).lower(params, x, t).compile())
  return flops / batch if flops else None


def perturbed(params, scale: float, seed: int):
  """params with N(0, scale^2) added to every leaf: generic weights (the DDPM U-Net's output
  convolution starts near zero, which would make any two dtypes agree trivially)."""
  import jax
  leaves, tree = jax.tree_util.tree_flatten(params)
  keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
  return jax.tree_util.tree_unflatten(tree, [
      l + scale * jax.random.normal(k, l.shape, l.dtype) for l, k in zip(leaves, keys)])


def training_loss(obj, dataset, params, batch: int) -> float:
  """The mean training loss (objective.loss, dropout on, fixed keys) of `params` on the first
  `batch` training images, in the objective's compute dtype: the number the trainer minimizes."""
  import jax
  import jax.numpy as jnp
  from vdm import objectives, random_streams as streams
  info = objectives.BatchInfo(jax.random.PRNGKey(1), jnp.arange(batch, dtype=jnp.int32), batch)

  @jax.jit
  def loss(params, v):
    x = obj.encode(v, info.keys(streams.DEQUANTIZE))
    per_example, _ = obj.loss(params, x, info, jax.random.PRNGKey(2), obj.init_sampler())
    return jnp.mean(per_example)

  return float(loss(params, jnp.asarray(dataset.train[:batch])))


def dtype_agreement(s: dict, dataset, scale: float = 0.02) -> dict:
  """The training loss with float32 and with bfloat16 activations on the same (perturbed)
  parameters and batch, and their relative difference."""
  import jax
  from vdm import train
  objs = {dtype: train.setup(base_config(s, dtype), dataset).objective for dtype in DTYPES}
  params = perturbed(objs["float32"].init(jax.random.PRNGKey(0)), scale, seed=3)
  out = {d: training_loss(obj, dataset, params, s["batch"]) for d, obj in objs.items()}
  y = {d: network_output(obj, dataset, params, s["batch"]) for d, obj in objs.items()}
  return {"loss_float32": out["float32"], "loss_bfloat16": out["bfloat16"],
          "relative_difference": abs(out["bfloat16"] / out["float32"] - 1.0),
          "output_relative_difference": float(np.linalg.norm(y["bfloat16"] - y["float32"])
                                              / np.linalg.norm(y["float32"])),
          "perturbation_std": scale}


def network_output(obj, dataset, params, batch: int) -> np.ndarray:
  """model_fn(params, x, t) on the first `batch` training images (encoded) at timesteps
  spread over [0, T): the network's output alone (the loss is dominated by ||eps||^2)."""
  import jax
  import jax.numpy as jnp
  x = obj.encode(jnp.asarray(dataset.train[:batch]))
  t = jnp.linspace(0, obj.num_timesteps - 1, batch).astype(jnp.int32)
  return np.asarray(jax.jit(obj.model_fn)(params, x, t), np.float64)


def emit(part: str, record: dict, out: list) -> None:
  out.append({"part": part, **record})
  common.print_json({"bench": "device_check", "part": part, **record})


def report(s: dict, rows: list, seconds: float) -> str:
  """Markdown of every figure (rows: the emitted records)."""
  import jax
  fmt = lambda v, d=3: "-" if v is None else (f"{v:.{d}f}" if isinstance(v, float) else str(v))
  dev = jax.devices()[0]
  train_rows = [r for r in rows if r["part"] in ("train_step", "substeps")]
  lines = [f"Backend: {jax.default_backend()}, {jax.device_count()} device(s) "
           f"({getattr(dev, 'device_kind', dev.platform)}); jax {jax.__version__}. Synthetic "
           f"CIFAR-shaped data (32x32x3, 256 levels). Sizes: "
           f"{'QUICK (a tiny U-Net, for CPU tests)' if FLAGS.quick else 'the issue'}: global "
           f"batch {s['batch']}, T = {s['num_timesteps']}, bound on {s['bound_images']} "
           f"images. Paper reference: {PAPER_STEPS_PER_S:g} steps/s on a TPU v3-8 at batch "
           f"128.", "",
           "## (1) and (3): the Adam step (vdm.train.make_train_step, pmapped)", "",
           common.markdown_table(
               ["dtype", "substeps", "steps/s", "images/s", "TFLOP/s", "compile (s)",
                "first loss", "losses finite"],
               [[r["dtype"], r["substeps"], fmt(r["steps_per_s"], 2), fmt(r["images_per_s"], 1),
                 fmt(r["tflop_per_s"]), fmt(r["compile_s"], 1), fmt(r["first_loss"], 5),
                 "yes" if r["all_finite"] else "NO"] for r in train_rows]), ""]
  f32 = next(r for r in train_rows if r["dtype"] == "float32" and r["substeps"] == 1)
  b16 = next(r for r in train_rows if r["dtype"] == "bfloat16" and r["substeps"] == 1)
  agree = next(r for r in rows if r["part"] == "dtype_agreement")
  lines += [f"bfloat16 against float32: speed {b16['steps_per_s'] / f32['steps_per_s']:.2f}x; "
            f"training loss on the same parameters (initial ones plus N(0, "
            f"{agree['perturbation_std']:g}^2) on every weight, so that the near-zero output "
            f"layer does not make them agree trivially) and batch: {agree['loss_bfloat16']:.5f} "
            f"vs {agree['loss_float32']:.5f}, relative difference "
            f"{agree['relative_difference']:.2e}; the network's output alone differs by "
            f"{agree['output_relative_difference']:.2e} (relative L2 norm).", ""]
  bound_rows = [r for r in rows if r["part"] == "calc_bpd"]
  lines += ["## (2) calc_bpd: the full bound (vdm.train.make_eval_step, pmapped)", "",
            common.markdown_table(
                ["t_chunk_size", "seconds / image", "network TFLOP/s", "compile (s)",
                 "bound (bits/dim, untrained)"],
                [[r["t_chunk_size"], fmt(r["seconds_per_image"], 4), fmt(r["tflop_per_s"]),
                  fmt(r["compile_s"], 1), fmt(r["total_bpd"], 4)] for r in bound_rows]), "",
            "Network TFLOP/s: the bound's T network passes per image at XLA's cost of one pass "
            "(the cost analysis counts a loop's body once, so the chunked bound's own count "
            "would be too low). Train-step TFLOP/s: XLA's cost of the compiled step (a scan's "
            "body times its substeps).", "",
            f"Total wall time {seconds / 60:.1f} min, compilation included."]
  return "\n".join(lines)


def main(argv):
  del argv
  timer = common.Timer()
  s = settings(FLAGS.quick)
  dataset = synthetic_cifar(max(4 * s["batch"], 64), s["bound_images"])
  rows = []
  for dtype in DTYPES:
    emit("train_step", {"dtype": dtype, **train_step_figures(base_config(s, dtype), dataset,
                                                             s["timed_steps"])}, rows)
  emit("dtype_agreement", dtype_agreement(s, dataset), rows)
  for k in s["substeps"]:
    config = base_config(s, "float32")
    config.training.substeps = k
    emit("substeps", {"dtype": "float32", **train_step_figures(config, dataset,
                                                               s["timed_steps"] * k)}, rows)
  for chunk in s["chunks"]:
    config = base_config(s, "float32")
    config.diffusion.t_chunk_size = chunk
    emit("calc_bpd", bound_figures(config, dataset, s["bound_images"]), rows)
  out = FLAGS.output or (None if FLAGS.quick else os.path.join(common.RESULTS,
                                                               "device_check.md"))
  if out:
    path = common.write_result(os.path.splitext(os.path.basename(out))[0],
                               "Device check: the DDPM U-Net's training step and bound",
                               report(s, rows, timer.seconds), timer.seconds,
                               results_dir=os.path.dirname(os.path.abspath(out)))
    with open(os.path.splitext(path)[0] + ".jsonl", "w") as f:
      f.write("".join(json.dumps(r) + "\n" for r in rows))
    print(f"wrote {path}")


if __name__ == "__main__":
  flags.DEFINE_bool("quick", False, "A tiny U-Net, small batch and T: for CPU and the tests.")
  flags.DEFINE_string("output", None, "Markdown report (default results/device_check.md; none "
                      "with --quick unless given).")
  app.run(main)
