"""Tiny configs for the training-system tests (seconds to compile and run on a CPU)."""
import ml_collections

from configs import datasets


def toy_config(num_steps: int = 6, batch_size: int = 16) -> ml_collections.ConfigDict:
  """DDPM on two moons with a small MLP: compiles in seconds."""
  config = datasets.toy2d()
  config.data.toy_name = "two_moons"
  config.data.num_train, config.data.num_test = 512, 64
  config.model.mlp_hidden, config.model.mlp_num_blocks = 32, 1
  config.diffusion.num_timesteps = 20
  config.diffusion.beta_schedule = "cosine"
  config.diffusion.var_type = "learned_range"
  config.diffusion.loss_type = "hybrid"
  config.diffusion.t_chunk_size = 10
  config.optimizer.learning_rate = 1e-3
  config.optimizer.ema_rate = 0.9
  t = config.training
  t.num_steps, t.batch_size = num_steps, batch_size
  t.steps_per_log, t.steps_per_eval, t.steps_per_save = 2, num_steps, 2
  t.num_devices = 1
  config.eval.batch_size, config.eval.num_examples = 32, 64
  return config


def digits_config(num_steps: int = 100) -> ml_collections.ConfigDict:
  """The default digits DDPM, shrunk: a 2-level U-Net with 16 base channels, T = 100."""
  from configs import digits_ddpm
  config = digits_ddpm.get_config()
  config.model.ch, config.model.num_groups = 16, 8
  config.diffusion.num_timesteps = 100
  config.diffusion.t_chunk_size = 50
  config.optimizer.warmup_steps = 10
  config.optimizer.ema_rate = 0.8
  t = config.training
  t.num_steps, t.batch_size = num_steps, 32
  t.steps_per_log, t.steps_per_eval, t.steps_per_save = 10, num_steps, num_steps
  t.num_devices = 1
  config.eval.batch_size, config.eval.num_examples, config.eval.num_samples = 100, 100, 4
  return config


def get_config():
  """For `python -m vdm.main --config=tests/train_configs.py` in subprocess tests."""
  return toy_config()
