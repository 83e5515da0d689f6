"""The per-op profile of bench_train (experiments/op_profile.py) and bench_train's per-CPU
results: the convolutions it finds are the network's, their FLOP counts are XLA's, the timed
programs compute the forward pass and its two gradients, and a run on one CPU keeps the
figures of every other CPU."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import op_profile
from vdm.models import UNet

TINY = dict(ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(), dropout=0.0,
            num_groups=4)


@pytest.fixture(scope="module")
def convs():
  model = UNet(**TINY)
  x, t = jnp.zeros((2, 8, 8, 3)), jnp.zeros((2,), jnp.int32)
  params = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x, t))["params"]
  kernels = [p.shape for p in jax.tree_util.tree_leaves(params) if len(p.shape) == 4]
  found = op_profile.unet_convolutions(model, x, t)
  return found, kernels


def test_the_convolutions_are_the_networks(convs):
  found, kernels = convs
  assert sorted(c["rhs"] for c in found) == sorted(kernels)
  assert {c["strides"] for c in found} == {(1, 1), (2, 2)}   # the downsampling conv strides


def test_flop_count_matches_xla(convs):
  found, _ = convs
  for conv in found:
    x = jnp.zeros(conv["lhs"])
    w = jnp.zeros(conv["rhs"])
    compiled = jax.jit(lambda x, w: jax.lax.conv_general_dilated(
        x, w, conv["strides"], conv["padding"], dimension_numbers=("NHWC", "HWIO", "NHWC"))
                       ).lower(x, w).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    assert op_profile.gflop(conv) * 1e9 == pytest.approx(cost["flops"], rel=1e-6)


def test_timed_programs_are_the_convolution_and_its_adjoints(convs):
  """Linear in x and in w: <vjp_x(g), x> = <g, f(x, w)> = <vjp_w(g), w>."""
  found, _ = convs
  for conv in (found[0], next(c for c in found if c["strides"] == (2, 2))):
    calls, (x, w, g) = op_profile.jax_calls(conv, {})
    y = np.asarray(calls["forward"](), np.float64)
    ref = jax.lax.conv_general_dilated(x, w, conv["strides"], conv["padding"],
                                       dimension_numbers=("NHWC", "HWIO", "NHWC"))
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)
    inner = float(np.sum(np.asarray(g, np.float64) * y))
    dx = np.asarray(calls["input_grad"](), np.float64)
    dw = np.asarray(calls["filter_grad"](), np.float64)
    assert dx.shape == x.shape and dw.shape == w.shape
    assert float(np.sum(dx * np.asarray(x, np.float64))) == pytest.approx(inner, rel=1e-4)
    assert float(np.sum(dw * np.asarray(w, np.float64))) == pytest.approx(inner, rel=1e-4)


def test_time_convolutions_and_totals(convs):
  found, _ = convs
  rows = op_profile.time_convolutions(found[:2], {}, reps=1, peer=False)
  assert [(r["index"], r["kind"]) for r in rows] == [
      (i, k) for i in range(2) for k in op_profile.KINDS]
  assert all(r["ours_s"] > 0 and r["peer_s"] is None for r in rows)
  totals = op_profile.totals(rows)
  for kind in op_profile.KINDS:
    assert totals[kind]["ours_s"] == pytest.approx(
        sum(r["ours_s"] for r in rows if r["kind"] == kind))
    assert totals[kind]["peer_s"] is None
    assert totals[kind]["gflop"] == pytest.approx(sum(op_profile.gflop(c) for c in found[:2]))


def _rows(cpu, ms, peer_ms):
  machine = {"cpu": cpu, "cores": 2, "measured": "2026-12-03"}
  step = {"bench": "train_step", "case": "small", "batch": 8, "num_params": 1.1e6,
          "compiler_options": "ynn_dot_reduce", "median_s": ms / 1e3,
          "images_per_s": 8e3 / ms, "gflop_per_s": 100.0, "frac_of_peak": 0.5,
          "peak_gflop_per_s": 200.0, "machine": machine}
  ratio = {"bench": "train_step_ratio", "case": "small", "batch": 8, "median_s": ms / 1e3,
           "peer_median_s": peer_ms / 1e3, "paired_speedup_median": peer_ms / ms,
           "machine": machine}
  return [step, ratio]


def test_a_run_replaces_only_its_own_cpus_figures(tmp_path):
  from experiments import bench_train, common
  path = str(tmp_path / "bench_train.jsonl")
  common.merge_rows_by_cpu(path, _rows("AMD EPYC", 133.0, 155.0))
  common.merge_rows_by_cpu(path, _rows("Intel Xeon", 150.0, 141.0))
  merged = common.merge_rows_by_cpu(path, _rows("Intel Xeon", 120.0, 141.0))
  with open(path) as f:
    assert [json.loads(line) for line in f] == merged
  assert [(r["machine"]["cpu"], r["median_s"]) for r in merged if r["bench"] == "train_step"] \
      == [("AMD EPYC", 0.133), ("Intel Xeon", 0.120)]
  text = bench_train.render(merged)
  assert "| AMD EPYC (2 cores) | 2026-12-03 | small | 8 |" in text
  assert "- AMD EPYC (2 cores), small batch 8: 1.17x the peer (met)." in text
  assert "- Intel Xeon (2 cores), small batch 8: 1.18x the peer (met)." in text
  worse = bench_train.render(_rows("Intel Xeon", 150.0, 141.0))
  assert "- Intel Xeon (2 cores), small batch 8: 0.94x the peer (not met)." in worse
  # bench_train keeps one run per CPU model and allocator: a tcmalloc run leaves the system
  # allocator's figures of the same CPU, and replaces an earlier tcmalloc run.
  path = str(tmp_path / "by_allocator.jsonl")
  with_malloc = lambda rows, m: [dict(r, malloc=m) for r in rows]
  common.merge_rows_by_cpu(path, with_malloc(_rows("AMD EPYC", 157.0, 149.0), "system"))
  common.merge_rows_by_cpu(path, with_malloc(_rows("AMD EPYC", 180.0, 159.0), "tcmalloc"))
  merged = common.merge_rows_by_cpu(path, with_malloc(_rows("AMD EPYC", 140.0, 159.0),
                                                      "tcmalloc"))
  assert [(r["malloc"], r["median_s"]) for r in merged if r["bench"] == "train_step"] == [
      ("system", 0.157), ("tcmalloc", 0.140)]
  text = bench_train.render(merged)
  assert "- AMD EPYC (2 cores), system, small batch 8: 0.95x the peer (not met)." in text
  assert "- AMD EPYC (2 cores), tcmalloc, small batch 8: 1.14x the peer (met)." in text
  assert "| AMD EPYC (2 cores) | 2026-12-03 | small | 8 | 1.10M | ynn_dot_reduce | tcmalloc |" \
      in text
