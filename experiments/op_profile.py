"""Per-op profile of the U-Net's training step: every convolution of the network timed alone,
ours (XLA:CPU, with the step's compiler options) against PyTorch's (the peer's kernels), for
the forward pass, the input gradient and the filter gradient.

Used by `python -m experiments.bench_train --profile`. Why isolated ops and not a trace: XLA:CPU
runs a convolution thunk asynchronously on its Eigen pool, so a jax.profiler trace times the
dispatch of a convolution rather than its work (a 0.3 GFLOP convolution "took" 0.09 ms on a
2-core machine); timing each convolution alone, with the shapes and strides it has in the
step, measures the work on both sides alike. What the convolutions do not explain (the step's
time minus the sum of its convolutions) is the rest: the dense layers and attention,
GroupNorm, activations, dropout, the loss and Adam.
"""
from __future__ import annotations

import time

from experiments import common

KINDS = ("forward", "input_grad", "filter_grad")


def unet_convolutions(model, x, t) -> list:
  """Every conv_general_dilated of model's forward pass at input x [B, H, W, C], timestep t:
  dicts of lhs and rhs shapes (NHWC, HWIO), window_strides and padding, in call order."""
  import jax
  params = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x, t))["params"]
  jaxpr = jax.make_jaxpr(lambda p, x: model.apply({"params": p}, x, t, train=False))(params, x)
  out = []

  def walk(j):
    for eqn in j.eqns:
      if eqn.primitive.name == "conv_general_dilated":
        p = eqn.params
        if (p["lhs_dilation"] != (1, 1) or p["rhs_dilation"] != (1, 1)
            or p["feature_group_count"] != 1 or p["batch_group_count"] != 1):
          raise ValueError(f"unexpected convolution parameters {p}")
        out.append({"lhs": tuple(eqn.invars[0].aval.shape), "rhs": tuple(eqn.invars[1].aval.shape),
                    "strides": tuple(p["window_strides"]),
                    "padding": tuple(tuple(lo_hi) for lo_hi in p["padding"])})
      for value in eqn.params.values():
        inner = getattr(value, "jaxpr", None)
        if inner is not None:
          walk(inner if hasattr(inner, "eqns") else inner.jaxpr)

  walk(jaxpr.jaxpr)
  return out


def _taps(n: int, k: int, stride: int, lo: int, hi: int) -> int:
  """Kernel taps that land inside the input, summed over the output positions of one axis."""
  out = (n + lo + hi - k) // stride + 1
  return sum(1 for o in range(out) for j in range(k) if 0 <= o * stride + j - lo < n)


def gflop(conv: dict) -> float:
  """GFLOP of one such convolution's forward pass: 2 per multiply-add, taps on the zero
  padding not counted (XLA's cost analysis counts the same way); each gradient has as many."""
  b, h, w, _ = conv["lhs"]
  kh, kw, cin, cout = conv["rhs"]
  (h0, h1), (w0, w1) = conv["padding"]
  taps = (_taps(h, kh, conv["strides"][0], h0, h1) * _taps(w, kw, conv["strides"][1], w0, w1))
  return 2.0 * b * taps * cin * cout / 1e9


def jax_calls(conv: dict, compiler_options: dict) -> tuple:
  """({kind: zero-argument callable returning its result}, (x, w, g)): our compiled forward /
  input-gradient / filter-gradient programs of this convolution (NHWC, HWIO) on x, w and the
  output cotangent g, run to completion."""
  import jax
  import jax.numpy as jnp
  key = jax.random.PRNGKey(0)
  x = jax.random.normal(key, conv["lhs"], jnp.float32)
  w = jax.random.normal(key, conv["rhs"], jnp.float32) * 0.05

  def f(x, w):
    return jax.lax.conv_general_dilated(x, w, conv["strides"], conv["padding"],
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))
  g = jnp.ones(jax.eval_shape(f, x, w).shape, jnp.float32)
  programs = {"forward": (f, (x, w)),
              "input_grad": (lambda x, w, g: jax.vjp(lambda x: f(x, w), x)[1](g)[0], (x, w, g)),
              "filter_grad": (lambda x, w, g: jax.vjp(lambda w: f(x, w), w)[1](g)[0], (x, w, g))}
  calls = {}
  for kind, (fn, args) in programs.items():
    compiled = jax.jit(fn).lower(*args).compile(compiler_options=dict(compiler_options))
    calls[kind] = lambda c=compiled, a=args: jax.block_until_ready(c(*a))
  return calls, (x, w, g)


def torch_calls(conv: dict) -> dict:
  """{kind: zero-argument callable} of PyTorch's kernels for this convolution (NCHW, OIHW):
  conv2d forward, and aten::convolution_backward with only the input or only the filter
  gradient requested (what autograd calls). Asymmetric padding is applied by F.pad first, as
  diffusers' Downsample2D does."""
  import torch
  import torch.nn.functional as F
  gen = torch.Generator().manual_seed(0)
  b, h, w_, c = conv["lhs"]
  kh, kw, cin, cout = conv["rhs"]
  x = torch.randn((b, c, h, w_), generator=gen)
  w = torch.randn((cout, cin, kh, kw), generator=gen) * 0.05
  (ph0, ph1), (pw0, pw1) = conv["padding"]
  if (ph0, pw0) == (ph1, pw1):
    padding, pad = [ph0, pw0], None
  else:
    padding, pad = [0, 0], (pw0, pw1, ph0, ph1)
  stride = list(conv["strides"])

  def forward():
    with torch.no_grad():
      return F.conv2d(F.pad(x, pad) if pad else x, w, stride=stride, padding=padding)
  g = torch.ones_like(forward())

  def backward(mask):
    def call():
      xp = F.pad(x, pad) if pad else x
      return torch.ops.aten.convolution_backward(g, xp, w, None, stride, padding, [1, 1], False,
                                                 [0, 0], 1, mask)
    return call
  return {"forward": forward, "input_grad": backward([True, False, False]),
          "filter_grad": backward([False, True, False])}


def time_convolutions(convs: list, compiler_options: dict, reps: int, peer: bool) -> list:
  """Per convolution and kind: our median seconds (and the peer's, alternating call by call,
  if peer). Returns rows {index, lhs, rhs, strides, gflop, kind, ours_s, peer_s (or None)}."""
  rows = []
  for i, conv in enumerate(convs):
    ours, _ = jax_calls(conv, compiler_options)
    theirs = torch_calls(conv) if peer else {}
    for kind in KINDS:
      ours[kind]()                      # warm-up: first execution, allocations
      if peer:
        theirs[kind](), theirs[kind]()
      ts, ps = [], []
      for _ in range(reps):
        t0 = time.perf_counter()
        ours[kind]()
        ts.append(time.perf_counter() - t0)
        if peer:
          t0 = time.perf_counter()
          theirs[kind]()
          ps.append(time.perf_counter() - t0)
      rows.append({"index": i, "lhs": list(conv["lhs"]), "rhs": list(conv["rhs"]),
                   "strides": list(conv["strides"]), "gflop": gflop(conv), "kind": kind,
                   "ours_s": common.median(ts), "peer_s": common.median(ps) if peer else None})
  return rows


def totals(rows: list) -> dict:
  """{kind: {'ours_s', 'peer_s', 'gflop'}} summed over the convolutions."""
  out = {}
  for kind in KINDS:
    sel = [r for r in rows if r["kind"] == kind]
    peer = [r["peer_s"] for r in sel]
    out[kind] = {"ours_s": sum(r["ours_s"] for r in sel),
                 "peer_s": sum(peer) if sel and None not in peer else None,
                 "gflop": sum(r["gflop"] for r in sel)}
  return out
