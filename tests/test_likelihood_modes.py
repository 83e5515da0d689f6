"""--mode=iwbound and --mode=ode_nll on a tiny trained run: their records, the relations that
must hold between their numbers, and the ODE mode against a direct call of
vdm.diffusion.ode.log_likelihood (deterministic with the exact divergence)."""
import json
import math
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from train_configs import toy_config
from vdm import train
from vdm.diffusion import ode

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config():
  config = toy_config(num_steps=4)
  config.likelihood.num_examples = 12
  config.likelihood.batch_size = 4
  config.likelihood.iw_num_samples = (1, 8)
  config.likelihood.iw_chunk_size = 4
  config.likelihood.ode_rtol = config.likelihood.ode_atol = 1e-4
  return config


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  work = tmp_path_factory.mktemp("likelihood") / "run"
  train.train_and_evaluate(_config(), str(work))
  return work


def test_iwbound_record_and_its_relations(trained):
  result = train.iwbound(_config(), str(trained))
  assert result.path == os.path.join(str(trained), "eval", "iwbound_4.json")
  record = json.loads(open(result.path).read())
  assert record == json.loads(json.dumps(result.record))
  assert record["num_examples"] == 12 and record["mode"] == "iwbound"
  rows = {r["K"]: r for r in record["rows"]}
  assert set(rows) == {"calc_bpd", 1, 8}
  # K = 1: the bound is the one-sample ELBO; and log-mean-exp >= mean of the log-weights.
  assert rows[1]["iw_bound_bpd"] == pytest.approx(rows[1]["elbo_bpd"], abs=1e-6)
  assert rows[8]["iw_bound_bpd"] <= rows[8]["elbo_bpd"] + 1e-9
  assert 1.0 <= rows[8]["ess"] <= 8.0
  # calc_bpd's bound and the trajectory ELBO estimate the same expectation.
  for k in (1, 8):
    gap = abs(rows[k]["elbo_bpd"] - rows["calc_bpd"]["total_bpd"])
    assert gap < 4 * math.hypot(rows[k]["elbo_bpd_se"], rows["calc_bpd"]["total_bpd_se"]) + 0.05


def test_ode_nll_equals_a_direct_solve_with_the_exact_divergence(trained):
  config = _config()
  config.likelihood.ode_divergence = "exact"
  result = train.ode_nll(config, str(trained))
  row = result.record["rows"][0]
  assert result.path.endswith(os.path.join("eval", "ode_nll_4.json"))
  assert "continuous density" in result.record["quantity"] and row["nfe"] > 0
  # The same solve, called directly on the held-out examples (continuous data: no
  # dequantization; the exact divergence: no probes, so the keys do not matter).
  restored = train.restore_run(config, str(trained))
  obj = restored.run.objective
  x = np.asarray(restored.run.dataset.test[:12], np.float32)
  model_fn, params = obj.ode_model(restored.ema_params)
  out = ode.log_likelihood(model_fn, params, x, jax.random.key(0),
                           obj.ode_process(restored.ema_params, config.likelihood.ode_interpolation),
                           **train.modes.ode_options(config.likelihood))
  direct = -np.asarray(out["log_likelihood"], np.float64) / (2 * math.log(2.0))
  assert row["ode_nll_bpd"] == pytest.approx(direct.mean(), abs=2e-3)


def test_likelihood_modes_refuse_bad_fields_before_solving(trained):
  config = _config()
  config.likelihood.ode_rtol = 0.0
  with pytest.raises(ValueError, match=r"likelihood.ode_rtol must be a finite number > 0"):
    train.ode_nll(config, str(trained))
  config = _config()
  config.likelihood.iw_num_samples = (4, 0)
  with pytest.raises(ValueError, match=r"likelihood.iw_num_samples\[1\] must be an integer >= 1"):
    train.iwbound(config, str(trained))
  config = _config()
  config.likelihood.ode_divergence = "skilling"
  with pytest.raises(ValueError, match=r"likelihood.ode_divergence must be one of \['exact', "
                                       r"'hutchinson'\]"):
    train.ode_nll(config, str(trained))


def test_command_line_iwbound_prints_the_table(trained):
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([REPO, os.path.join(REPO, "tests")]))
  proc = subprocess.run(
      [sys.executable, "-m", "vdm.main", "--config=tests/train_configs.py",
       f"--workdir={trained}", "--mode=iwbound", "--config.training.num_steps=4",
       "--config.likelihood.num_examples=4", "--config.likelihood.iw_num_samples=(2,)"],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "| K |" in proc.stdout and "iwbound_4.json" in proc.stdout
