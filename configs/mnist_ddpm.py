"""DDPM (Ho et al. 2020) on MNIST 28x28 from the original IDX files: eps-prediction with
L_simple, T = 1000 linear betas, a 3-level U-Net. A laptop/CPU-sized model; scale model.ch
and training.num_steps up on an accelerator. Training settings: the MNIST base."""
from configs.datasets import mnist


def get_config():
  config = mnist()
  config.diffusion.mean_type = "eps"
  config.diffusion.var_type = "fixed_large"
  config.diffusion.loss_type = "mse"
  return config
