"""VDM (Kingma et al. 2021) paper experiments, CPU scale: the base of `experiments/vdm_paper.py`.

`python -m experiments.vdm_paper` trains two continuous-time VDMs from this config, identical but
for the log-SNR schedule (vdm.gamma_type = learned_linear, the config's value, and fixed_linear),
then evaluates the trained denoisers by Monte Carlo:
  (a) the learned-schedule model under the discrete-time bound for T in experiment.discrete_T
      and in continuous time (VDM eqs. 15 and 17), with paired draws;
  (b) the same denoiser's continuous-time bound under other monotone schedules with the same
      endpoints gamma(0), gamma(1) (the invariance of VDM Sec. 5.1, eq. 18);
  (c) learned vs fixed schedule: the bound, its terms and the variance of its estimator.

Training fields: every field of configs/base.py (the training config of configs/digits_vdm.py).
Scale (CPU, 2 cores): scikit-learn digits (8x8x1, 17 levels, 1500 train / 297 test), a U-Net
with 32 base channels, multipliers (1, 2), 1 residual block per level, attention at 4x4,
conditioned on gamma, Fourier features (2^4, 2^5) and a zero-initialized output (the paper:
CIFAR-10, 32 blocks of 128 channels without downsampling, 10M steps at batch 128); Adam at 1e-3
with 100 warmup steps, EMA 0.995, 3000 steps at batch 64. Every field is overridable on the
command line, e.g. --config.training.num_steps=500 --config.experiment.num_draws=16.

Experiment fields (config.experiment):
  discrete_T: the T of the discrete-time bounds of (a).
  alt_schedules: the other schedules of (b), from vdm_paper.ALT_SCHEDULES (cosine: the log-SNR
    of a cosine schedule, 2 log tan(a + (b - a) t), rescaled to the endpoints; quadratic:
    gamma(0) + (gamma(1) - gamma(0)) t^2).
  num_draws: Monte Carlo draws of (t, eps, eps_0) per test example and per setting; draw d
    uses the same key in every setting (paired comparisons).
  full_scale_num_draws: num_draws under --full_scale (10000 CIFAR-10 test images).
  eval_batch_size: test examples per forward pass; num_examples: 0 = the whole test split.
  train_fixed: also train the fixed_linear model of (c).
  seed: the seed of the Monte Carlo keys (training uses config.seed).
"""
import ml_collections

from configs import digits_vdm, paper


def get_config():
  config = digits_vdm.get_config()
  m = config.model
  m.ch, m.ch_mult, m.num_res_blocks, m.attn_resolutions = 32, (1, 2), 1, (4,)
  m.dropout = 0.0
  m.fourier_features = (4, 5)
  m.zero_init_out = True
  v = config.vdm
  v.gamma_type = "learned_linear"     # the model of (a) and (b); (c) adds fixed_linear
  v.gamma_min, v.gamma_max = -13.3, 5.0
  v.num_timesteps = 0                 # trained in continuous time
  v.antithetic = True
  paper.cpu_schedule(config, num_steps=3000, steps_per_log=20)   # dense loss curves

  config.experiment = x = ml_collections.ConfigDict()
  x.discrete_T = (10, 100, 1000)
  x.alt_schedules = ("cosine", "quadratic")
  x.num_draws = 100
  x.full_scale_num_draws = 8
  x.eval_batch_size = 297
  x.num_examples = 0
  x.train_fixed = True
  x.seed = 1
  return config
