"""Per-data-set bases on top of `base.get_base_config()`."""
import os

from configs.base import get_base_config

# The original MNIST files shipped beside the repository (../shared/data/mnist).
SHARED_MNIST = os.path.normpath(os.path.join(os.path.dirname(__file__), "..", "..", "shared",
                                             "data", "mnist"))


def digits():
  """scikit-learn digits: 8x8x1, 17 levels, 1500 train / 297 test. CPU-sized: a few minutes
  of training on 2 cores, the bound evaluated on 100 test images (--mode=bpd: all 297)."""
  config = get_base_config()
  config.data.dataset = "digits"
  config.model.ch, config.model.ch_mult, config.model.attn_resolutions = 32, (1, 2), (4,)
  config.optimizer.learning_rate = 1e-3
  config.optimizer.warmup_steps = 100
  config.optimizer.ema_rate = 0.995
  t = config.training
  t.num_steps, t.batch_size = 2000, 64
  t.steps_per_log, t.steps_per_eval, t.steps_per_save = 100, 2000, 500
  config.eval.batch_size, config.eval.num_examples = 100, 100
  return config


def mnist():
  """MNIST from the original IDX files: 28x28x1, 256 levels, 60000 / 10000."""
  config = get_base_config()
  config.data.dataset = "mnist"
  config.data.data_dir = SHARED_MNIST
  config.model.ch, config.model.ch_mult, config.model.num_res_blocks = 32, (1, 2, 2), 1
  config.model.attn_resolutions = (7,)
  config.optimizer.learning_rate = 2e-4
  config.optimizer.warmup_steps = 1000
  config.optimizer.ema_rate = 0.9999
  t = config.training
  t.num_steps, t.batch_size = 100000, 128
  t.steps_per_log, t.steps_per_eval, t.steps_per_save = 200, 10000, 2000
  config.eval.batch_size, config.eval.num_examples = 250, 1000
  return config


def cifar10():
  """CIFAR-10 from the python pickle batches (data.data_dir) or tfds: 32x32x3, 256 levels."""
  config = get_base_config()
  config.data.dataset = "cifar10"
  config.data.random_flip = True
  config.model.ch, config.model.ch_mult, config.model.num_res_blocks = 128, (1, 2, 2, 2), 2
  config.model.attn_resolutions, config.model.num_groups = (16,), 32
  return config


def toy2d():
  """2-D toy distributions (continuous vectors) with the residual MLP denoiser."""
  config = get_base_config()
  config.data.dataset = "toy2d"
  config.model.denoiser = "mlp"
  config.eval.num_samples = 0
  return config


def gaussian(dim: int = 8):
  """Synthetic Gaussian data whose exact log-likelihood is known (vdm.data.gaussian_params)."""
  config = get_base_config()
  config.data.dataset = "gaussian"
  config.data.dim = dim
  config.model.denoiser = "mlp"
  config.eval.num_samples = 0
  return config
