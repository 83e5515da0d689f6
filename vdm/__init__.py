"""vdm: variational bounds on log-likelihood (exact ELBOs, DDPM and VDM bounds)."""
__version__ = "0.1.0"
