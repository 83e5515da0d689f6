"""A residual MLP denoiser for vector data [B, D] (2-D toys, the Gaussian oracle).

Same interface as `vdm.models.UNet`: `model.apply(variables, x, t, train=False)`, with t either a
timestep in {0..T-1} (conditioning='t') or a log-SNR gamma (conditioning='gamma', mapped as in
VDM). Architecture: Dense(x) -> num_blocks pre-norm residual blocks, each
LayerNorm -> swish -> Dense -> + Dense(temb) -> swish -> dropout -> Dense, added to the stream ->
LayerNorm -> swish -> Dense(out_dim).
"""
from __future__ import annotations

from typing import Optional

import flax.linen as nn
import jax.numpy as jnp

from vdm import checks
from vdm.models.layers import check_conditioning, gamma_to_embedding_input, timestep_embedding


class MLPBlock(nn.Module):
  """Residual block: h [B, hidden], temb [B, E] -> [B, hidden]."""

  hidden: int
  dropout: float

  @nn.compact
  def __call__(self, h, temb, train: bool):
    y = nn.Dense(self.hidden, name="dense1")(nn.swish(nn.LayerNorm(name="norm")(h)))
    y = y + nn.Dense(self.hidden, name="temb_proj")(temb)
    y = nn.Dropout(rate=self.dropout, deterministic=not train)(nn.swish(y))
    y = nn.Dense(self.hidden, name="dense2")(y)
    return h + y


class MLPDenoiser(nn.Module):
  """Residual MLP denoiser.

  Fields:
   hidden: width of the residual stream and of the timestep embedding.
   num_blocks: residual blocks.
   out_dim: output width; None = input D (pass 2D for learned variances).
   dropout: dropout rate inside blocks (active only when train=True; 'dropout' rng).
   conditioning: 't' (timesteps) or 'gamma' (log-SNR, mapped to 1000 * (gamma - gamma_min) /
    (gamma_max - gamma_min) before the sinusoidal embedding, as in VDM).
   gamma_min, gamma_max: the gamma range for conditioning='gamma'.
   zero_init_out: zero-initialize the output layer (output exactly 0 at init).
  """

  hidden: int = 256
  num_blocks: int = 3
  out_dim: Optional[int] = None
  dropout: float = 0.0
  conditioning: str = "t"
  gamma_min: float = -13.3
  gamma_max: float = 5.0
  zero_init_out: bool = False

  @nn.compact
  def __call__(self, x, t, train: bool = False):
    """x: float [B, D]; t: [B] timesteps (or gamma) -> float32 [B, out_dim]."""
    check_conditioning(self.conditioning)
    checks.integer("hidden", self.hidden, minimum=4)
    checks.nonnegative_int("num_blocks", self.num_blocks)
    checks.number("dropout", self.dropout, 0.0, 1.0, high_open=True)
    t = jnp.asarray(t)
    if x.ndim != 2:
      raise ValueError(f"x must be [B, D], got shape {x.shape}")
    if t.shape != (x.shape[0],):
      raise ValueError(f"t must have shape [B] = ({x.shape[0]},), got shape {t.shape}")
    if self.out_dim is not None and self.out_dim < 1:
      raise ValueError(f"out_dim must be None or >= 1, got {self.out_dim}")
    out_dim = x.shape[-1] if self.out_dim is None else self.out_dim

    if self.conditioning == "gamma":
      t = gamma_to_embedding_input(t, self.gamma_min, self.gamma_max)
    temb = timestep_embedding(t, self.hidden)
    temb = nn.Dense(self.hidden, name="temb_dense0")(temb)
    temb = nn.swish(nn.Dense(self.hidden, name="temb_dense1")(nn.swish(temb)))

    h = nn.Dense(self.hidden, name="dense_in")(x.astype(jnp.float32))
    for i in range(self.num_blocks):
      h = MLPBlock(self.hidden, self.dropout, name=f"block_{i}")(h, temb, train)
    h = nn.swish(nn.LayerNorm(name="norm_out")(h))
    init = nn.initializers.zeros if self.zero_init_out else nn.initializers.lecun_normal()
    return nn.Dense(out_dim, kernel_init=init, name="dense_out")(h)
