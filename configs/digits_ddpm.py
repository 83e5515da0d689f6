"""The embedded default: DDPM (Ho et al. 2020) on scikit-learn digits, a few minutes on a CPU.

Reproduces nothing from a paper; it exercises the whole system at laptop scale: eps-prediction
trained with L_simple, fixed variances, T = 1000 linear betas; ends with the bound
decomposition (bits/dim, DIR/eval/) and a grid of samples (DIR/samples/). Training settings
are the digits base (configs/datasets.py).
"""
from configs.datasets import digits


def get_config():
  config = digits()
  config.diffusion.num_timesteps = 1000
  config.diffusion.beta_schedule = "linear"
  config.diffusion.mean_type = "eps"
  config.diffusion.var_type = "fixed_large"
  config.diffusion.loss_type = "mse"
  return config
