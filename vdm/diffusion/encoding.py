"""The pixel encoding of DESIGN.md: integer levels <-> model space [-1, 1], and dequantization.

Pure JAX (and one closed form); nothing here reads files. Integer pixels v in {0, ..., K-1}
(K = num_levels) map to x = 2v/(K-1) - 1, so level 0 is -1 and level K-1 is +1, and the
discretized decoder of level v owns the bin [x - 1/(K-1), x + 1/(K-1)) (edges at +-inf for the
end levels). Continuous data (num_levels None) pass through unchanged.
"""
from __future__ import annotations

import math
from typing import Optional

import jax
import jax.numpy as jnp

from vdm import checks


def encode(v: jax.Array, num_levels: Optional[int], dtype=jnp.float32) -> jax.Array:
  """Integer pixels v in {0..K-1} -> x = 2v/(K-1) - 1 in [-1, 1] (DESIGN.md).

  Computed as (2v - (K-1)) / (K-1) so that both endpoints are exact in float32.
  For continuous data (num_levels None) x = v, cast to `dtype`.

  Args: v: any shape, integer (or float) values. Returns: `dtype` array of the same shape.
  """
  if num_levels is None:
    return jnp.asarray(v, dtype)
  k1 = checks.num_levels("num_levels", num_levels) - 1
  return (2.0 * jnp.asarray(v, dtype) - k1) / k1


def decode(x: jax.Array, num_levels: Optional[int]) -> jax.Array:
  """x in model space -> nearest integer level, clipped to {0..K-1}; int32, same shape.

  Ties round up: level v owns x in [encode(v) - 1/(K-1), encode(v) + 1/(K-1)), which is
  exactly the support of `dequantize(.., v, K)`. For continuous data (num_levels None)
  returns x unchanged.
  """
  if num_levels is None:
    return jnp.asarray(x)
  k1 = checks.num_levels("num_levels", num_levels) - 1
  v = jnp.floor((jnp.asarray(x) + 1.0) * (0.5 * k1) + 0.5)
  return jnp.clip(v, 0, k1).astype(jnp.int32)


def dequantize(key: jax.Array, v: jax.Array, num_levels: int, dtype=jnp.float32) -> jax.Array:
  """Uniform dequantization: x = encode(v + u - 1/2) with u ~ U[0, 1) iid per element.

  Scaling: with y = v + u in [0, K), x = (2y - K)/(K - 1), i.e. x = encode(v) + (2u - 1)/(K-1),
  uniform on the bin [encode(v) - 1/(K-1), encode(v) + 1/(K-1)) of half-width 1/(K-1) that
  the discretized decoder assigns to v; dx/dy = 2/(K-1). See `dequantization_offset_bpd`.

  Args: key: PRNG key; v: integer pixels, any shape. Returns: `dtype`, same shape as v.
  """
  k1 = checks.num_levels("num_levels", num_levels) - 1
  u = jax.random.uniform(key, jnp.shape(v), dtype)
  return encode(v, num_levels, dtype) + (2.0 * u - 1.0) / k1


def dequantization_offset_bpd(num_levels: int) -> float:
  """Bits/dim to add to a continuous bound in x-space to bound the discrete NLL: log2((K-1)/2).

  Derivation (one dimension; dimensions add, so the per-dimension offset is the same). A
  continuous density p_x on x defines discrete probabilities of integer v through the
  dequantization y = v + u, u ~ U[0, 1), and the affine map x = (2y - K)/(K - 1) of
  `dequantize` (dx/dy = a = 2/(K-1)). The density of y is p_y(y) = p_x(x(y)) |a|, so
      P(v) = int_0^1 p_y(v + u) du >= exp E_u[log p_y(v + u)]                (Jensen)
           = exp( E_u[log p_x(x)] + log|a| ),
  hence, in bits,
      -log2 P(v) <= E_u[-log2 p_x(x)] - log2|dx/dy| = E_u[-log2 p_x(x)] + log2((K-1)/2).
  Dividing by D: discrete bpd <= continuous bpd in x-space + log2((K-1)/2), with equality when
  p_x is constant on each bin. For K = 256 the offset is log2(127.5) = 6.9944 bits/dim (the
  often quoted log2(128) = 7 belongs to the scaling x = 2y/K - 1 instead).
  """
  return math.log2((checks.num_levels("num_levels", num_levels) - 1) / 2.0)
