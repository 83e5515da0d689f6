"""DDPM on 2-D toy data (swiss roll; data.toy_name = two_moons | eight_gaussians) with the
residual MLP denoiser and a continuous Gaussian decoder (the data are real-valued), hybrid loss
with learned-range variances (Nichol & Dhariwal 2021). Minutes on a CPU."""
from configs.datasets import toy2d


def get_config():
  config = toy2d()
  config.data.toy_name = "swiss_roll"
  config.diffusion.num_timesteps = 200
  config.diffusion.beta_schedule = "cosine"
  config.diffusion.var_type = "learned_range"
  config.diffusion.loss_type = "hybrid"
  config.optimizer.learning_rate = 1e-3
  config.optimizer.ema_rate = 0.995
  config.training.num_steps = 5000
  config.training.batch_size = 256
  config.training.steps_per_log = 250
  config.training.steps_per_eval = 5000
  config.training.steps_per_save = 1000
  config.eval.batch_size = 500
  return config
