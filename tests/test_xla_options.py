"""The measured choice of XLA:CPU options (vdm.xla_options.probe_compile): it keeps the
candidate its timings say is fastest, caches that choice per CPU and program, leaves the
caller's donated buffers alive, and vdm.train uses it for `training.compiler_options`."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vdm import xla_options


def _program(donate=False):
  """A dot and a reduction (YNNPACK fusions under XLA's defaults), jitted."""
  def f(a, b):
    return jnp.tanh(a @ b) - a.sum(axis=0)
  a = jnp.asarray(np.random.default_rng(0).normal(size=(64, 64)), jnp.float32)
  return jax.jit(f, donate_argnums=(0,) if donate else ()), (a, a.T)


def _uses_ynn(compiled) -> bool:
  return "ynn" in compiled.as_text()


@pytest.mark.parametrize("fast_with_ynn, expected", [(False, "ynn_off"), (True, "ynn_dot_reduce")])
def test_probe_keeps_the_candidate_with_the_smallest_median(tmp_path, fast_with_ynn, expected):
  fn, args = _program()
  assert _uses_ynn(fn.lower(*args).compile())            # XLA's default uses YNNPACK here
  calls = []

  def timing(compiled, a):
    calls.append(compiled)
    return 0.5 if _uses_ynn(compiled) == fast_with_ynn else 1.0

  compiled, record = xla_options.probe_compile(
      fn.lower(*args), args, "train", reps=3, cache_path=str(tmp_path / "c.json"),
      timing=timing, min_flops=0)
  assert record["source"] == "probe" and record["choice"] == expected
  assert len(calls) == 3 * len(xla_options.CPU_CANDIDATES["train"])
  assert _uses_ynn(compiled) == fast_with_ynn
  assert set(record["median_s"]) == set(xla_options.CPU_CANDIDATES["train"])
  np.testing.assert_allclose(compiled(*args), fn(*args), rtol=1e-4, atol=1e-5)


def test_probe_choice_is_cached_per_program(tmp_path):
  fn, args = _program()
  path = str(tmp_path / "cache.json")
  times = iter([3.0, 1.0, 2.0] * 3)   # rounds of (ynn_dot_reduce, ynn_off, xla_default)
  _, first = xla_options.probe_compile(fn.lower(*args), args, "train", cache_path=path,
                                       timing=lambda c, a: next(times), min_flops=0)
  assert first["choice"] == "ynn_off"
  with open(path) as f:
    assert [e["choice"] for e in json.load(f).values()] == ["ynn_off"]

  def never(c, a):
    raise AssertionError("a cached program must not be timed again")
  compiled, again = xla_options.probe_compile(fn.lower(*args), args, "train", cache_path=path,
                                              timing=never, min_flops=0)
  assert again["source"] == "cache" and again["choice"] == "ynn_off"
  assert not _uses_ynn(compiled)
  # Another program (another shape) is probed afresh.
  b = (args[0][:32, :32], args[1][:32, :32])
  _, other = xla_options.probe_compile(fn.lower(*b), b, "train", cache_path=path,
                                       timing=lambda c, a: 1.0, min_flops=0)
  assert other["source"] == "probe" and other["choice"] == "ynn_dot_reduce"   # tie: the table's
  # A corrupt cache file is ignored, not fatal.
  with open(path, "w") as f:
    f.write("{not json")
  _, fresh = xla_options.probe_compile(fn.lower(*args), args, "eval", cache_path=path,
                                       timing=lambda c, a: 1.0, min_flops=0)
  assert fresh["source"] == "probe" and fresh["choice"] == "ynn_off"


def test_probe_leaves_donated_arguments_alive_and_skips_cheap_programs(tmp_path):
  fn, args = _program(donate=True)
  expected = np.asarray(jax.jit(lambda a, b: jnp.tanh(a @ b) - a.sum(axis=0))(*args))
  compiled, record = xla_options.probe_compile(fn.lower(*args), args, "train", reps=1,
                                               cache_path=str(tmp_path / "c.json"), min_flops=0)
  assert record["source"] == "probe"
  np.testing.assert_allclose(compiled(*args), expected, rtol=1e-4, atol=1e-5)   # args alive
  _, cheap = xla_options.probe_compile(fn.lower(*args), args, "train",
                                       cache_path=str(tmp_path / "c.json"), min_flops=1e12)
  assert cheap["source"] == "table: below min_flops" and cheap["choice"] == "ynn_dot_reduce"


def test_bad_arguments_are_named():
  fn, args = _program()
  with pytest.raises(ValueError, match="purpose"):
    xla_options.probe_compile(fn.lower(*args), args, "fast")
  with pytest.raises(ValueError, match="reps"):
    xla_options.probe_compile(fn.lower(*args), args, "train", reps=0)


def test_auto_probes_only_on_cpus_the_table_was_not_measured_on(monkeypatch):
  for vendor, auto in (("AuthenticAMD", False), ("GenuineIntel", True), ("aarch64", True)):
    monkeypatch.setattr(xla_options, "cpu_model", lambda v=vendor: {"vendor": v, "model": "x"})
    assert xla_options.wants_probe("auto", "cpu") is auto
    assert xla_options.wants_probe("probe", "cpu") is True
    assert xla_options.wants_probe("none", "cpu") is False
    assert xla_options.wants_probe("probe", "gpu") is False
  assert set(xla_options.cpu_model()) == {"vendor", "model"}


def test_training_with_probe_records_its_choice(tmp_path, monkeypatch):
  """training.compiler_options='probe': the train and eval programs are probed (threshold 0
  here), their choices land in the cache, and training runs to the end."""
  from train_configs import tiny_digits_config
  from vdm import train
  monkeypatch.setenv("VDM_CACHE_DIR", str(tmp_path / "cache"))
  monkeypatch.setattr(xla_options, "PROBE_MIN_FLOPS", 0.0)
  config = tiny_digits_config()
  config.training.compiler_options = "probe"
  result = train.train_and_evaluate(config, str(tmp_path / "run"))
  assert np.isfinite(result.summary["total_bpd"])
  with open(tmp_path / "cache" / "xla_cpu_probe.json") as f:
    entries = json.load(f).values()
  assert {e["purpose"] for e in entries} == {"train", "eval"}
  assert all(e["choice"] in xla_options.CPU_CANDIDATES[e["purpose"]] for e in entries)


def test_bad_compiler_options_value_is_refused_before_training():
  from train_configs import tiny_digits_config
  from vdm import train
  config = tiny_digits_config()
  config.training.compiler_options = "fastest"
  with pytest.raises(ValueError, match=r"training\.compiler_options.*'auto'.*'probe'.*'none'"):
    train.validate_config(config)
