"""DDPM on CIFAR-10 as in Ho et al. (2020), Sec. 4 and Appendix B: T = 1000 linear betas
(1e-4 to 0.02), the 35.7M-parameter U-Net (ch 128, multipliers (1, 2, 2, 2), 2 residual
blocks, attention at 16x16, dropout 0.1), eps-prediction with L_simple and fixed variances,
Adam at 2e-4 with 5000 warmup steps, batch 128, random horizontal flips, EMA 0.9999, gradient
clipping at 1.0, 800k steps. Reported: NLL <= 3.75 bits/dim (test), FID 3.17.

Data: the CIFAR-10 python pickle batches (data.data_dir = .../cifar-10-batches-py) or
tensorflow-datasets (data.use_tfds = True). Meant for an accelerator: TPU v3-8 in the paper.
"""
from configs.datasets import cifar10


def get_config():
  config = cifar10()
  config.model.dropout = 0.1
  config.diffusion.num_timesteps = 1000
  config.diffusion.beta_schedule = "linear"
  config.diffusion.mean_type = "eps"
  config.diffusion.var_type = "fixed_large"
  config.diffusion.loss_type = "mse"
  config.optimizer.name = "adam"
  config.optimizer.learning_rate = 2e-4
  config.optimizer.warmup_steps = 5000
  config.optimizer.grad_clip = 1.0
  config.optimizer.ema_rate = 0.9999
  config.training.num_steps = 800000
  config.training.batch_size = 128
  config.training.substeps = 10
  config.training.steps_per_log = 100
  config.training.steps_per_eval = 50000
  config.training.steps_per_save = 5000
  config.training.keep_period = 100000
  config.eval.num_examples = 1000
  config.eval.batch_size = 128
  return config
