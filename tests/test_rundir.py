"""Run directories: nothing lost, nothing silently wrong (issue 9's reproduced failures)."""
import glob
import json
import logging
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from train_configs import toy_config
from vdm import reporting, train
from vdm.train import checkpoints as ckpt
from vdm.train import rundir

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _template(config):
  from vdm import data, objectives
  ds = data.load_dataset(config.data)
  obj = objectives.build_objective(config, ds.shape, ds.num_levels)
  return train.init_state(obj, train.create_optimizer(config.optimizer,
                                                      config.training.num_steps), 0)


def _restore(workdir, config, **kw):
  manager = train.checkpoint_manager(str(workdir), config, read_only=not kw)
  return train.restore_checkpoint(manager, _template(config), **kw)


def _steps(workdir):
  d = os.path.join(workdir, "checkpoints")
  return sorted(int(n) for n in os.listdir(d) if n.isdigit())


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A toy run trained to step 4 with checkpoints at steps 2 and 4."""
  work = tmp_path_factory.mktemp("trained") / "run"
  result = train.train_and_evaluate(toy_config(num_steps=4), str(work))
  assert _steps(str(work)) == [2, 4]
  return work, result


def _copy(trained, tmp_path):
  dst = tmp_path / "run"
  shutil.copytree(trained[0], dst)
  return dst


# ----------------------------------------------------------------------------------------
# Non-finite states are never saved.

def test_nan_after_the_update_is_caught_before_the_save(tmp_path):
  """lr = 1e39: the loss of step 0 is finite but the parameters it produces are not; nothing
  non-finite is saved and the message names that step and the right last good checkpoint."""
  config = toy_config(num_steps=6)
  config.optimizer.learning_rate = 1e39
  config.optimizer.grad_clip = 0.0
  config.optimizer.warmup_steps = 0
  config.training.steps_per_save = 1
  with pytest.raises(train.NonFiniteLossError, match=r"at step 1 .*last good checkpoint "
                     r"\(step None\)"):
    train.train_and_evaluate(config, str(tmp_path))
  assert not os.path.isdir(tmp_path / "checkpoints") or _steps(str(tmp_path)) == []


def test_non_finite_state_is_refused_by_save(tmp_path, trained):
  config = toy_config(num_steps=4)
  state = _restore(trained[0], config)
  bad = state.replace(step=np.int32(7), params=jax.tree_util.tree_map(
      lambda a: np.full_like(a, np.nan), state.params))
  manager = train.checkpoint_manager(str(tmp_path), config)
  with pytest.raises(train.NonFiniteStateError, match=r"after step 7 .*NaN or inf"):
    train.save_checkpoint(manager, bad)
  assert manager.all_steps() == []


# ----------------------------------------------------------------------------------------
# Damaged checkpoints: fall back to the newest one that restores and verifies.

def _largest_data_file(step_dir):
  files = [p for p in glob.glob(os.path.join(step_dir, "state", "**", "d", "*"), recursive=True)
           if os.path.isfile(p)]
  return max(files, key=os.path.getsize)


def _truncate(step_dir):
  path = _largest_data_file(step_dir)
  with open(path, "r+b") as f:
    f.truncate(os.path.getsize(path) // 2)


def _flip_byte(step_dir):
  path = _largest_data_file(step_dir)
  data = bytearray(open(path, "rb").read())
  data[len(data) // 2] ^= 0xFF
  open(path, "wb").write(bytes(data))


def _empty_metadata(step_dir):
  open(os.path.join(step_dir, "state", "_METADATA"), "w").close()


@pytest.mark.parametrize("damage", [_truncate, _flip_byte, _empty_metadata])
def test_damaged_latest_checkpoint_falls_back_with_one_warning(tmp_path, trained, damage,
                                                               caplog):
  work = _copy(trained, tmp_path)
  config = toy_config(num_steps=4)
  good2 = _restore(work, config)
  assert int(good2.step) == 4
  shutil.rmtree(work / "checkpoints" / "4")
  shutil.copytree(trained[0] / "checkpoints" / "4", work / "checkpoints" / "4")
  expected_2 = None
  damage(str(work / "checkpoints" / "4"))
  with caplog.at_level(logging.WARNING):
    state = _restore(work, config)
  assert int(state.step) == 2
  warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING
              and "is damaged" in r.getMessage()]
  assert len(warnings) == 1 and os.path.join("checkpoints", "4") in warnings[0]
  # Its contents are checkpoint 2's, bitwise.
  ref = ckpt._restore_one(train.checkpoint_manager(str(trained[0]), config, read_only=True), 2,
                          jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(
                              np.shape(a), np.asarray(a).dtype), _template(config)))[0]
  for a, b in zip(jax.tree_util.tree_leaves(state), jax.tree_util.tree_leaves(ref)):
    np.testing.assert_array_equal(a, b)
  del expected_2


def test_resume_past_a_damaged_checkpoint_moves_it_aside_and_saves_again(tmp_path, trained,
                                                                         caplog):
  work = _copy(trained, tmp_path)
  _flip_byte(str(work / "checkpoints" / "4"))
  config = toy_config(num_steps=6)
  with caplog.at_level(logging.WARNING):
    result = train.train_and_evaluate(config, str(work))
  assert int(result.state.step) == 6
  assert _steps(str(work)) == [2, 4, 6]
  moved = glob.glob(str(work / ckpt.DAMAGED_DIR / "4.*"))
  assert len(moved) == 1
  assert any("moved to" in r.getMessage() for r in caplog.records)
  # Resumed from step 2: it ends where a straight 6-step run ends.
  straight = train.train_and_evaluate(toy_config(num_steps=6), str(tmp_path / "straight"))
  for a, b in zip(jax.tree_util.tree_leaves(result.state.params),
                  jax.tree_util.tree_leaves(straight.state.params)):
    np.testing.assert_array_equal(a, b)


# ----------------------------------------------------------------------------------------
# The stored config.

def test_changed_config_is_refused_listing_fields_and_config_json_is_kept(tmp_path, trained):
  work = _copy(trained, tmp_path)
  stored = (work / "config.json").read_text()
  config = toy_config(num_steps=6)
  config.diffusion.mean_type = "x0"
  config.diffusion.num_timesteps = 50
  with pytest.raises(train.RunDirError, match=r"2 fields differ:\n  diffusion.mean_type: "
                     r"stored 'eps', now 'x0'\n  diffusion.num_timesteps: stored 20, now 50"):
    train.train_and_evaluate(config, str(work))
  config = toy_config(num_steps=6)
  config.model.mlp_hidden = 64                     # other shapes: refused before orbax
  with pytest.raises(train.RunDirError, match="model.mlp_hidden: stored 32, now 64"):
    train.train_and_evaluate(config, str(work))
  with pytest.raises(train.RunDirError, match="model.mlp_hidden"):
    train.evaluate(config, str(work))
  assert (work / "config.json").read_text() == stored
  assert _steps(str(work)) == [2, 4]


def test_resumable_fields_may_change_and_a_deliberate_change_is_allowed(tmp_path, trained):
  work = _copy(trained, tmp_path)
  stored = (work / "config.json").read_text()
  config = toy_config(num_steps=6)
  config.training.steps_per_log = 3 * 2
  config.eval.num_examples = 32
  assert int(train.train_and_evaluate(config, str(work)).state.step) == 6
  config = toy_config(num_steps=8)
  config.optimizer.learning_rate = 5e-4
  result = train.train_and_evaluate(config, str(work), allow_config_change=True)
  assert int(result.state.step) == 8
  assert (work / "config.json").read_text() == stored
  # Other shapes with the change allowed: a clear mismatch error, the checkpoint untouched.
  config = toy_config(num_steps=10)
  config.model.mlp_hidden = 64
  with pytest.raises(train.CheckpointMismatchError, match="another structure or shapes"):
    train.train_and_evaluate(config, str(work), allow_config_change=True)
  assert _steps(str(work))[-1] == 8 and not os.path.isdir(work / ckpt.DAMAGED_DIR)


# ----------------------------------------------------------------------------------------
# The lock.

def test_second_run_on_a_workdir_is_refused_and_a_stale_lock_is_taken_over(tmp_path, trained):
  work = _copy(trained, tmp_path)
  sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
  try:
    import socket
    (work / "lock").write_text(json.dumps({"pid": sleeper.pid, "host": socket.gethostname(),
                                           "started": 0}))
    with pytest.raises(train.RunDirError, match=rf"in use by another run \(process "
                       rf"{sleeper.pid} on host"):
      train.train_and_evaluate(toy_config(num_steps=6), str(work))
  finally:
    sleeper.kill()
    sleeper.wait()
  rows = len(reporting.read_metrics(str(work)))
  result = train.train_and_evaluate(toy_config(num_steps=6), str(work))  # stale: taken over
  assert int(result.state.step) == 6 and not (work / "lock").exists()
  assert len(reporting.read_metrics(str(work))) > rows


def test_lock_is_released_when_the_run_fails(tmp_path):
  config = toy_config(num_steps=6)
  config.optimizer.learning_rate = 1e39
  config.optimizer.grad_clip = 0.0
  with pytest.raises(train.NonFiniteLossError):
    train.train_and_evaluate(config, str(tmp_path))
  assert not (tmp_path / "lock").exists()


# ----------------------------------------------------------------------------------------
# Each mode its own files; a rerun of a finished run gives the same final eval.

def test_modes_write_their_own_files_and_match_the_training_eval(tmp_path, trained):
  work = _copy(trained, tmp_path)
  config = toy_config(num_steps=4)
  before = (work / "eval" / "bound_4.json").read_bytes()
  rows = reporting.read_metrics(str(work))
  result = train.evaluate(config, str(work))
  assert result.path == str(work / "eval" / "eval_4.json") and result.step == 4
  record = json.loads((work / "eval" / "eval_4.json").read_text())
  assert record["mode"] == "eval" and record["num_examples"] == 64 and "eval_key" in record["key"]
  # The same key and examples as training's eval at step 4: the same number.
  assert result.summary["total_bpd"] == pytest.approx(trained[1].summary["total_bpd"], rel=1e-6)
  full = train.evaluate(config, str(work), full=True)
  assert full.path.endswith("bpd_4.json")
  assert (work / "eval" / "bound_4.json").read_bytes() == before
  assert reporting.read_metrics(str(work)) == rows


def test_rerun_after_a_kill_during_the_final_eval_gives_the_same_eval(tmp_path, trained):
  work = _copy(trained, tmp_path)
  final = json.loads((work / "eval" / "bound_4.json").read_text())["summary"]
  again = train.train_and_evaluate(toy_config(num_steps=4), str(work))      # recorded: read
  assert again.summary == final
  os.remove(work / "eval" / "bound_4.json")                                 # killed mid-eval
  redone = train.train_and_evaluate(toy_config(num_steps=4), str(work))
  assert redone.summary["total_bpd"] == pytest.approx(final["total_bpd"], rel=1e-6)
  assert (work / "eval" / "bound_4.json").exists()


# ----------------------------------------------------------------------------------------
# Every field checked before any compute; the workdir checked before evaluating.

@pytest.mark.parametrize("field,value,message", [
    ("eval.batch_size", 30, r"eval.batch_size=30 \(global\) must be divisible by the number of "
                            r"devices, 4 local"),
    ("eval.batch_size", 0, r"eval.batch_size must be an integer >= 1, got 0"),
    ("optimizer.learning_rate", -1e-3, r"optimizer.learning_rate must be a finite number > 0"),
    ("eval.num_examples", -5, r"eval.num_examples must be an integer >= 0, got -5"),
    ("training.num_steps", 0, r"training.num_steps must be an integer >= 1, got 0"),
    ("optimizer.ema_rate", 1.0, r"optimizer.ema_rate must be a finite number in \[0.0, 1.0\)"),
    ("diffusion.t_chunk_size", 0, r"diffusion.t_chunk_size must be an integer >= 1"),
])
def test_bad_fields_fail_before_any_compute(tmp_path, field, value, message):
  config = toy_config(batch_size=16)
  config.training.num_devices = 4
  group, name = field.split(".")
  with config.unlocked():
    config[group][name] = value
  with pytest.raises(ValueError, match=message):
    train.train_and_evaluate(config, str(tmp_path / "w"))
  assert not os.path.exists(tmp_path / "w" / "config.json")


def test_missing_and_unknown_fields_are_refused(tmp_path):
  config = toy_config()
  with config.unlocked():
    del config.eval["num_samples"]
    config.data.num_levels = 5
  with pytest.raises(ValueError, match=r"missing fields \['eval.num_samples'\].*unknown fields "
                     r"\['data.num_levels'\]"):
    train.validate_config(config)


def test_unwritable_workdir_fails_before_evaluating(tmp_path, trained, monkeypatch):
  work = _copy(trained, tmp_path)

  def refuse(*args, **kwargs):
    raise PermissionError(13, "Permission denied")

  monkeypatch.setattr(rundir.tempfile, "NamedTemporaryFile", refuse)
  calls = []
  monkeypatch.setattr(train.modes, "restore_run", lambda *a, **k: calls.append(a))
  with pytest.raises(train.RunDirError, match="is not writable"):
    train.evaluate(toy_config(num_steps=4), str(work))
  with pytest.raises(train.RunDirError, match="is not writable"):
    train.sample(toy_config(num_steps=4), str(work))
  assert calls == []


# ----------------------------------------------------------------------------------------
# The command line: one message for a bad override, a quiet console, the log file.

def _env():
  env = dict(os.environ)
  env["PYTHONPATH"] = os.pathsep.join([REPO, os.path.join(REPO, "tests"),
                                       env.get("PYTHONPATH", "")])
  env["XLA_FLAGS"] = ""
  return env


def test_command_line_bad_override_and_quiet_console(tmp_path):
  base = [sys.executable, "-m", "vdm.main", "--config=tests/train_configs.py"]
  bad = subprocess.run(base + [f"--workdir={tmp_path / 'a'}", "--config.data.num_levels=5"],
                       cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
  assert bad.returncode == 2
  assert "vdm: error: a config override could not be applied" in bad.stderr
  assert "--config.data.num_levels=5" in bad.stderr and "Traceback" not in bad.stderr
  bad = subprocess.run(base + [f"--workdir={tmp_path / 'b'}", "--config.eval.num_examples=-5"],
                       cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
  assert bad.returncode == 1 and "Traceback" not in bad.stderr
  assert "eval.num_examples must be an integer >= 0, got -5" in bad.stderr
  work = tmp_path / "c"
  ok = subprocess.run(base + [f"--workdir={work}", "--config.training.num_steps=4"], cwd=REPO,
                      env=_env(), capture_output=True, text=True, timeout=300)
  assert ok.returncode == 0, ok.stderr[-3000:]
  assert "step 4/4" in ok.stderr and "ETA" in ok.stderr
  assert "Bound on the held-out split at step 4" in ok.stdout
  log = (work / "log.txt").read_text()
  orbax_lines = [line for line in log.splitlines() if "orbax" in line.lower()]
  assert orbax_lines, "orbax's INFO lines go to log.txt"
  assert not [line for line in ok.stderr.splitlines() if "orbax" in line.lower()]
  out = subprocess.run(base + [f"--workdir={work}", "--mode=eval",
                               "--config.training.num_steps=4"], cwd=REPO, env=_env(),
                       capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  assert "at step 4" in out.stdout and str(work / "eval" / "eval_4.json") in out.stdout
