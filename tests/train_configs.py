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


def tiny_digits_config(objective: str = "ddpm", num_steps: int = 4) -> ml_collections.ConfigDict:
  """Digits (integer levels: what bits-back coding needs) with a one-level 8-channel U-Net and
  T = 10: compiles in seconds. objective 'ddpm' (fixed_large: an untrained p is still wide
  enough that coded latents rarely leave its window) or 'vdm'
  (continuous time, coded through its 10-step chain)."""
  config = datasets.digits()
  config.model.objective = objective
  config.model.ch, config.model.ch_mult, config.model.num_groups = 8, (1,), 4
  config.model.attn_resolutions = ()
  config.model.zero_init_out = True   # eps_hat starts at 0: p's means within a few std
  config.diffusion.num_timesteps, config.diffusion.t_chunk_size = 10, 10
  # Linear betas up to 0.5 (cosine's 0.999 at T = 10 would put x_{t-1} tens of p's std away
  # from an untrained model's mean, where the coder escapes its windows).
  config.diffusion.beta_start, config.diffusion.beta_end = 1e-3, 0.5
  config.diffusion.var_type, config.diffusion.loss_type = "fixed_large", "mse"
  config.vdm.sample_steps = 10
  config.optimizer.warmup_steps = 1
  t = config.training
  t.num_steps, t.batch_size = num_steps, 16
  t.steps_per_log, t.steps_per_eval, t.steps_per_save = 2, num_steps, 2
  t.num_devices = 1
  config.eval.batch_size, config.eval.num_examples, config.eval.num_samples = 32, 32, 0
  config.coding.num_examples, config.coding.batch_size = 12, 5
  return config


def get_config(name=None):
  """For `python -m vdm.main --config=tests/train_configs.py[:compress]` in subprocess tests."""
  return tiny_digits_config("ddpm") if name == "compress" else toy_config()
