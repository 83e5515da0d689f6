"""experiments/clip_bound_eval.py on a tiny finished run: one JSON line with the clipped and the
unclipped bound, the run directory left untouched (structure and finiteness, not the result)."""
import json
import math
import os
import subprocess
import sys

from train_configs import digits_config
from vdm import train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_clip_bound_eval_on_a_finished_run(tmp_path):
  config = digits_config(num_steps=2)
  config.diffusion.num_timesteps, config.diffusion.t_chunk_size = 8, 8
  config.training.steps_per_log = config.training.steps_per_eval = 2
  config.training.steps_per_save = 2
  config.eval.num_examples, config.eval.num_samples = 16, 0
  config.eval.at_start = False
  run = tmp_path / "run"
  train.train_and_evaluate(config, str(run))
  own = sorted((run / "eval").glob("bound_*.json"))
  assert own, list(run.iterdir())
  before = own[-1].read_text()
  env = dict(os.environ, PYTHONPATH=REPO)
  proc = subprocess.run([sys.executable, "-m", "experiments.clip_bound_eval",
                         f"--run_dirs={run}", f"--scratch={tmp_path / 'scratch'}"],
                        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  rows = [json.loads(l) for l in proc.stdout.splitlines() if l.startswith("{")]
  assert len(rows) == 1 and rows[0]["clip_bound"] is True
  for k in ("clipped_total_bpd", "unclipped_total_bpd", "clipped_vb_q3_bpd"):
    assert math.isfinite(rows[0][k]) and rows[0][k] > 0, (k, rows[0])
  # The clipped terms sum to the clipped total; the run's own eval file is unchanged.
  r = rows[0]
  assert abs(r["clipped_prior_bpd"] + r["clipped_diffusion_bpd"] + r["clipped_decoder_bpd"]
             - r["clipped_total_bpd"]) < 1e-4
  assert own[-1].read_text() == before
  bad = subprocess.run([sys.executable, "-m", "experiments.clip_bound_eval",
                        f"--run_dirs={tmp_path / 'nothing'}"], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=300)
  assert bad.returncode != 0 and "config.json not found" in bad.stderr
