"""experiments.runs: the one run layer of the paper scripts (no training here: the scripts'
own tests train through it)."""
import json
import math
import os

import ml_collections
import pytest

from experiments import common, runs
from train_configs import toy_config


def _write(path, obj):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    json.dump(obj, f)


def test_fingerprint_names_a_config_and_overrides_reach_the_full_scale_config():
  a, b = toy_config(), toy_config()
  assert runs.fingerprint(a) == runs.fingerprint(b) and len(runs.fingerprint(a)) == 16
  b.training.num_steps += 1
  assert runs.fingerprint(a) != runs.fingerprint(b)
  cpu = toy_config()
  cpu.training.num_steps = 7
  full = lambda: ml_collections.ConfigDict(toy_config(num_steps=1000).to_dict())
  argv = ["prog", "--config.training.num_steps=7", "--full_scale"]
  assert runs.override_keys(argv) == ["training.num_steps"]
  made = runs.config_from_cli(cpu, full, argv)
  assert made.training.num_steps == 7 and made.training.batch_size == cpu.training.batch_size
  same = runs.config_from_cli(cpu, None, argv)
  assert same.to_dict() == cpu.to_dict() and same is not cpu


def test_legacy_records_are_migrated_or_refused_by_name(tmp_path):
  config = toy_config()
  root = str(tmp_path)
  # An earlier sha1-named directory of a finished run moves to the fingerprint name.
  old = runs.legacy_dir(root, "a", config)
  _write(os.path.join(old, "run_info.json"), {"run": "a", "status": "ok", "seconds": 12.0})
  _write(os.path.join(old, "eval", f"bound_{config.training.num_steps}.json"),
         {"summary": {"total_bpd": 1.5}})
  path = runs.run_dir(root, "a", config, legacy=(old,))
  assert path.endswith(f"a-{runs.fingerprint(config)}") and not os.path.exists(old)
  run = runs.Run("a", config, path)
  status = run.ensure_trained()          # migrated, not trained
  assert status["state"] == "trained" and status["train_seconds"] == 12.0
  assert not status["trained_now"] and run.bound()["summary"]["total_bpd"] == 1.5
  assert json.load(open(os.path.join(path, runs.STATUS)))["schema"] == runs.SCHEMA
  # A diverged run stays diverged, with its message.
  d = str(tmp_path / "d")
  _write(os.path.join(d, "paper_status.json"), {"fingerprint": runs.fingerprint(config),
                                                "state": "diverged", "message": "NaN at 3"})
  status = runs.Run("d", config, d).ensure_trained()
  assert status["state"] == "diverged" and status["message"] == "NaN at 3"
  # Refused, naming the file: another config's record, and an unfinished earlier run.
  w = str(tmp_path / "w")
  _write(os.path.join(w, "paper_status.json"), {"fingerprint": "0" * 16, "state": "trained"})
  with pytest.raises(ValueError, match=r"paper_status.json .* another config"):
    runs.Run("w", config, w).ensure_trained()
  u = str(tmp_path / "u")
  _write(os.path.join(u, "run_info.json"), {"seconds": 3.0, "num_steps": 2})
  with pytest.raises(ValueError, match=r"run_info.json: .* did not finish"):
    runs.Run("u", config, u).ensure_trained()
  # A current record of another config is refused too.
  other = toy_config(num_steps=99)
  with pytest.raises(ValueError, match="different config"):
    runs.Run("a", other, path).ensure_trained()


def test_cache_computes_once_per_fingerprint_and_again_when_invalid(tmp_path):
  run = runs.Run("c", toy_config(), str(tmp_path / "c"))
  calls = []
  compute = lambda: calls.append(1) or {"v": len(calls)}
  assert run.cached("k", compute) == {"v": 1}
  assert run.cached("k", compute) == {"v": 1} and len(calls) == 1
  assert run.cached("k", compute, valid=lambda v: False) == {"v": 2}
  changed = runs.Run("c", toy_config(num_steps=9), str(tmp_path / "c"))
  assert changed.cached("k", compute) == {"v": 3}   # another config: the cache is dropped


def test_one_verdict_wording_and_the_resolution_rule():
  from experiments import stats
  assert [stats.verdict(v) for v in (True, False, None)] == [
      "holds", "does NOT hold", "not resolved"]
  assert stats.below(0.5, 0.2, 1.0) is True          # 0.9 < 1
  assert stats.below(1.5, 0.2, 1.0) is False         # 1.1 >= 1
  assert stats.below(0.8, 0.2, 1.0) is None          # 0.4 .. 1.2 straddles 1
  assert stats.mean_se([1.0, 3.0]) == (2.0, 1.0) and stats.mean_se([4.0]) == (4.0, 0.0)
  # z-scores: a zero standard error (one draw, or an exact estimate) gives 0 or +-inf, not a
  # ZeroDivisionError in the middle of a report.
  assert stats.z_score(1.3, 1.0, 0.1) == pytest.approx(3.0)
  assert stats.z_score(1.0, 1.0, 0.0) == 0.0
  assert stats.z_score(0.9, 1.0, 0.0) == -math.inf and stats.z_score(1.1, 1.0, 0.0) == math.inf
  assert f"{stats.z_score(1.1, 1.0, 0.0):+.2f}" == "+inf"


def test_number_cells():
  assert common.number(1.23456) == "1.2346" and common.number(2.5, 1) == "2.5"
  assert common.number(None) == "—" and common.number(float("nan"), missing="n/a") == "n/a"
  assert common.number(float("inf")) == "—" and common.number(0.0) == "0.0000"
  assert common.number(float("nan"), missing="n/a", nonfinite="nan") == "nan"
  assert common.number(3e-7) == "3.0e-07" and common.number(-3e-7, 2) == "-3.0e-07"
