"""Argument checks shared by every module: one behaviour, one wording.

Each check takes the name of the argument or config field (e.g. "training.num_steps",
"num_levels") and the value, and returns the value normalized (a Python int or float, or the
value itself), or raises a ValueError that names the field, says what is allowed and shows what
was given. Checks run on the host, before any computation.

One rule for integers everywhere: Python ints and NumPy integer scalars (np.int32, np.int64)
are accepted; bools and floats (even 3.0) are not, nor are arrays.
"""
from __future__ import annotations

import math
from typing import Any, Iterable, Optional

import numpy as np


def is_integer(value: Any) -> bool:
  """True for a Python int or a NumPy integer scalar, False for bools and everything else."""
  return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def integer(name: str, value: Any, minimum: Optional[int] = None,
            maximum: Optional[int] = None) -> int:
  """An integer in [minimum, maximum] (either bound optional) -> int."""
  if not is_integer(value):
    raise ValueError(f"{name} must be an integer{_range_text(minimum, maximum)}, got "
                     f"{value!r} ({type(value).__name__})")
  value = int(value)
  if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
    raise ValueError(f"{name} must be an integer{_range_text(minimum, maximum)}, got {value}")
  return value


def positive_int(name: str, value: Any) -> int:
  """An integer >= 1 -> int."""
  return integer(name, value, minimum=1)


def nonnegative_int(name: str, value: Any) -> int:
  """An integer >= 0 -> int."""
  return integer(name, value, minimum=0)


def optional_positive_int(name: str, value: Any) -> Optional[int]:
  """None, or an integer >= 1."""
  return None if value is None else positive_int(name, value)


def choice(name: str, value: Any, allowed: Iterable) -> Any:
  """One of `allowed` (compared with ==) -> value."""
  allowed = tuple(allowed)
  try:
    ok = value in allowed
  except TypeError:  # unhashable or incomparable
    ok = False
  if not ok:
    raise ValueError(f"{name} must be one of {list(allowed)}, got {value!r}")
  return value


def num_levels(name: str, value: Any) -> int:
  """K, the number of levels of discrete data: an integer >= 2."""
  if not is_integer(value) or int(value) < 2:
    raise ValueError(f"{name} must be an integer >= 2 (the number of data levels K, e.g. 256 "
                     f"for 8-bit images, 17 for scikit-learn digits), got {value!r}")
  return int(value)


def optional_num_levels(name: str, value: Any) -> Optional[int]:
  """None (continuous data) or K >= 2."""
  return None if value is None else num_levels(name, value)


def number(name: str, value: Any, low: Optional[float] = None, high: Optional[float] = None,
           low_open: bool = False, high_open: bool = False) -> float:
  """A finite real number in the interval given by low/high (open ends optional) -> float."""
  interval = _interval_text(low, high, low_open, high_open)
  if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer,
                                                                   np.floating)):
    raise ValueError(f"{name} must be a finite number{interval}, got {value!r}")
  value = float(value)
  bad = not math.isfinite(value)
  if low is not None:
    bad |= value <= low if low_open else value < low
  if high is not None:
    bad |= value >= high if high_open else value > high
  if bad:
    raise ValueError(f"{name} must be a finite number{interval}, got {value!r}")
  return value


def float_dtype(name: str, value: Any):
  """A floating dtype (float16, bfloat16, float32, float64, as a type, string or np.dtype) ->
  jnp.dtype. float64 needs JAX's 64-bit mode: without it JAX would silently compute in float32
  (it only warns), so it is refused here, with the way to enable it."""
  import jax
  import jax.numpy as jnp
  try:
    dtype = None if value is None else jnp.dtype(value)   # (np.dtype(None) is float64)
  except TypeError:
    dtype = None
  if dtype is None or not jnp.issubdtype(dtype, jnp.floating):
    raise ValueError(f"{name} must be a floating dtype (float16, bfloat16, float32, float64), "
                     f"got {value!r}")
  if dtype.itemsize == 8 and not jax.config.jax_enable_x64:
    raise ValueError(f"{name}={dtype.name} needs JAX's 64-bit mode, which is off: run under "
                     "`with jax.enable_x64():` or set jax.config.update('jax_enable_x64', True) "
                     "(or JAX_ENABLE_X64=1) first; otherwise use float32")
  return dtype


def boolean(name: str, value: Any) -> bool:
  """True or False (a Python or NumPy bool) -> bool."""
  if not isinstance(value, (bool, np.bool_)):
    raise ValueError(f"{name} must be True or False, got {value!r}")
  return bool(value)


def _range_text(minimum, maximum) -> str:
  if minimum is not None and maximum is not None:
    return f" in [{minimum}, {maximum}]"
  if minimum is not None:
    return f" >= {minimum}"
  if maximum is not None:
    return f" <= {maximum}"
  return ""


def _interval_text(low, high, low_open, high_open) -> str:
  if low is None and high is None:
    return ""
  if high is None:
    return f" {'>' if low_open else '>='} {low}"
  if low is None:
    return f" {'<' if high_open else '<='} {high}"
  return f" in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
