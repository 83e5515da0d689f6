"""The training system: devices, hosts, checkpoints, resume, metrics, errors."""
import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from train_configs import digits_config, toy_config
from vdm import reporting, train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _leaves(tree):
  return [np.asarray(a) for a in jax.tree_util.tree_leaves(tree)]


def _assert_trees_equal(a, b, **tol):
  la, lb = _leaves(a), _leaves(b)
  assert len(la) == len(lb)
  for x, y in zip(la, lb):
    if tol:
      np.testing.assert_allclose(x, y, **tol)
    else:
      np.testing.assert_array_equal(x, y)


def _env():
  env = dict(os.environ)
  env["PYTHONPATH"] = os.pathsep.join([REPO, os.path.join(REPO, "tests"),
                                       env.get("PYTHONPATH", "")])
  env["XLA_FLAGS"] = ""  # one CPU device per process
  return env


def _main_cmd(workdir, *overrides):
  return [sys.executable, "-m", "vdm.main", "--config=tests/train_configs.py",
          f"--workdir={workdir}", *overrides]


# ----------------------------------------------------------------------------------------

def test_four_devices_match_one_device(tmp_path):
  """Same global batch on 4 devices and on 1: same losses and parameters (float tolerance)."""
  assert jax.local_device_count() >= 4, "conftest sets 4 virtual CPU devices"
  results = {}
  for n in (1, 4):
    config = toy_config(num_steps=4, batch_size=16)
    config.training.num_devices = n
    config.training.steps_per_log = 1
    results[n] = train.train_and_evaluate(config, str(tmp_path / f"dev{n}"))
  _assert_trees_equal(results[1].state.params, results[4].state.params, rtol=2e-5, atol=1e-6)
  _assert_trees_equal(results[1].state.opt_state, results[4].state.opt_state, rtol=2e-5,
                      atol=1e-7)
  loss = {n: [r["loss"] for r in reporting.read_metrics(str(tmp_path / f"dev{n}"))
              if r["split"] == "train"] for n in (1, 4)}
  assert len(loss[1]) == 4
  np.testing.assert_allclose(loss[1], loss[4], rtol=2e-5)
  np.testing.assert_allclose(results[1].summary["total_bpd"], results[4].summary["total_bpd"],
                             rtol=1e-5)
  # The parameters actually moved.
  init = train.init_state(*_objective_and_optimizer(toy_config()), 0).params
  assert any(np.abs(a - b).max() > 1e-4 for a, b in zip(_leaves(init),
                                                       _leaves(results[1].state.params)))


def _objective_and_optimizer(config):
  from vdm import data, objectives
  ds = data.load_dataset(config.data)
  obj = objectives.build_objective(config, ds.shape, ds.num_levels)
  return obj, train.create_optimizer(config.optimizer, config.training.num_steps)


def test_importance_sampler_state_is_shared_across_devices(tmp_path):
  config = toy_config(num_steps=3, batch_size=8)
  config.diffusion.timestep_sampler = "importance"
  config.diffusion.loss_type = "kl"
  config.training.num_devices = 2
  state = train.train_and_evaluate(config, str(tmp_path)).state
  counts = np.asarray(state.sampler_state.counts)
  assert counts.sum() == 3 * 8  # every example of every device recorded once
  history = np.asarray(state.sampler_state.loss_history)
  assert np.all(np.isfinite(history)) and history.max() > 0


def test_metrics_eval_samples_and_tensorboard_files(tmp_path):
  config = digits_config(num_steps=4)
  config.training.steps_per_log = 2
  config.eval.num_examples = 20
  result = train.train_and_evaluate(config, str(tmp_path))
  rows = reporting.read_metrics(str(tmp_path))
  train_rows = [r for r in rows if r["split"] == "train"]
  assert [r["step"] for r in train_rows] == [2, 4]
  for key in ("loss", "grad_norm", "learning_rate", "steps_per_s", "images_per_s", "eta_s",
              "loss_q0", "loss_q3", "mse", "vb"):
    assert key in train_rows[-1] and np.isfinite(train_rows[-1][key]), key
  eval_rows = [r for r in rows if r["split"] == "eval"]
  assert eval_rows and eval_rows[-1]["step"] == 4
  with open(tmp_path / "eval" / "bound_4.json") as f:
    record = json.load(f)
  terms = record["terms"]
  assert len(terms["vb"]) == config.diffusion.num_timesteps
  # The decomposition adds up: total = L_T + sum_t L_t.
  np.testing.assert_allclose(terms["total_bpd"], terms["prior_bpd"] + sum(terms["vb"]),
                             rtol=1e-6)
  assert record["summary"]["total_bpd"] == pytest.approx(result.summary["total_bpd"])
  assert len(record["rate_distortion"]["rate"]) == config.diffusion.num_timesteps
  assert os.path.getsize(tmp_path / "eval" / "bound_4.png") > 1000
  png = (tmp_path / "samples" / "samples_4.png").read_bytes()
  assert png[:8] == b"\x89PNG\r\n\x1a\n"
  out = train.sample(config, str(tmp_path))  # --mode=sample: its own file, the same key
  assert out.path == str(tmp_path / "samples" / "sample_4.png") and out.step == 4
  assert (tmp_path / "samples" / "sample_4.png").read_bytes() == png
  assert glob.glob(str(tmp_path / "tensorboard" / "events.out.tfevents.*"))


def test_digits_bound_improves_with_training(tmp_path):
  """The test bound (bits/dim, EMA params) after 150 steps is clearly below the bound at init."""
  config = digits_config(num_steps=150)
  config.eval.at_start = True
  config.eval.num_samples = 0
  after = train.train_and_evaluate(config, str(tmp_path)).summary
  evals = [r for r in reporting.read_metrics(str(tmp_path)) if r["split"] == "eval"]
  assert [r["step"] for r in evals] == [0, 150]
  before = evals[0]
  assert evals[1]["total_bpd"] == pytest.approx(after["total_bpd"])
  assert np.isfinite(before["total_bpd"]) and np.isfinite(after["total_bpd"])
  assert after["total_bpd"] < 0.7 * before["total_bpd"], (before, after)


def test_vdm_objective_trains_and_reports_terms(tmp_path):
  config = digits_config(num_steps=3)
  config.model.objective = "vdm"
  config.model.fourier_features = (4,)
  config.model.zero_init_out = True
  config.vdm.sample_steps = 5
  result = train.train_and_evaluate(config, str(tmp_path))
  s = result.summary
  for key in ("loss_recon_bpd", "loss_klz_bpd", "loss_diff_bpd", "total_bpd"):
    assert np.isfinite(s[key]), key
  assert s["total_bpd"] == pytest.approx(
      s["loss_recon_bpd"] + s["loss_klz_bpd"] + s["loss_diff_bpd"], rel=1e-5)
  assert os.path.exists(tmp_path / "samples" / "samples_3.png")


def test_resume_continues_and_eval_modes(tmp_path):
  """A second call resumes from the checkpoint; eval and sample modes read it."""
  config = toy_config(num_steps=4)
  first = train.train_and_evaluate(config, str(tmp_path))
  config.training.num_steps = 6
  second = train.train_and_evaluate(config, str(tmp_path))
  assert int(second.state.step) == 6
  straight = train.train_and_evaluate(toy_config(num_steps=6), str(tmp_path / "straight"))
  _assert_trees_equal(second.state.params, straight.state.params)
  summary = train.evaluate(config, str(tmp_path), full=True).summary
  assert np.isfinite(summary["total_bpd"])
  assert int(first.state.step) == 4


def _wait_for(predicate, timeout, proc):
  t0 = time.time()
  while time.time() - t0 < timeout:
    if predicate():
      return True
    if proc.poll() is not None:
      return False
    time.sleep(0.05)
  return False


def _checkpoint_steps(workdir):
  d = os.path.join(workdir, "checkpoints")
  return sorted(int(n) for n in os.listdir(d) if n.isdigit()) if os.path.isdir(d) else []


def test_sigterm_then_sigkill_resume_bitwise(tmp_path):
  """SIGTERM saves and stops; SIGKILL (possibly mid-save) loses nothing that breaks the resume;
  the resumed run ends bitwise equal to an uninterrupted one."""
  steps = ["--config.training.num_steps=40", "--config.training.steps_per_save=1",
           "--config.training.steps_per_log=1", "--config.training.steps_per_eval=40"]
  ref = subprocess.run(_main_cmd(tmp_path / "ref", *steps), cwd=REPO, env=_env(),
                       capture_output=True, text=True, timeout=600)
  assert ref.returncode == 0, ref.stderr[-3000:]

  work = str(tmp_path / "run")
  proc = subprocess.Popen(_main_cmd(work, *steps), cwd=REPO, env=_env(),
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  assert _wait_for(lambda: len(_checkpoint_steps(work)) >= 3, 600, proc), proc.stderr.read()
  proc.send_signal(signal.SIGTERM)
  err = proc.communicate(timeout=120)[1]
  assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
  assert "saved step" in err
  stopped_at = _checkpoint_steps(work)[-1]
  assert stopped_at < 40

  # Resume, then kill -9 in the middle of the run (saves happen every step).
  proc = subprocess.Popen(_main_cmd(work, *steps), cwd=REPO, env=_env(),
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  assert _wait_for(lambda: _checkpoint_steps(work)[-1] >= stopped_at + 3, 600, proc)
  proc.kill()
  proc.wait()
  # A partial save as a kill would leave it: a temporary directory with truncated contents.
  last = _checkpoint_steps(work)[-1]
  partial = os.path.join(work, "checkpoints", f"{last + 1}.orbax-checkpoint-tmp-99")
  shutil.copytree(os.path.join(work, "checkpoints", str(last)), partial)
  for path in glob.glob(os.path.join(partial, "**", "*"), recursive=True):
    if os.path.isfile(path):
      open(path, "w").close()

  done = subprocess.run(_main_cmd(work, *steps), cwd=REPO, env=_env(), capture_output=True,
                        text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  assert "Resumed" in done.stderr
  config = toy_config(num_steps=40)
  manager_ref = train.checkpoint_manager(str(tmp_path / "ref"), config, read_only=True)
  manager_run = train.checkpoint_manager(work, config, read_only=True)
  template = train.init_state(*_objective_and_optimizer(config), 0)
  a = train.restore_checkpoint(manager_ref, template)
  b = train.restore_checkpoint(manager_run, template)
  assert int(a.step) == int(b.step) == 40
  _assert_trees_equal(a, b)  # bitwise: params, EMA, optimizer state, sampler state, key


def test_two_processes_train_identically_on_different_shards(tmp_path):
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  procs = [subprocess.Popen(
      [sys.executable, os.path.join(REPO, "tests", "distributed_driver.py"), str(port), "2",
       str(i), str(tmp_path / "work"), str(tmp_path / f"out{i}.npz")],
      cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for i in range(2)]
  outs = [p.communicate(timeout=600) for p in procs]
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
  r = [np.load(tmp_path / f"out{i}.npz") for i in range(2)]
  assert [int(x["process_index"]) for x in r] == [0, 1]
  assert all(int(x["process_count"]) == 2 and int(x["step"]) == 4 for x in r)
  assert not np.array_equal(r[0]["first_batch"], r[1]["first_batch"])
  params = [[x[k] for k in sorted(x.files) if k.startswith("param_")] for x in r]
  assert len(params[0]) > 0
  for a, b in zip(*params):
    np.testing.assert_array_equal(a, b)
  # ... and they equal a single process on 2 devices with the same global batch.
  config = toy_config(num_steps=4, batch_size=16)
  config.training.num_devices = 2
  single = train.train_and_evaluate(config, str(tmp_path / "single"))
  for a, b in zip(params[0], _leaves(single.state.params)):
    np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-6)
  assert _checkpoint_steps(str(tmp_path / "work"))[-1] == 4  # written once, by process 0


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
  config = toy_config(num_steps=30)
  config.optimizer.learning_rate = 1e30
  config.optimizer.grad_clip = 0.0
  config.training.steps_per_save = 1
  with pytest.raises(train.NonFiniteLossError, match=r"at step \d+"):
    train.train_and_evaluate(config, str(tmp_path))
  manager = train.checkpoint_manager(str(tmp_path), config, read_only=True)
  state = train.restore_checkpoint(manager, train.init_state(*_objective_and_optimizer(config),
                                                             0))
  assert state is not None
  assert all(np.all(np.isfinite(a)) for a in _leaves(state.params))


def test_bad_configs_fail_before_training(tmp_path):
  config = toy_config()
  config.data.dataset = "imagenet"
  with pytest.raises(ValueError, match=r"digits.*mnist.*cifar10"):
    train.train_and_evaluate(config, str(tmp_path / "a"))
  config = toy_config()
  config.diffusion.mean_type = "score"
  with pytest.raises(ValueError, match=r"mean_type must be one of \['eps', 'x0', 'mean'\]"):
    train.train_and_evaluate(config, str(tmp_path / "b"))
  config = toy_config()
  config.model.objective = "gan"
  with pytest.raises(ValueError, match=r"model.objective must be one of \['ddpm', 'vdm'\]"):
    train.train_and_evaluate(config, str(tmp_path / "c"))
  config = toy_config(batch_size=10)
  config.training.num_devices = 4
  with pytest.raises(ValueError, match=r"batch_size=10 .* divisible by .* 4"):
    train.train_and_evaluate(config, str(tmp_path / "d"))
  config = digits_config()
  config.data.dataset, config.data.data_dir = "mnist", str(tmp_path)
  with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte.gz"):
    train.train_and_evaluate(config, str(tmp_path / "e"))
  config = toy_config()
  config.training.substeps = 4
  with pytest.raises(ValueError, match="steps_per_log=2 must be a multiple of"):
    train.train_and_evaluate(config, str(tmp_path / "f"))
  assert not os.path.exists(tmp_path / "a" / "checkpoints")


def test_clip_bound_option_clips_x0_inside_the_bound():
  """diffusion.clip_bound=True: the objective's bound is calc_bpd with clip_denoised=True (the
  DDPM / improved-diffusion evaluation protocol); False (default): unclipped. Continuous data
  refuse it."""
  import jax.numpy as jnp
  config = digits_config()
  config.diffusion.num_timesteps, config.diffusion.t_chunk_size = 8, 8
  obj, _ = _objective_and_optimizer(config)
  assert not obj.clip_bound
  config.diffusion.clip_bound = True
  clipped, _ = _objective_and_optimizer(config)
  assert clipped.clip_bound
  params = obj.init(jax.random.PRNGKey(0))
  x = jnp.asarray(np.random.RandomState(0).randint(0, 17, (3, 8, 8, 1)) / 8.0 - 1.0, jnp.float32)
  key = jax.random.PRNGKey(1)
  d = obj.diffusion
  for o, clip in ((obj, False), (clipped, True)):
    got = o.bound(params, x, key)
    want = d.calc_bpd(o.model_fn, params, x, key, clip_denoised=clip)
    np.testing.assert_allclose(got["total_bpd"], want["total_bpd"], rtol=1e-6)
  # Clipping changes the bound of an untrained network (its x0 predictions leave [-1, 1]).
  assert np.abs(obj.bound(params, x, key)["vb"] - clipped.bound(params, x, key)["vb"]).max() > 1e-3
  config = toy_config()
  config.diffusion.clip_bound = True
  with pytest.raises(ValueError, match=r"clip_bound=True .* continuous \(allowed: False\)"):
    _objective_and_optimizer(config)
