"""Gaussian diffusion and its variational bounds (DESIGN.md, `vdm.diffusion`)."""
from vdm.diffusion.schedules import BETA_SCHEDULES, get_beta_schedule
from vdm.diffusion.gaussian import (bits_per_dim, discretized_gaussian_log_likelihood,
                                    gaussian_log_likelihood, mean_flat, nats_to_bits, normal_kl,
                                    sum_flat)
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
