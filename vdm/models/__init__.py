"""Flax (linen) denoisers: the DDPM U-Net and a residual MLP for vector data."""
from vdm.models.layers import fourier_features, gamma_to_embedding_input, timestep_embedding
from vdm.models.mlp import MLPDenoiser
from vdm.models.unet import UNet

__all__ = ["UNet", "MLPDenoiser", "timestep_embedding", "fourier_features",
     "gamma_to_embedding_input"]
