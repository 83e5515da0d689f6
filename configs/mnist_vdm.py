"""VDM (Kingma et al. 2021) on MNIST 28x28: continuous-time bound, learned linear log-SNR
schedule between gamma_min = -13.3 and gamma_max = 5, Fourier features, zero-init output."""
from configs.datasets import mnist


def get_config():
  config = mnist()
  config.model.objective = "vdm"
  config.model.fourier_features = (6, 7)
  config.model.zero_init_out = True
  config.vdm.gamma_type = "learned_linear"
  config.vdm.num_timesteps = 0
  config.optimizer.name = "adamw"
  config.optimizer.learning_rate = 2e-4
  config.optimizer.weight_decay = 0.01
  config.optimizer.ema_rate = 0.9999
  config.training.num_steps = 100000
  config.training.batch_size = 128
  config.training.steps_per_log = 200
  config.training.steps_per_eval = 10000
  config.training.steps_per_save = 2000
  config.eval.num_examples = 1000
  config.eval.batch_size = 250
  return config
