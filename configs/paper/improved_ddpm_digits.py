"""Improved DDPM (Nichol & Dhariwal 2021) ablation, CPU scale: the base of every run.

`python -m experiments.improved_ddpm` trains six models from this config, changing only the
schedule (linear | cosine) and the objective (L_simple | L_hybrid | L_vlb with importance-sampled
timesteps), and reports the full DDPM bound on the test split in bits/dim. The experiment sets
per run: diffusion.beta_schedule, diffusion.loss_type, diffusion.var_type and
diffusion.timestep_sampler (and, for T > 1000, rescales the linear betas by 1000 / T as
improved-diffusion does).

Scale (CPU, 2 cores): scikit-learn digits (8x8x1, 17 levels, 1500 train / 297 test), a U-Net
with 16 base channels, multipliers (1, 2), 1 residual block per level, attention at 4x4,
T = 1000 diffusion steps (the paper: 4000), 2000 Adam steps at batch 64 (the paper: 500K at
batch 128 on CIFAR-10), lr 1e-3 with 100 warmup steps (the paper: 1e-4, no warmup), gradient
clipping at 1.0, EMA 0.995 (the paper: 0.9999), no dropout. Every run is evaluated once, at
the end, with the EMA parameters on all 297 test images. The values were chosen so that the
whole table of runs fits in about an hour here; override any of them on the command line,
e.g. --config.training.num_steps=500.
"""
import ml_collections

from configs import paper
from configs.datasets import digits


def get_config():
  config = digits()
  config.model.ch, config.model.ch_mult, config.model.num_res_blocks = 16, (1, 2), 1
  config.model.attn_resolutions = (4,)
  config.model.dropout = 0.0
  d = config.diffusion
  d.num_timesteps = 1000
  d.beta_schedule = "linear"       # set per run
  d.beta_start, d.beta_end = 1e-4, 0.02   # Ho et al. (rescaled by 1000 / T when T > 1000)
  d.mean_type = "eps"
  d.var_type = "fixed_large"       # set per run: fixed_large (L_simple) | learned_range
  d.loss_type = "mse"              # set per run: mse | hybrid | kl
  d.hybrid_lambda = 0.001          # Nichol & Dhariwal Sec. 3.1
  d.timestep_sampler = "uniform"   # set per run: importance for L_vlb
  d.t_chunk_size = 50
  # steps_per_log 10: dense loss curves (the L_vlb noise comparison).
  paper.cpu_schedule(config, num_steps=2000, steps_per_log=10)
  return config


def full_scale() -> ml_collections.ConfigDict:
  """CIFAR-10 as in Nichol & Dhariwal (App. A) and improved-diffusion's published flags.

  T = 4000, U-Net with 128 channels, multipliers (1, 2, 2, 2), 3 residual blocks, attention at
  16x16 and 8x8, dropout 0.3 (cosine) / 0.1 (linear; set per run), Adam lr 1e-4, batch 128,
  500K steps, EMA 0.9999, no warmup and no gradient clipping (improved-diffusion has neither).
  Differences from their U-Net: single-head attention and additive (not scale-shift) timestep
  conditioning; the timestep is embedded as the integer t, not rescaled to [0, 1000).
  """
  from configs import cifar10_ddpm
  config = cifar10_ddpm.get_config()
  config.model.ch, config.model.ch_mult, config.model.num_res_blocks = 128, (1, 2, 2, 2), 3
  config.model.attn_resolutions = (16, 8)
  config.model.dropout = 0.3
  d = config.diffusion
  d.num_timesteps = 4000
  d.beta_schedule = "cosine"
  d.beta_start, d.beta_end = 1e-4, 0.02    # at T = 1000; rescaled by 1000 / T per run
  d.mean_type = "eps"
  d.hybrid_lambda = 0.001
  d.t_chunk_size = 100
  o = config.optimizer
  o.learning_rate, o.warmup_steps, o.grad_clip, o.ema_rate = 1e-4, 0, 0.0, 0.9999
  t = config.training
  t.num_steps, t.batch_size, t.substeps = 500000, 128, 10
  t.steps_per_log, t.steps_per_eval, t.steps_per_save = 100, 100000, 5000
  t.num_devices = 0
  config.eval.num_examples = 0            # the NLL of the tables: the whole test split
  config.eval.batch_size = 128
  config.eval.num_samples = 0
  return config
