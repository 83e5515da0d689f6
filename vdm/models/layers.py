"""Small building blocks shared by the denoisers in `vdm.models`.

Pure functions of arrays (no parameters): the sinusoidal timestep embedding of DDPM (Ho et al.
2020, Appendix B, after the Transformer's positional encoding) and the Fourier features of the
input used by Variational Diffusion Models (Kingma et al. 2021, Appendix C).
"""
from __future__ import annotations

import math
from typing import Sequence

import jax.numpy as jnp

from vdm import checks

CONDITIONINGS = ("t", "gamma")


def check_conditioning(conditioning: str) -> str:
  """`conditioning` if it is one of `CONDITIONINGS`, else a ValueError naming them."""
  return checks.choice("conditioning", conditioning, CONDITIONINGS)


def timestep_embedding(t, dim: int, max_period: float = 10000.0, dtype=jnp.float32):
  """Sinusoidal embedding of (integer or real) timesteps.

  With half = dim // 2 and frequencies w_i = max_period ** (-i / (half - 1)), i = 0..half-1
  (the DDPM reference code's `get_timestep_embedding`), the embedding is
  [sin(t * w_0), ..., sin(t * w_{half-1}), cos(t * w_0), ..., cos(t * w_{half-1})],
  zero-padded by one column when `dim` is odd.

  Args:
   t: [B] timesteps (int or float), in the units the frequencies expect (steps in 0..T-1).
   dim: embedding width, >= 4 (so that half - 1 >= 1).
   max_period: the slowest period, in units of t.
   dtype: float dtype of the computation and the result (float64 needs 64-bit mode).
  Returns:
   [B, dim] in `dtype`.
  """
  if int(dim) != dim or dim < 4:
    raise ValueError(f"dim must be an integer >= 4, got {dim!r}")
  if max_period <= 0:
    raise ValueError(f"max_period must be > 0, got {max_period!r}")
  t = jnp.asarray(t)
  if t.ndim != 1:
    raise ValueError(f"t must have shape [B], got shape {t.shape}")
  half = dim // 2
  freqs = jnp.exp(-math.log(max_period) / (half - 1) * jnp.arange(half, dtype=dtype))
  args = t.astype(dtype)[:, None] * freqs[None, :]
  emb = jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=1)
  if dim % 2 == 1:
    emb = jnp.pad(emb, ((0, 0), (0, 1)))
  return emb


def gamma_to_embedding_input(gamma, gamma_min: float, gamma_max: float):
  """Map log-SNR values gamma to the timestep scale of `timestep_embedding`.

  VDM (google-research/vdm's ScoreUNet) conditions on t' = (gamma - gamma_min) /
  (gamma_max - gamma_min) in [0, 1] and multiplies by 1000 before the sinusoidal embedding, so
  the embedding sees a value in [0, 1000] like DDPM's integer timesteps.

  Args:
   gamma: [B] log-SNR values (nats; gamma = -log SNR in the VDM paper's sign convention).
  Returns:
   float32 [B].
  """
  if not gamma_max > gamma_min:
    raise ValueError(
      f"gamma_max must be > gamma_min, got gamma_min={gamma_min}, gamma_max={gamma_max}")
  gamma = jnp.asarray(gamma, jnp.float32)
  return 1000.0 * (gamma - gamma_min) / (gamma_max - gamma_min)


def fourier_features(x, exponents: Sequence[int]):
  """VDM Fourier features of the input (Kingma et al. 2021, Appendix C).

  For each exponent n and input channel c: sin(2^n * pi * x_c) and cos(2^n * pi * x_c).

  Args:
   x: [..., C] float.
   exponents: the n's, e.g. (6, 7, 8).
  Returns:
   [..., 2 * C * len(exponents)] in x's dtype (computed in at least float32): all sines (channel-major, exponent-minor), then
   all cosines in the same order.
  """
  exponents = tuple(exponents)
  if not exponents:
    raise ValueError("fourier_features needs at least one exponent")
  for n in exponents:
    if int(n) != n:
      raise ValueError(f"fourier_features exponents must be integers, got {exponents!r}")
  c = x.shape[-1]
  ct = jnp.promote_types(x.dtype, jnp.float32)  # at least float32 (float64 stays float64)
  w = (2.0 ** jnp.asarray(exponents, ct)) * jnp.pi  # [N]
  h = x[..., :, None].astype(ct) * w  # [..., C, N]
  h = h.reshape(x.shape[:-1] + (c * len(exponents),))
  return jnp.concatenate([jnp.sin(h), jnp.cos(h)], axis=-1).astype(x.dtype)
