"""experiments/likelihoods.py shrunk to seconds: it writes its JSON, table and figure, its
oracle rows sit where theory puts them, and --render_only redraws the same table."""
import json
import os
import subprocess
import sys

from subprocess_env import fast_compile_env  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SMALL = ["--config.training.num_steps=10", "--config.training.steps_per_eval=10",
         "--config.diffusion.num_timesteps=10", "--config.diffusion.t_chunk_size=10",
         "--config.eval.num_examples=8", "--config.eval.num_samples=0",
         "--config.likelihood.num_examples=4", "--config.likelihood.batch_size=4",
         "--config.likelihood.iw_num_samples=(1,4)", "--config.likelihood.ode_rtol=1e-3",
         "--config.likelihood.ode_atol=1e-3", "--config.experiment.oracle_num_examples=16",
         "--config.experiment.oracle_iw_num_samples=(1,10,100)",
         "--config.experiment.ode_exact_divergence=False"]


def _run(args):
  proc = subprocess.run([sys.executable, "-m", "experiments.likelihoods", *args], cwd=REPO,
                        env=fast_compile_env(), capture_output=True, text=True,
                        timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return proc


def test_likelihoods_experiment_smoke(tmp_path):
  results = tmp_path / "results"
  _run([f"--workdir={tmp_path / 'w'}", f"--results_dir={results}", *SMALL])
  data = json.loads((results / "likelihoods.json").read_text())
  table = (results / "likelihoods.md").read_text()
  assert (results / "likelihoods.png").stat().st_size > 1000
  assert "does NOT hold" not in table.split("## Claims")[1].split("digits:")[0]   # oracle claims
  rows = {r["quantity"]: r for r in data["oracle"]["rows"]}
  iw = [r for r in data["oracle"]["rows"] if "K" in r]
  # The closed-form bound is an upper bound on the chain's NLL; L_K improves with K.
  assert rows["T = 20 bound (closed form)"]["gap"] > 0
  assert iw[-1]["gap"] < iw[0]["gap"]
  assert [r["K"] for r in data["digits"]["rows"] if "K" in r] == [1, 4]
  # The table is a function of the saved numbers alone.
  body = table.split("Wall time")[1].split("\n", 1)[1]
  _run([f"--results_dir={results}", "--render_only"])
  assert (results / "likelihoods.md").read_text().split("Wall time")[1].split("\n", 1)[1] == body
