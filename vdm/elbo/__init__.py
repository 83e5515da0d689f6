"""Exact variational bounds for models whose discrete latents can be enumerated, and
importance-weighted (IWAE, Renyi) bounds from samples of q(h|x)."""
from vdm.elbo.enumerate import (DEFAULT_CHUNK_SIZE, StateSpace, bound_report, check_report, elbo,
                                enumerate_states, kl_to_posterior, log_evidence, posterior)
from vdm.elbo.iwae import iwae_bound

__all__ = ["DEFAULT_CHUNK_SIZE", "StateSpace", "bound_report", "check_report", "elbo",
           "enumerate_states", "iwae_bound", "kl_to_posterior", "log_evidence", "posterior"]
