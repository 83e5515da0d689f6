"""experiments/compression.py: bits-back coding at the rate of the bound. The digits DDPM of
experiments/likelihoods.py (the same run: T = 100, learned-range variances, hybrid loss) codes
the whole held-out split; the enumerable models of vdm.elbo, fitted to binarized digits, code
the same images with the exact posterior (rate = -log2 p(x)) and with their encoders (rate =
-ELBO)."""
import ml_collections

from configs import likelihoods_digits


def get_config():
  config = likelihoods_digits.get_config()
  c = config.coding
  c.num_examples, c.batch_size = 0, 100     # all 297 held-out images, 3 lockstep batches
  c.bound_draws = 4                         # calc_bpd averaged over 4 draws per example

  x = config.experiment = ml_collections.ConfigDict()
  x.ddpm_repeats = 16          # encodes with coding.seed = 0..15 (the first through the file)
  x.models = ("bernoulli_mixture", "sbn", "rbm", "vae_bernoulli")
  x.num_latents = 12           # 4096 latent states (mixtures: num_latents + 2 components)
  x.fit_examples = 500         # binarized training images the models are fitted on
  x.fit_steps = 300            # full-batch Adam steps on the exact ELBO
  x.fit_learning_rate = 0.05
  x.model_batch_size = 100     # lockstep batch of the enumerable coders
  return config
