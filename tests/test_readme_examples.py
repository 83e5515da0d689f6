"""The README's worked examples for a denoiser and data of one's own run as written, and what
their comments claim holds (checked against closed forms and the files of the run)."""
import json
import math
import os
import re

import jax
import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(REPO, "README.md")


def readme_block(name: str) -> str:
  """The ```python block of README.md whose first line is '# README example: <name>'."""
  blocks = re.findall(r"```python\n(# README example: (\w+)\n.*?)```", open(README).read(), re.S)
  found = [code for code, label in blocks if label == name]
  assert len(found) == 1, f"README has {len(found)} blocks labelled {name!r}"
  return found[0]


def run_blocks(*names) -> dict:
  scope = {"__name__": "readme"}
  for name in names:
    exec(compile(readme_block(name), f"README.md:{name}", "exec"), scope)
  return scope


def _prior_bpd_closed_form(betas, x0):
  """KL(N(sqrt(abar_T) x0, 1 - abar_T) || N(0, 1)) averaged over dimensions, bits [B]."""
  abar = np.prod(1.0 - np.asarray(betas, np.float64))
  x0 = np.asarray(x0, np.float64).reshape(len(x0), -1)
  kl = 0.5 * (-1.0 - np.log(1.0 - abar) + (1.0 - abar) + abar * x0 ** 2)
  return kl.mean(axis=1) / math.log(2.0)


def test_denoiser_bound_example():
  from vdm.diffusion import ddpm
  s = run_blocks("denoiser_bound")
  out, out2, gd = s["out"], s["out2"], s["gd"]
  total = np.asarray(out["total_bpd"], np.float64)
  parts = np.asarray(out["prior_bpd"], np.float64) + np.asarray(out["vb"], np.float64).sum(1)
  np.testing.assert_allclose(total, parts, rtol=1e-5)
  assert out["vb"].shape == (4, 100) and np.all(np.isfinite(total))
  np.testing.assert_allclose(np.asarray(out["prior_bpd"]),
                             _prior_bpd_closed_form(gd.betas, s["x0"]), rtol=1e-4, atol=1e-7)
  # The parameters are traced: new values give a new bound from the same program.
  assert not np.allclose(np.asarray(out2["total_bpd"]), total)
  size = ddpm._calc_bpd_jit._cache_size()
  params3 = jax.tree_util.tree_map(lambda p: 2.0 * p, s["params"])
  s["gd"].calc_bpd(lambda p, x, t: s["net"].apply({"params": p}, x, t), params3, s["x0"],
                   jax.random.key(2))
  s["gd"].calc_bpd(s["model_fn"], params3, s["x0"], jax.random.key(3))
  assert ddpm._calc_bpd_jit._cache_size() <= size + 1   # the new lambda: at most one more


def test_own_data_example(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  monkeypatch.syspath_prepend(REPO)
  s = run_blocks("denoiser_bound", "own_data")
  run = tmp_path / "workdirs" / "my_blobs"
  record = json.loads((run / "eval" / "bound_40.json").read_text())
  assert record["summary"] == s["result"].summary
  assert int(s["result"].state.step) == 40
  for a, b in zip(jax.tree_util.tree_leaves(s["params"]),
                  jax.tree_util.tree_leaves(s["result"].state.ema_params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  full = s["full"]
  assert full.path.endswith(os.path.join("eval", "bpd_40.json")) and os.path.exists(full.path)
  # The prior term is deterministic: the closed form over the 64 test examples on [-1, 1].
  from vdm.diffusion import get_beta_schedule
  x0 = 2.0 * s["dataset"].test / 3.0 - 1.0
  betas = get_beta_schedule("linear", 50)
  assert full.summary["prior_bpd"] == pytest.approx(
      _prior_bpd_closed_form(betas, x0).mean(), rel=1e-4)
  assert math.isfinite(full.summary["total_bpd"]) and full.summary["total_bpd"] > 0
  # run.json records the data, so other arrays are refused on resume.
  assert json.loads((run / "run.json").read_text())["data"]["name"] == "my_blobs"
  from vdm import data, train
  other = data.from_arrays(s["dataset"].train[::-1], s["dataset"].test, num_levels=4,
                           name="my_blobs")
  with pytest.raises(train.RunDirError, match="run.json"):
    train.train_and_evaluate(s["config"], str(run), dataset=other, denoiser=s["TinyDenoiser"]())
