"""Gaussian diffusion and its variational bounds (DESIGN.md, `vdm.diffusion`).

Units rule (every module here). Log-probabilities, KLs, bound terms and losses are in nats,
except where a name says bits: a value is in bits per dimension (nats / (D ln 2), D the number
of data dimensions) exactly when the function that returns it, or its dict key, has `bpd` in
its name, or when it comes from `ddpm` (the DDPM bound, which DESIGN.md reports term by term in
bits per dimension). So:
- `gaussian`: elementwise nats; `nats_to_bits` returns bits, `bits_per_dim` bits per dimension.
- `ddpm` (`GaussianDiffusion`, `rate_distortion`): bits per dimension for every bound term and
  loss (`vb_terms_bpd`, `prior_bpd`, `calc_bpd` and all of its `*_bpd` and `vb` entries,
  `training_losses`' `loss` and `vb`, `rate_distortion`'s `rate`).
- `vdm`, `oracles`: nats per example (summed over the data dimensions); `vdm.losses_to_bpd`
  converts a dict of them to bits per dimension.
Squared errors (`mse`, `xstart_mse`, L_simple, and `training_losses`' `loss` for loss_type
`mse`) are in squared data units, and `timesteps` returns probabilities and weights: none of
these is an information quantity. The log-SNR gamma (`schedules`) is dimensionless.
"""
from vdm.diffusion.schedules import BETA_SCHEDULES, get_beta_schedule
from vdm.diffusion.gaussian import (bits_per_dim, discretized_gaussian_log_likelihood, expm1mx,
                                    gaussian_log_likelihood, log_normal_cdf, mean_flat,
                                    nats_to_bits, normal_kl, sum_flat)
from vdm.diffusion.ddpm import (LOSS_TYPES, MEAN_TYPES, VAR_TYPES, GaussianDiffusion,
                                rate_distortion)
from vdm.diffusion.timesteps import (ImportanceState, uniform_sample)
from vdm.diffusion.timesteps import init as importance_init
from vdm.diffusion.timesteps import probabilities as importance_probabilities
from vdm.diffusion.timesteps import sample as importance_sample
from vdm.diffusion.timesteps import update as importance_update
from vdm.diffusion import timesteps
# VDM (Kingma et al. 2021): log-SNR schedules, the VDM bound and sampler, and exact oracles.
from vdm.diffusion.schedules import (GAMMA_SCHEDULES, FixedLinearGamma, LearnedLinearGamma,
                                     LearnedMonotoneGamma, alpha_sigma_from_gamma,
                                     get_gamma_schedule, snr_from_gamma)
from vdm.diffusion.vdm import losses_to_bpd, vdm_losses
from vdm.diffusion.vdm import sample as vdm_sample
from vdm.diffusion import oracles, vdm
