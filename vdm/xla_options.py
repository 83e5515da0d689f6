"""XLA compiler options by platform and purpose, for the jitted train and eval programs.

Used by vdm.train (field `training.compiler_options`) and the benchmarks. The choice was
measured on CPUs in experiments/bench_train.py and experiments/bench_bound.py.
"""
from __future__ import annotations

from typing import Optional

import jax

from vdm import checks

# XLA:CPU (jaxlib 0.10) sends convolutions, dots and reductions to YNNPACK by default. On the
# 2-core AVX2 machine of experiments/bench_train.py its 3x3 convolutions ran on one thread, and
# its filter gradients reached 15-50 GFLOP per CPU-second against ~80 for Eigen (forward, input
# and filter gradients alike, 32-256 channels); the CIFAR-10 U-Net's Adam step went from 6.8 to
# 4.9 CPU-seconds at batch 8 with the 'train' options, which keep YNNPACK for dots and
# reductions only. Forward-only programs (the bound, sampling) do best without YNNPACK at all:
# its reduction fusions grow around whole residual blocks, convolutions included, at larger
# batches (the small U-Net's forward pass at batch 128: 963 ms with the 'train' options, 628 ms
# without YNNPACK; equal within 2% at batch 8-64), while the gradient's many reductions still
# gain from it (the Adam step at batch 32: 516 against 781 ms).
XLA_PURPOSES = ("train", "eval")
_CPU_COMPILER_OPTIONS = {
  "train": {"xla_cpu_experimental_ynn_fusion_type":
              "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE"},
  "eval": {"xla_cpu_experimental_ynn_fusion_type": ""},
}


def xla_compiler_options(platform: Optional[str] = None, purpose: str = "train") -> dict:
  """Options for `jax.jit(f, compiler_options=...)` that make the U-Net fast on `platform`.

  Args:
   platform: 'cpu', 'gpu', 'tpu', ...; None = jax.default_backend().
   purpose: 'train' (programs that differentiate the network) or 'eval' (forward passes only:
    the bound, sampling).
  Returns:
   a new dict: the XLA:CPU options above for 'cpu', {} elsewhere.
  """
  checks.choice("purpose", purpose, XLA_PURPOSES)
  platform = jax.default_backend() if platform is None else platform
  return dict(_CPU_COMPILER_OPTIONS[purpose]) if platform == "cpu" else {}
