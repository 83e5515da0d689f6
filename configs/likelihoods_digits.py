"""experiments/likelihoods.py: how tight is the bound? A digits DDPM with T = 100 steps (so that
the K-sample bound, K T network passes per example, stays affordable on a CPU for K = 1000),
learned-range variances trained with the hybrid loss (Nichol & Dhariwal 2021), and a Gaussian
oracle with the Bayes-optimal denoiser where every likelihood is known exactly."""
import ml_collections

from configs.datasets import digits


def get_config():
  config = digits()
  d = config.diffusion
  d.num_timesteps, d.t_chunk_size = 100, 50
  d.beta_schedule, d.mean_type = "cosine", "eps"
  d.var_type, d.loss_type = "learned_range", "hybrid"
  config.training.num_steps = 1500
  config.training.steps_per_eval = 1500
  config.eval.num_samples = 16
  l = config.likelihood
  l.num_examples, l.batch_size = 16, 16
  # K = 1000 on digits is 16 * 1000 * 100 = 1.6M U-Net passes (about 15 min on 2 CPU cores);
  # --config.likelihood.iw_num_samples="(1, 10, 100)" for a quicker table.
  l.iw_num_samples, l.iw_chunk_size = (1, 10, 100, 1000), 25
  l.ode_rtol = l.ode_atol = 1e-5

  config.experiment = x = ml_collections.ConfigDict()
  x.oracle_dim = 4            # Gaussian oracle: data N(mu, diag s^2) of data.gaussian (seed 0)
  x.oracle_num_examples = 64
  x.oracle_num_steps = 20     # T of the VDM discrete-time chain of the oracle
  x.oracle_gamma_min = -10.0  # its fixed linear log-SNR schedule
  x.oracle_gamma_max = 8.0
  x.oracle_iw_num_samples = (1, 10, 100, 1000)
  # Also the exact divergence (64 vector-Jacobian products per evaluation) on digits, the
  # reference for the Hutchinson row (a few minutes on 2 CPU cores with the GEMM convolutions
  # of vdm.objectives.solver_net); the oracle always runs both.
  x.ode_exact_divergence = True
  return config
