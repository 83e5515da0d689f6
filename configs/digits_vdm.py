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
  return config
