"""The statistics of the experiment scripts: paired Monte Carlo draws over a test set, standard
errors, paired differences, a bootstrap ratio, and the claim verdict with one wording.

Verdicts: "holds", "does NOT hold", "not resolved" (the Monte Carlo error allows either).
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np

HOLDS, FAILS, UNRESOLVED = "holds", "does NOT hold", "not resolved"


def verdict(holds: Optional[bool]) -> str:
  """True -> 'holds', False -> 'does NOT hold', None -> 'not resolved'."""
  return UNRESOLVED if holds is None else HOLDS if holds else FAILS


def below(estimate: float, se: float, limit: float, z: float = 2.0) -> Optional[bool]:
  """Is the quantity below `limit`? True when estimate + z se < limit, False when
  estimate - z se >= limit, None (not resolved) otherwise."""
  if estimate + z * se < limit:
    return True
  return False if estimate - z * se >= limit else None


def z_score(estimate: float, reference: float, se: float) -> float:
  """(estimate - reference) / se in standard errors; with se == 0 (a single draw or a
  deterministic estimate) 0 when they agree exactly, else +-inf."""
  diff = estimate - reference
  if se > 0:
    return diff / se
  return 0.0 if diff == 0 else math.copysign(math.inf, diff)


def mean_se(values) -> tuple:
  """(mean, standard error of the mean) over the values: std (ddof 1) / sqrt(N); SE 0 if N=1."""
  v = np.asarray(values, np.float64).ravel()
  se = float(v.std(ddof=1) / math.sqrt(v.size)) if v.size > 1 else 0.0
  return float(v.mean()), se


def mc_summary(samples: np.ndarray) -> dict:
  """samples [M, N] (draw, example) -> mean (over both), se (of the mean, from the M per-draw
  test-set means), est_var (one-draw variance per example, averaged over examples)."""
  samples = np.asarray(samples, np.float64)
  m = samples.shape[0]
  if samples.ndim != 2 or m < 2:
    raise ValueError(f"samples must be [M >= 2, N], got shape {samples.shape}")
  draw_means = samples.mean(axis=1)
  return {"mean": float(draw_means.mean()),
          "se": float(draw_means.std(ddof=1) / math.sqrt(m)),
          "est_var": float(samples.var(axis=0, ddof=1).mean())}


def paired_difference(a: np.ndarray, b: np.ndarray) -> dict:
  """Mean and SE of a - b from paired draws [M, N] (per-draw test-set means differenced)."""
  s = mc_summary(np.asarray(a, np.float64) - np.asarray(b, np.float64))
  return {"mean": s["mean"], "se": s["se"]}


def variance_ratio(a: np.ndarray, b: np.ndarray, num_boot: int = 1000, seed: int = 0) -> dict:
  """Ratio of one-draw estimator variances, mean_n Var_m a[m, n] / mean_n Var_m b[m, n], and its
  standard error by a paired bootstrap over the N examples (`num_boot` resamples)."""
  va = np.asarray(a, np.float64).var(axis=0, ddof=1)
  vb = np.asarray(b, np.float64).var(axis=0, ddof=1)
  if va.shape != vb.shape:
    raise ValueError(f"a and b must have the same shape [M, N], got {np.shape(a)}, {np.shape(b)}")
  idx = np.random.default_rng(seed).integers(0, va.size, (num_boot, va.size))
  boot = va[idx].mean(axis=1) / vb[idx].mean(axis=1)
  return {"ratio": float(va.mean() / vb.mean()), "se": float(boot.std(ddof=1))}


def paired_draws(draw_fn, den_params, gamma_params, x, key, num_draws: int,
                 batch_size: int) -> dict:
  """Per-draw, per-example values of draw_fn(den_params, gamma_params, x_batch, key) -> dict of
  [B] arrays, as a dict of float64 [num_draws, N] (the input of mc_summary and
  paired_difference).

  Draw d, batch b uses key fold_in(fold_in(key, d), b): identical across settings (paired).
  """
  import jax
  import jax.numpy as jnp
  n = x.shape[0]
  batch_size = min(batch_size, n)
  # Pad the last batch with the first examples (dropped below): one compilation per setting.
  num_batches = -(-n // batch_size)
  pad = num_batches * batch_size - n
  xp = jnp.concatenate([x, x[:pad]]) if pad else x
  out = None
  for d in range(num_draws):
    kd = jax.random.fold_in(key, d)
    parts = []
    for b in range(num_batches):
      xb = xp[b * batch_size:(b + 1) * batch_size]
      parts.append(jax.device_get(draw_fn(den_params, gamma_params, xb,
                                          jax.random.fold_in(kd, b))))
    row = {k: np.concatenate([p[k] for p in parts])[:n].astype(np.float64) for k in parts[0]}
    if out is None:
      out = {k: np.empty((num_draws, n)) for k in row}
    for k, v in row.items():
      out[k][d] = v
  return out
