"""Noise schedules as float64 NumPy tables.

A beta schedule is the variance sequence beta_1..beta_T of the forward process
q(x_t | x_{t-1}) = N(sqrt(1 - beta_t) x_{t-1}, beta_t I) (Ho et al. 2020, eq. 2). Tables are
built in float64 on the host and cast to the compute dtype only when gathered (DESIGN.md,
"Precision"). Index t = 0..T-1 of the returned array is the paper's beta_{t+1}.
"""
from __future__ import annotations

import math

import numpy as np

BETA_SCHEDULES = ("linear", "cosine", "quad", "const", "jsd")


def _check_num_timesteps(num_timesteps) -> int:
  if isinstance(num_timesteps, bool) or int(num_timesteps) != num_timesteps or num_timesteps < 1:
    raise ValueError(f"num_timesteps must be a positive integer, got {num_timesteps!r}")
  return int(num_timesteps)


def linear_betas(num_timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> np.ndarray:
  """DDPM's schedule (Ho et al. 2020, Sec. 4): betas linear from 1e-4 to 0.02. float64 [T]."""
  return np.linspace(beta_start, beta_end, num_timesteps, dtype=np.float64)


def quad_betas(num_timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> np.ndarray:
  """sqrt(beta) linear between sqrt(beta_start) and sqrt(beta_end). float64 [T]."""
  return np.linspace(beta_start**0.5, beta_end**0.5, num_timesteps, dtype=np.float64) ** 2


def const_betas(num_timesteps: int, beta: float = 0.02) -> np.ndarray:
  """A constant beta. float64 [T]."""
  return np.full(num_timesteps, beta, dtype=np.float64)


def jsd_betas(num_timesteps: int) -> np.ndarray:
  """beta_t = 1 / (T - t + 1) for t = 1..T: 1/T, 1/(T-1), ..., 1 (Sohl-Dickstein et al. 2015)."""
  return 1.0 / np.linspace(num_timesteps, 1, num_timesteps, dtype=np.float64)


def cosine_alphas_cumprod(t: np.ndarray, s: float = 0.008) -> np.ndarray:
  """alpha_bar(t) = f(t) / f(0), f(t) = cos^2(((t + s) / (1 + s)) pi / 2) for t in [0, 1].

  Nichol & Dhariwal (2021), eq. 17. float64, same shape as t.
  """
  f = lambda u: np.cos((u + s) / (1.0 + s) * math.pi / 2) ** 2
  return f(np.asarray(t, np.float64)) / f(0.0)


def cosine_betas(num_timesteps: int, s: float = 0.008, max_beta: float = 0.999) -> np.ndarray:
  """beta_t = min(1 - alpha_bar(t/T) / alpha_bar((t-1)/T), max_beta) (Nichol & Dhariwal, eq. 17)."""
  grid = np.arange(num_timesteps + 1, dtype=np.float64) / num_timesteps
  ab = cosine_alphas_cumprod(grid, s)
  return np.minimum(1.0 - ab[1:] / ab[:-1], max_beta)


_BUILDERS = {
    "linear": linear_betas,
    "cosine": cosine_betas,
    "quad": quad_betas,
    "const": const_betas,
    "jsd": jsd_betas,
}


def get_beta_schedule(name: str, num_timesteps: int, **kwargs) -> np.ndarray:
  """The named beta schedule as a float64 array [num_timesteps], every value in (0, 1].

  Args:
    name: one of `linear` (DDPM: 1e-4 to 0.02; kwargs beta_start, beta_end), `cosine`
      (Nichol & Dhariwal: s = 0.008, betas capped at max_beta = 0.999), `quad` (kwargs
      beta_start, beta_end), `const` (kwarg beta, default 0.02), `jsd` (1/T, ..., 1).
    num_timesteps: T >= 1.
  """
  if name not in _BUILDERS:
    raise ValueError(f"beta schedule name must be one of {list(BETA_SCHEDULES)}, got {name!r}")
  num_timesteps = _check_num_timesteps(num_timesteps)
  try:
    betas = _BUILDERS[name](num_timesteps, **kwargs)
  except TypeError as e:
    raise ValueError(f"bad keyword arguments {sorted(kwargs)} for beta schedule {name!r}: {e}") from e
  if not (np.all(betas > 0) and np.all(betas <= 1)):
    raise ValueError(f"beta schedule {name!r} with {kwargs} has betas outside (0, 1]")
  return betas
