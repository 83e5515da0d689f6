"""User functions as static arguments of jax.jit, keyed by what they compute, not by identity.

The library's entry points take a user function (`model_fn(params, x_t, t)`,
`log_joint(params, x, h)`) and its parameters; the parameters are traced, the function is
static. jax.jit keys static arguments by hash and equality, and a Python function compares by
identity, so `calc_bpd(lambda p, x, t: net.apply({"params": p}, x, t), params, ...)` written
inline would compile anew at every call. `StaticFn` wraps a function so that two functions
with the same code, the same defaults, the same closure values and the same values of the
globals they name compare equal: a fresh lambda over the same network reuses the compiled
program.

Safety: values are compared by hash and ==. A value that cannot be hashed (a NumPy array, a
list, a dict) makes the wrapper fall back to the function's identity, which is what jax.jit
does anyway; a changed value (another network, another constant) gives another key and a new
compilation, never a stale program. Bound methods compare by their function and their object.
"""
from __future__ import annotations

import functools
import types
from typing import Any, Callable


def _hashable(value: Any) -> bool:
  try:
    hash(value)
  except TypeError:
    return False
  return True


def _referenced_globals(code: types.CodeType, globals_: dict) -> tuple:
  """(name, value) for the global names the code (and its nested code objects) reads."""
  names = set()
  stack = [code]
  while stack:
    c = stack.pop()
    names.update(c.co_names)
    stack.extend(k for k in c.co_consts if isinstance(k, types.CodeType))
  return tuple((n, globals_[n]) for n in sorted(names) if n in globals_
               and not isinstance(globals_[n], types.ModuleType))


def function_key(fn: Callable) -> Any:
  """A hashable key equal for functions that compute the same thing (module docstring)."""
  if isinstance(fn, StaticFn):
    return fn.key
  if isinstance(fn, types.MethodType):
    inner = function_key(fn.__func__)
    key = ("method", inner, fn.__self__)
    return key if _hashable(fn.__self__) else ("id", id(fn.__func__), id(fn.__self__))
  if isinstance(fn, functools.partial):
    key = ("partial", function_key(fn.func), fn.args, tuple(sorted(fn.keywords.items())))
    return key if _hashable(key) else ("id", id(fn))
  if not isinstance(fn, types.FunctionType):
    return ("obj", fn) if _hashable(fn) else ("id", id(fn))
  closure = tuple(c.cell_contents for c in fn.__closure__ or ())
  key = ("fn", fn.__code__, fn.__defaults__,
         tuple(sorted((fn.__kwdefaults__ or {}).items())), closure,
         _referenced_globals(fn.__code__, fn.__globals__))
  return key if _hashable(key) else ("id", id(fn))


class StaticFn:
  """A callable wrapper whose hash and equality are `function_key(fn)`'s."""
  __slots__ = ("fn", "key", "_hash")

  def __init__(self, fn: Callable):
    if not callable(fn):
      raise TypeError(f"expected a function, got {type(fn).__name__}")
    self.fn = fn.fn if isinstance(fn, StaticFn) else fn
    self.key = function_key(fn)
    self._hash = hash(self.key)

  def __call__(self, *args, **kwargs):
    return self.fn(*args, **kwargs)

  def __hash__(self):
    return self._hash

  def __eq__(self, other):
    if not isinstance(other, StaticFn):
      return NotImplemented
    if self._hash != other._hash:
      return False
    try:
      return bool(self.key == other.key)
    except Exception:  # a value whose == is not a bool (an array-like): compare identities
      return self.fn is other.fn

  def __repr__(self):
    return f"StaticFn({getattr(self.fn, '__qualname__', self.fn)!r})"


def static_fn(fn: Callable) -> StaticFn:
  """Wrap fn for use as a static argument of jax.jit (None stays None)."""
  return None if fn is None else StaticFn(fn)
