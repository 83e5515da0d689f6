"""The embedded default: DDPM (Ho et al. 2020) on scikit-learn digits, a few minutes on a CPU.

Reproduces nothing from a paper; it exercises the whole system at laptop scale: eps-prediction
trained with L_simple, fixed variances, T = 1000 linear betas; ends with the bound
decomposition (bits/dim, DIR/eval/) and a grid of samples (DIR/samples/).
"""
from configs.datasets import digits


def get_config():
  config = digits()
  config.diffusion.num_timesteps = 1000
  config.diffusion.beta_schedule = "linear"
  config.diffusion.mean_type = "eps"
  config.diffusion.var_type = "fixed_large"
  config.diffusion.loss_type = "mse"
  config.optimizer.learning_rate = 1e-3
  config.optimizer.warmup_steps = 100
  config.optimizer.ema_rate = 0.995
  config.training.num_steps = 2000
  config.training.batch_size = 64
  config.training.substeps = 1
  config.training.steps_per_log = 100
  config.training.steps_per_eval = 2000
  config.training.steps_per_save = 500
  config.eval.batch_size = 100
  return config
