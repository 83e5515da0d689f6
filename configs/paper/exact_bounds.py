"""Exact bounds (experiments/exact_bounds.py): the settings of its three parts.

(i) `elbo`: experiments/elbo_gap.py's enumerable models; (ii) `discrete`:
experiments/discrete_diffusion_exact.py's diffusion; (iii) `gaussian`: Gaussian data with the
Bayes-optimal denoiser, closed forms and Monte Carlo checks. `get_config(True)` (the script's
--full_scale) enlarges the enumerations and T, still for a CPU.
"""
import ml_collections


def get_config(full_scale=False) -> ml_collections.ConfigDict:
  """Settings of the three parts. full_scale: larger enumerations and longer T (still CPU)."""
  c = ml_collections.ConfigDict()
  c.elbo = e = ml_collections.ConfigDict()      # experiments/elbo_gap.py's settings
  e.models = ("bernoulli_mixture", "gaussian_mixture", "sbn", "rbm", "vae_bernoulli",
              "vae_gaussian")
  e.num_examples = 1797 if full_scale else 300
  e.num_steps = 1000 if full_scale else 300
  e.learning_rate = 0.02
  e.em_iters = 100 if full_scale else 50
  e.num_latents = 14 if full_scale else 8
  e.seed = 0
  c.discrete = d = ml_collections.ConfigDict()  # experiments/discrete_diffusion_exact.py's
  d.num_vars, d.num_categories, d.num_steps = (2, 4, 4) if full_scale else (2, 3, 3)
  d.schedule = "linear"
  d.beta_start, d.beta_end = 0.1, 0.5
  d.data_concentration = 1.0
  d.init_scale = 1.0
  d.train_steps = 1000 if full_scale else 300
  d.learning_rate = 0.1
  d.seed = 0
  c.gaussian = g = ml_collections.ConfigDict()
  g.dim = 8
  g.s_min, g.s_max = 0.02, 0.5      # data std per dimension, geometrically spaced
  g.seed = 0                         # of mu ~ U(-0.5, 0.5)^D and the Monte Carlo draws
  g.T_list = ((10, 100, 1000, 10000, 100000, 1000000) if full_scale else
              (10, 100, 1000, 10000, 100000))
  g.gamma_min, g.gamma_max = -13.3, 5.0   # VDM's default endpoints (fixed linear schedule)
  g.vp_beta_min, g.vp_beta_max = 0.1, 20.0   # the DDPM linear schedule's continuous process
  g.mc_T = 100
  g.mc_num_examples = 100000 if full_scale else 20000
  return c
