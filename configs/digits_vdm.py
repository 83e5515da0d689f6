"""VDM (Kingma et al. 2021) on scikit-learn digits: continuous-time bound, learned linear
log-SNR schedule, Fourier features; a CPU-sized companion of the default DDPM config."""
from configs.datasets import digits


def get_config():
  config = digits()
  config.model.objective = "vdm"
  config.model.fourier_features = (4, 5)
  config.model.zero_init_out = True
  config.vdm.gamma_type = "learned_linear"
  config.vdm.gamma_min, config.vdm.gamma_max = -13.3, 5.0
  config.vdm.num_timesteps = 0
  config.vdm.sample_steps = 200
  config.optimizer.learning_rate = 1e-3
  config.optimizer.warmup_steps = 100
  config.optimizer.ema_rate = 0.995
  config.training.num_steps = 2000
  config.training.batch_size = 64
  config.training.steps_per_log = 100
  config.training.steps_per_eval = 2000
  config.training.steps_per_save = 500
  config.eval.batch_size = 100
  return config
