"""VDM on CIFAR-10 as in Kingma et al. (2021), Appendix B / google-research/vdm's
cifar10.py: continuous-time bound, learned linear log-SNR schedule with gamma_min = -13.3 and
gamma_max = 5, a U-Net without downsampling (32 residual blocks at 32x32, 128 channels in the
paper) conditioned on gamma, Fourier features, zero-init output, AdamW (lr 2e-4, b2 0.99,
weight decay 0.01), EMA 0.9999, batch 128, 10M steps. Reported: 2.65 bits/dim (test).

With model.ch_mult = (1,) our U-Net has one resolution level, i.e. the paper's network without
downsampling: 32 residual blocks down and 33 up at 32x32, with the middle attention block.
"""
from configs.datasets import cifar10


def get_config():
  config = cifar10()
  config.model.objective = "vdm"
  config.model.ch = 128
  config.model.ch_mult = (1,)
  config.model.num_res_blocks = 32
  config.model.attn_resolutions = ()
  config.model.dropout = 0.1
  config.model.fourier_features = (6, 7)
  config.model.zero_init_out = True
  config.data.random_flip = False
  config.vdm.gamma_type = "learned_linear"
  config.vdm.gamma_min, config.vdm.gamma_max = -13.3, 5.0
  config.vdm.num_timesteps = 0
  config.optimizer.name = "adamw"
  config.optimizer.learning_rate = 2e-4
  config.optimizer.b2 = 0.99
  config.optimizer.weight_decay = 0.01
  config.optimizer.grad_clip = 1.0
  config.optimizer.ema_rate = 0.9999
  config.training.num_steps = 10_000_000
  config.training.batch_size = 128
  config.training.substeps = 10
  config.training.steps_per_log = 1000
  config.training.steps_per_eval = 100000
  config.training.steps_per_save = 10000
  config.training.keep_period = 500000
  config.eval.num_examples = 1000
  config.eval.batch_size = 128
  return config
