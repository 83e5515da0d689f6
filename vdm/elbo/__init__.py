"""Exact variational bounds for models whose discrete latents can be enumerated."""
from vdm.elbo.enumerate import (DEFAULT_CHUNK_SIZE, StateSpace, bound_report, check_report, elbo,
                                enumerate_states, kl_to_posterior, log_evidence, posterior)

__all__ = ["DEFAULT_CHUNK_SIZE", "StateSpace", "bound_report", "check_report", "elbo",
           "enumerate_states", "kl_to_posterior", "log_evidence", "posterior"]
