"""VDM (Kingma et al. 2021) on MNIST 28x28: continuous-time bound, learned linear log-SNR
schedule between gamma_min = -13.3 and gamma_max = 5, Fourier features, zero-init output,
AdamW with weight decay 0.01 (as the paper)."""
from configs.datasets import mnist


def get_config():
  config = mnist()
  config.model.objective = "vdm"
  config.model.fourier_features = (6, 7)
  config.model.zero_init_out = True
  config.vdm.gamma_type = "learned_linear"
  config.vdm.num_timesteps = 0
  config.optimizer.name = "adamw"
  config.optimizer.weight_decay = 0.01
  config.optimizer.warmup_steps = 0
  return config
