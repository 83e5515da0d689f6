"""DDPM (Ho et al. 2020) Tables 1, 2 and 4: the base config of every run of experiments/ddpm_paper.

`python -m experiments.ddpm_paper --table=all` trains six models from this config, changing only
the mean parameterization (diffusion.mean_type eps | mean), the objective (diffusion.loss_type
kl = the true bound L | mse = unweighted MSE) and the reverse variance (diffusion.var_type
learned = learned diagonal Sigma | paper.fixed_var_type = fixed isotropic Sigma). Table 1 and
Table 4 reuse runs of Table 2 (no extra training).

CPU scale (the default, `get_config()`): scikit-learn digits (8x8x1, 17 levels, 1500 train /
297 test), a U-Net with 32 base channels, multipliers (1, 2), 1 residual block per level,
attention at 4x4, no dropout (the paper: 35.7M parameters on CIFAR-10, dropout 0.1);
T = 200 linear betas 5e-4..0.1, i.e. the paper's T = 1000 schedule (1e-4..0.02) rescaled by
1000 / T as in Nichol & Dhariwal, which keeps sum(beta) and so alphas_cumprod[T-1] (3.0e-5 vs
the paper's 4.0e-5) about the same; 1000 Adam steps at batch 64 (the paper: 800K at batch 128),
lr 1e-3 with 100 warmup steps (the paper: 2e-4, 5000 warmup), gradient clipping at 1.0 (as the
paper), EMA 0.995 (the paper: 0.9999). Every run is evaluated once, at the end, with its EMA
parameters: the full bound on all 297 test images (and, for Table 1, on 297 training images),
297 ancestral samples (T steps) for the sample-quality score.

Why T = 200 and not the paper's 1000: the bound and the sampler cost T network evaluations per
image; at T = 1000 one run's bound on 297 test images took over 8 minutes on this shared 2-core
machine, and the six runs (bound, samples, train-split bound) would not fit in an hour. For
T = 1000 pass --config.diffusion.num_timesteps=1000 --config.diffusion.beta_start=1e-4
--config.diffusion.beta_end=0.02. Override any field on the command line the same way.

Full scale (`--config=configs/paper/ddpm_digits.py:full`): the settings of configs/cifar10_ddpm.py
(the paper's CIFAR-10 run: 800K steps at batch 128, the 35.7M-parameter U-Net, dropout 0.1,
EMA 0.9999), evaluated on the whole test split, 50000 samples for FID against the training
split (the paper's protocol: TTUR code, 50000 samples), for a GPU/TPU machine.

The `paper` group (read by experiments/ddpm_paper.py only):
  fixed_var_type      the paper's "fixed isotropic Sigma": fixed_large (sigma_t^2 = beta_t, the
                      DDPM reference code's CIFAR-10 setting) or fixed_small (beta~_t).
  train_eval_examples training images in the Table 1 train-split bound; 0 = as many as the
                      test split holds (a fixed random subset, seed `seed`).
  num_samples         samples per run for the sample-quality scores; 0 = the test-split size.
  sample_batch_size   samples per ancestral-sampling dispatch (global, over devices).
  fd_reference        real images the feature-space Frechet distance compares to: test | train.
  fd_bootstrap        bootstrap resamples for the standard error of that distance (0 = none).
  classifier.*        the small CNN whose penultimate layer is the feature space:
                      features (width of that layer), channels, epochs, batch_size,
                      learning_rate, seed.
  fid_reference       real images for the Inception FID (full-scale path): train | test.
"""
import ml_collections

from configs import cifar10_ddpm, paper
from configs.datasets import digits

SCALES = ("cpu", "full")


def _paper_group(full: bool) -> ml_collections.ConfigDict:
  p = ml_collections.ConfigDict()
  p.fixed_var_type = "fixed_large"
  p.train_eval_examples = 0
  p.num_samples = 50000 if full else 0
  p.sample_batch_size = 1000 if full else 297
  p.fd_reference = "test"
  p.fd_bootstrap = 50
  p.fid_reference = "train"
  c = p.classifier = ml_collections.ConfigDict()
  c.features = 64
  c.channels = 32
  c.epochs = 40 if not full else 10
  c.batch_size = 128
  c.learning_rate = 1e-3
  c.seed = 0
  return p


def get_config(scale: str = "cpu") -> ml_collections.ConfigDict:
  """scale: `cpu` (digits, the default) or `full` (CIFAR-10, the paper's settings)."""
  scale = scale or "cpu"
  if scale not in SCALES:
    raise ValueError(f"config argument (configs/paper/ddpm_digits.py:<scale>) must be one of "
                     f"{list(SCALES)}, got {scale!r}")
  if scale == "full":
    config = cifar10_ddpm.get_config()
    config.eval.num_examples = 0     # the whole test split for the reported bound
    config.eval.num_samples = 0
    config.training.steps_per_eval = config.training.num_steps
    config.paper = _paper_group(full=True)
    return config

  config = digits()
  config.model.ch, config.model.ch_mult, config.model.num_res_blocks = 32, (1, 2), 1
  config.model.attn_resolutions = (4,)
  config.model.dropout = 0.0
  d = config.diffusion
  d.num_timesteps = 200
  d.beta_schedule = "linear"
  d.beta_start, d.beta_end = 1e-4 * 1000 / 200, 0.02 * 1000 / 200   # the paper's, x 1000 / T
  d.mean_type = "eps"              # set per run
  d.var_type = "fixed_large"       # set per run
  d.loss_type = "mse"              # set per run
  d.t_chunk_size = 50              # 4 chunks of 50 timesteps in the bound
  paper.cpu_schedule(config, num_steps=1000, steps_per_log=50)
  config.paper = _paper_group(full=False)
  return config
