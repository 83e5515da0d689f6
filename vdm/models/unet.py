"""The DDPM U-Net (Ho et al. 2020, Appendix B), in Flax linen, NHWC.

A PixelCNN++-style Wide-ResNet backbone: at each of len(ch_mult) resolutions, num_res_blocks
residual blocks (GroupNorm, swish, 3x3 conv, a per-block projection of the timestep embedding
added after the first conv, dropout before the second conv), self-attention blocks at the
resolutions listed in attn_resolutions, a middle ResBlock-Attention-ResBlock, and a mirrored
upsampling path with skip connections from every downsampling-path activation.

Options from Variational Diffusion Models (Kingma et al. 2021): conditioning on the log-SNR gamma
instead of an integer timestep, Fourier features of the input (Appendix C), and a zero-initialized
output convolution.

The CIFAR-10 configuration (ch=128, ch_mult=(1, 2, 2, 2), num_res_blocks=2,
attn_resolutions=(16,), dropout=0.1) has 35.7M parameters, as in the paper.
"""
from __future__ import annotations

import functools
import math
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from vdm import checks
from vdm.models.layers import (check_conditioning, fourier_features, gamma_to_embedding_input,
               timestep_embedding)

# DDPM's `default_init(scale)` is variance_scaling(scale, 'fan_avg', 'uniform').
_default_init = nn.initializers.variance_scaling(1.0, "fan_avg", "uniform")


COMPUTE_DTYPES = ("float32", "bfloat16")


def _check_dtype(dtype: Any) -> None:
  """The compute dtype is float32 or bfloat16 (`vdm.checks.choice`)."""
  try:
    name = jnp.dtype(dtype).name
  except TypeError:
    name = dtype
  checks.choice("dtype", name, COMPUTE_DTYPES)


CONV_IMPLS = ("lax", "matmul")

def conv3x3_matmul(x, kernel, stride: int = 1):
  """3x3 'SAME' convolution as one matrix product (im2col), NHWC.

  The nine shifted windows of the zero-padded input are concatenated on the channel axis
  ([B, Ho, Wo, 9C]) and multiplied by the kernel reshaped to [9C, O], so the forward pass and
  both gradients (d kernel = cols^T dy, d cols = dy kernel^T) are plain GEMMs. Padding follows
  TF/Flax 'SAME': total padding max((Ho-1)*stride + 3 - H, 0), the extra row/column at the end.

  Args:
   x: [B, H, W, C]; kernel: [3, 3, C, O] (HWIO, as nn.Conv stores it); stride: 1 or 2.
  Returns:
   [B, ceil(H/stride), ceil(W/stride), O].
  """
  b, h, w, c = x.shape
  ho, wo = -(-h // stride), -(-w // stride)
  ph, pw = max((ho - 1) * stride + 3 - h, 0), max((wo - 1) * stride + 3 - w, 0)
  xp = jnp.pad(x, ((0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)))
  cols = jnp.concatenate(
    [jax.lax.slice(xp, (0, i, j, 0), (b, i + (ho - 1) * stride + 1,
                     j + (wo - 1) * stride + 1, c), (1, stride, stride, 1))
    for i in range(3) for j in range(3)], axis=-1)
  y = jnp.dot(cols.reshape(b * ho * wo, 9 * c), kernel.reshape(9 * c, -1))
  return y.reshape(b, ho, wo, -1)


class Conv3x3(nn.Module):
  """3x3 'SAME' convolution with bias, NHWC: [B, H, W, C] -> [B, H/strides, W/strides, O].

  Parameters `kernel` [3, 3, C, O] (HWIO) and `bias` [O], exactly as nn.Conv stores them.
  impl='lax': lax.conv_general_dilated; impl='matmul': `conv3x3_matmul` (im2col + one GEMM).
  """

  features: int
  strides: int = 1
  kernel_init: Any = _default_init
  impl: str = "lax"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    kernel = self.param("kernel", self.kernel_init, (3, 3, x.shape[-1], self.features))
    bias = self.param("bias", nn.initializers.zeros, (self.features,))
    x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
    if self.impl == "matmul":
      y = conv3x3_matmul(x, kernel, self.strides)
    else:
      y = jax.lax.conv_general_dilated(x, kernel, (self.strides, self.strides), "SAME",
                      dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return y + bias.astype(self.dtype)


def _group_stats(x, num_groups: int, epsilon: float):
  """Per-example, per-group mean and 1/std of x [B, ..., C]: ([B, G], [B, G]).

  Reduced in two stages, over the positions per channel ([B, C]) and then over the K channels of
  each group, because XLA:CPU reduces [B, H, W, C] -> [B, C] several times faster than
  [B, H, W, G, K] -> [B, G] when K > 1. Variance E[x^2] - E[x]^2, floored at 0, as flax's.
  """
  b, c = x.shape[0], x.shape[-1]
  k = c // num_groups
  axes = tuple(range(1, x.ndim - 1))
  mean = jnp.mean(x, axis=axes).reshape(b, num_groups, k).mean(-1)
  mean_sq = jnp.mean(x * x, axis=axes).reshape(b, num_groups, k).mean(-1)
  return mean, jax.lax.rsqrt(jnp.maximum(mean_sq - mean * mean, 0.0) + epsilon)


def _per_channel(v, x):
  """[B, G] -> [B, 1, ..., 1, C], each group's value repeated over its C / G channels."""
  b, c = x.shape[0], x.shape[-1]
  return jnp.repeat(v, c // v.shape[1], axis=1).reshape((b,) + (1,) * (x.ndim - 2) + (c,))


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def group_norm(x, scale, bias, num_groups: int, epsilon: float = 1e-6):
  """Group normalization (Wu and He 2018, Sec. 3.1): x [B, ..., C] -> [B, ..., C].

  Each example's channels are split into num_groups groups of K = C / num_groups; each group is
  normalized by the mean and variance over its K channels and all positions, then scaled and
  shifted per channel: y = (x - mu) / sqrt(sigma^2 + epsilon) * scale + bias; scale, bias [C].
  The same function as flax's nn.GroupNorm. The gradient is written out (`_group_norm_bwd`) so
  that forward and backward each reduce only [B, ..., C] -> [B, C]; on the machine of
  experiments/bench_train.py this made the small U-Net's forward pass 15% and its Adam step 5%
  faster than with nn.GroupNorm (same parameters and values). Being a `jax.custom_vjp`, it
  supports reverse-mode differentiation (grad, vjp) but not forward mode (jvp).
  """
  return _group_norm_fwd(x, scale, bias, num_groups, epsilon)[0]


def _group_norm_fwd(x, scale, bias, num_groups, epsilon):
  c = x.shape[-1]
  if c % num_groups:
    raise ValueError(f"channels C={c} must be divisible by num_groups={num_groups}")
  mean, rstd = _group_stats(x, num_groups, epsilon)
  y = (x - _per_channel(mean, x)) * (_per_channel(rstd, x) * scale) + bias
  return y, (x, scale, mean, rstd)


def _group_norm_bwd(num_groups, epsilon, res, dy):
  """Gradients of y = xhat * scale + bias, xhat = (x - mu_g) * rstd_g.

  With g = dy * scale and <.>_g the mean over a group's positions and channels (n elements):
  dx = rstd_g * (g - <g>_g - xhat <g xhat>_g), d scale = sum dy xhat, d bias = sum dy
  (the sums over examples and positions). Two [B, ..., C] -> [B, C] reductions in all.
  """
  x, scale, mean, rstd = res
  b, c = x.shape[0], x.shape[-1]
  k = c // num_groups
  axes = tuple(range(1, x.ndim - 1))
  n = k * math.prod(x.shape[1:-1])
  xhat = (x - _per_channel(mean, x)) * _per_channel(rstd, x)
  s1 = jnp.sum(dy, axis=axes)            # [B, C]
  s2 = jnp.sum(dy * xhat, axis=axes)     # [B, C]
  m1 = (s1 * scale).reshape(b, num_groups, k).sum(-1) / n   # <g>_g       [B, G]
  m2 = (s2 * scale).reshape(b, num_groups, k).sum(-1) / n   # <g xhat>_g  [B, G]
  dx = _per_channel(rstd, x) * (dy * scale - _per_channel(m1, x) - xhat * _per_channel(m2, x))
  return dx, s2.sum(0), s1.sum(0)


group_norm.defvjp(_group_norm_fwd, _group_norm_bwd)


class _GroupNorm(nn.Module):
  """`group_norm` with parameters scale [C] (ones) and bias [C] (zeros), named as flax's."""

  num_groups: int
  epsilon: float

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    scale = self.param("scale", nn.initializers.ones, (c,))
    bias = self.param("bias", nn.initializers.zeros, (c,))
    return group_norm(x, scale, bias, self.num_groups, self.epsilon)


class GroupNorm32(nn.Module):
  """GroupNorm whose statistics are computed in float32 whatever the compute dtype.

  Input [B, ..., C] with C divisible by num_groups; output in `dtype`. Parameters: scale [C],
  bias [C] (under the submodule name nn.GroupNorm would have, GroupNorm_0).
  """

  num_groups: int = 32
  epsilon: float = 1e-6
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    y = _GroupNorm(self.num_groups, self.epsilon, name="GroupNorm_0")(x.astype(jnp.float32))
    return y.astype(self.dtype)


class ResnetBlock(nn.Module):
  """DDPM residual block: [B, H, W, Cin], temb [B, E] -> [B, H, W, out_ch]."""

  out_ch: int
  dropout: float
  num_groups: int
  dtype: Any = jnp.float32
  conv_impl: str = "lax"

  @nn.compact
  def __call__(self, x, temb, train: bool):
    c_in = x.shape[-1]
    h = nn.swish(GroupNorm32(self.num_groups, dtype=self.dtype, name="norm1")(x))
    h = Conv3x3(self.out_ch, impl=self.conv_impl, dtype=self.dtype, name="conv1")(h)
    # Project the timestep embedding and add it to every pixel.
    h = h + nn.Dense(self.out_ch, kernel_init=_default_init, dtype=self.dtype,
            name="temb_proj")(nn.swish(temb))[:, None, None, :]
    h = nn.swish(GroupNorm32(self.num_groups, dtype=self.dtype, name="norm2")(h))
    h = nn.Dropout(rate=self.dropout, deterministic=not train)(h)
    # DDPM initializes the last conv of each residual branch at (near) zero.
    h = Conv3x3(self.out_ch, kernel_init=nn.initializers.zeros, impl=self.conv_impl,
          dtype=self.dtype, name="conv2")(h)
    if c_in != self.out_ch:
      # "nin" shortcut: a 1x1 conv, written as a dense layer on the channel axis.
      x = nn.Dense(self.out_ch, kernel_init=_default_init, dtype=self.dtype,
            name="nin_shortcut")(x)
    return x + h


class AttnBlock(nn.Module):
  """Single-head self-attention over the H*W positions: [B, H, W, C] -> [B, H, W, C]."""

  num_groups: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    b, hh, ww, c = x.shape
    h = GroupNorm32(self.num_groups, dtype=self.dtype, name="norm")(x)
    # q, k, v as one dense layer [C, 3C] (parameter count equals three C->C "nin" layers).
    qkv = nn.DenseGeneral((3, c), kernel_init=_default_init, dtype=self.dtype,
               name="qkv")(h.reshape(b, hh * ww, c))
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    w = jnp.einsum("bqc,bkc->bqk", q, k) * (c ** -0.5)
    w = jax.nn.softmax(w.astype(jnp.float32), axis=-1).astype(self.dtype)
    h = jnp.einsum("bqk,bkc->bqc", w, v)
    h = nn.Dense(c, kernel_init=nn.initializers.zeros, dtype=self.dtype,
          name="proj_out")(h)
    return x + h.reshape(b, hh, ww, c)


class Downsample(nn.Module):
  """Halve H and W: a stride-2 3x3 conv, or 2x2 average pooling."""

  with_conv: bool
  dtype: Any = jnp.float32
  conv_impl: str = "lax"

  @nn.compact
  def __call__(self, x):
    if self.with_conv:
      return Conv3x3(x.shape[-1], strides=2, impl=self.conv_impl, dtype=self.dtype,
             name="conv")(x)
    return nn.avg_pool(x, (2, 2), strides=(2, 2))


class Upsample(nn.Module):
  """Double H and W: nearest-neighbour upsampling, then (optionally) a 3x3 conv."""

  with_conv: bool
  dtype: Any = jnp.float32
  conv_impl: str = "lax"

  @nn.compact
  def __call__(self, x):
    b, h, w, c = x.shape
    x = jnp.broadcast_to(x[:, :, None, :, None, :], (b, h, 2, w, 2, c))
    x = x.reshape(b, 2 * h, 2 * w, c)
    if self.with_conv:
      x = Conv3x3(c, impl=self.conv_impl, dtype=self.dtype, name="conv")(x)
    return x


class UNet(nn.Module):
  """DDPM U-Net denoiser.

  Fields:
   ch: base channel count; level i has ch * ch_mult[i] channels.
   ch_mult: channel multiplier per resolution level; the image is halved between levels.
   num_res_blocks: residual blocks per level on the way down (num_res_blocks + 1 up).
   attn_resolutions: spatial sizes (H) at which self-attention follows each residual block.
   dropout: dropout rate inside residual blocks (active only when train=True).
   out_channels: output channels; None = input C. Pass 2C for learned variances (first C the
    mean parameterization, last C the variance).
   resamp_with_conv: 3x3 conv in down/upsampling (else average pooling / plain upsampling).
   num_groups: GroupNorm groups.
   conditioning: 't' (timesteps t in {0..T-1} or real, straight into the sinusoidal
    embedding) or 'gamma' (VDM: the log-SNR gamma, mapped to 1000 * (gamma - gamma_min) /
    (gamma_max - gamma_min) before the embedding).
   gamma_min, gamma_max: the range of gamma for conditioning='gamma'.
   fourier_features: VDM Fourier-feature exponents n; for each, sin and cos(2^n * pi * x) of
    every input channel is concatenated to the input (C -> C * (1 + 2 * len)).
   zero_init_out: zero-initialize the output conv (so the model outputs exactly 0 at init).
   dtype: compute dtype (float32 or bfloat16); parameters are float32, GroupNorm statistics
    and softmax run in float32, the output is float32.
  """

  ch: int = 128
  ch_mult: tuple = (1, 2, 2, 2)
  num_res_blocks: int = 2
  attn_resolutions: tuple = (16,)
  dropout: float = 0.1
  out_channels: Optional[int] = None
  resamp_with_conv: bool = True
  num_groups: int = 32
  conditioning: str = "t"
  gamma_min: float = -13.3
  gamma_max: float = 5.0
  fourier_features: tuple = ()
  zero_init_out: bool = False
  dtype: Any = jnp.float32
  conv_impl: str = "lax"

  def _validate(self, x, t):
    check_conditioning(self.conditioning)
    _check_dtype(self.dtype)
    checks.choice("conv_impl", self.conv_impl, CONV_IMPLS)
    checks.positive_int("ch", self.ch)
    checks.nonnegative_int("num_res_blocks", self.num_res_blocks)
    checks.positive_int("num_groups", self.num_groups)
    if len(self.ch_mult) < 1:
      raise ValueError(f"ch_mult must list at least one channel multiplier, got {self.ch_mult}")
    for m in self.ch_mult:
      if (self.ch * m) % self.num_groups != 0:
        raise ValueError(
          f"ch * ch_mult[i] must be divisible by num_groups={self.num_groups}; got "
          f"ch={self.ch}, ch_mult={self.ch_mult}")
    checks.number("dropout", self.dropout, 0.0, 1.0, high_open=True)
    if x.ndim != 4:
      raise ValueError(f"x must be [B, H, W, C] (NHWC), got shape {x.shape}")
    if not jnp.issubdtype(x.dtype, jnp.floating):
      raise ValueError(f"x must be a float array, got dtype {x.dtype}")
    b, h, w, _ = x.shape
    f = 2 ** (len(self.ch_mult) - 1)
    if h % f or w % f:
      raise ValueError(
        f"x's H and W must be divisible by 2**(len(ch_mult)-1) = {f}; got H={h}, W={w}")
    if t.shape != (b,):
      raise ValueError(f"t must have shape [B] = ({b},), got shape {t.shape}")
    if self.out_channels is not None and self.out_channels < 1:
      raise ValueError(f"out_channels must be None or >= 1, got {self.out_channels}")

  @nn.compact
  def __call__(self, x, t, train: bool = False):
    """x: float [B, H, W, C]; t: [B] timesteps (or gamma); -> float32 [B, H, W, out]."""
    t = jnp.asarray(t)
    self._validate(x, t)
    c_in = x.shape[-1]
    out_ch = c_in if self.out_channels is None else self.out_channels
    num_res = len(self.ch_mult)
    dt = self.dtype

    # Timestep embedding: sinusoidal -> Dense(4ch) -> swish -> Dense(4ch).
    if self.conditioning == "gamma":
      t_in = gamma_to_embedding_input(t, self.gamma_min, self.gamma_max)
    else:
      t_in = t
    temb = timestep_embedding(t_in, self.ch)
    temb = nn.Dense(4 * self.ch, kernel_init=_default_init, dtype=dt, name="temb_dense0")(
      temb.astype(dt))
    temb = nn.Dense(4 * self.ch, kernel_init=_default_init, dtype=dt, name="temb_dense1")(
      nn.swish(temb))

    h = x
    if self.fourier_features:
      h = jnp.concatenate([x, fourier_features(x, self.fourier_features)], axis=-1)
    h = h.astype(dt)

    # Downsampling path.
    ci = self.conv_impl
    hs = [Conv3x3(self.ch, impl=ci, dtype=dt, name="conv_in")(h)]
    for i_level in range(num_res):
      for i_block in range(self.num_res_blocks):
        h = ResnetBlock(self.ch * self.ch_mult[i_level], self.dropout, self.num_groups,
                dt, ci, name=f"down_{i_level}_block_{i_block}")(hs[-1], temb, train)
        if h.shape[1] in self.attn_resolutions:
          h = AttnBlock(self.num_groups, dt, name=f"down_{i_level}_attn_{i_block}")(h)
        hs.append(h)
      if i_level != num_res - 1:
        hs.append(Downsample(self.resamp_with_conv, dt, ci,
                  name=f"down_{i_level}_downsample")(hs[-1]))

    # Middle.
    h = hs[-1]
    c_mid = h.shape[-1]
    h = ResnetBlock(c_mid, self.dropout, self.num_groups, dt, ci, name="mid_block_1")(
      h, temb, train)
    h = AttnBlock(self.num_groups, dt, name="mid_attn_1")(h)
    h = ResnetBlock(c_mid, self.dropout, self.num_groups, dt, ci, name="mid_block_2")(
      h, temb, train)

    # Upsampling path.
    for i_level in reversed(range(num_res)):
      for i_block in range(self.num_res_blocks + 1):
        h = ResnetBlock(self.ch * self.ch_mult[i_level], self.dropout, self.num_groups,
                dt, ci, name=f"up_{i_level}_block_{i_block}")(
          jnp.concatenate([h, hs.pop()], axis=-1), temb, train)
        if h.shape[1] in self.attn_resolutions:
          h = AttnBlock(self.num_groups, dt, name=f"up_{i_level}_attn_{i_block}")(h)
      if i_level != 0:
        h = Upsample(self.resamp_with_conv, dt, ci, name=f"up_{i_level}_upsample")(h)
    assert not hs

    # End.
    h = nn.swish(GroupNorm32(self.num_groups, dtype=dt, name="norm_out")(h))
    out_init = nn.initializers.zeros if self.zero_init_out else _default_init
    h = Conv3x3(out_ch, kernel_init=out_init, impl=ci, dtype=dt, name="conv_out")(h)
    return h.astype(jnp.float32)
