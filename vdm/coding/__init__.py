"""Bits-back coding (BB-ANS; Townsend et al. 2019) with the `constriction` ANS coder.

- `ans`: a `Message` (a stack of 32-bit words under an ANS state) and push/pop of categorical,
  Bernoulli, quantized-Gaussian and uniform symbols, with the parameter canonicalization that
  keeps encoder and decoder bitwise in step; ideal codelengths; a checksum header.
- `enumerable`: `encode` / `decode` of binary data with the enumerable models of
  `vdm.elbo.models` (exact posterior or the model's encoder as q).
- `diffusion`: `encode` / `decode` of discrete data (levels 0..K-1) through the latent chain of a
  DDPM (`vdm.diffusion.ddpm.GaussianDiffusion`), and `encode_vdm` / `decode_vdm` through the
  discrete-time chain of a VDM (`vdm.diffusion.vdm`), BitSwap-ordered (Kingma et al. 2019).

`encode(model, ...)` / `decode(model, ...)` here dispatch on the first argument: a
`GaussianDiffusion` goes to `diffusion.encode` / `diffusion.decode`, an enumerable model of
`vdm.elbo.models` to `enumerable.encode` / `enumerable.decode` (see those for the arguments).
Sizes are in bits.
"""
from vdm.coding import ans, diffusion, enumerable
from vdm.coding.ans import Message, MessageError
from vdm.coding.diffusion import decode_vdm, encode_vdm


def _module_for(model):
  from vdm.diffusion.ddpm import GaussianDiffusion
  return diffusion if isinstance(model, GaussianDiffusion) else enumerable


def encode(model, *args, **kwargs):
  """`diffusion.encode` for a GaussianDiffusion, else `enumerable.encode`."""
  return _module_for(model).encode(model, *args, **kwargs)


def decode(model, *args, **kwargs):
  """`diffusion.decode` for a GaussianDiffusion, else `enumerable.decode`."""
  return _module_for(model).decode(model, *args, **kwargs)


__all__ = ["Message", "MessageError", "ans", "decode", "decode_vdm", "diffusion", "encode",
           "encode_vdm", "enumerable"]
