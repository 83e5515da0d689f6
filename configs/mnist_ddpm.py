"""DDPM (Ho et al. 2020) on MNIST 28x28 from the original IDX files: eps-prediction with
L_simple, T = 1000 linear betas, a 3-level U-Net. A laptop/CPU-sized MNIST run; scale
model.ch and training.num_steps up on an accelerator."""
from configs.datasets import mnist


def get_config():
  config = mnist()
  config.diffusion.mean_type = "eps"
  config.diffusion.var_type = "fixed_large"
  config.diffusion.loss_type = "mse"
  config.optimizer.learning_rate = 2e-4
  config.optimizer.warmup_steps = 1000
  config.optimizer.ema_rate = 0.9999
  config.training.num_steps = 100000
  config.training.batch_size = 128
  config.training.steps_per_log = 200
  config.training.steps_per_eval = 10000
  config.training.steps_per_save = 2000
  config.eval.num_examples = 1000
  config.eval.batch_size = 250
  return config
