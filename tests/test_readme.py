"""The README's worked example runs, and its claims about the result hold."""
import os
import re

import numpy as np
from scipy.special import logsumexp

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")


def test_readme_elbo_example_runs_and_the_identity_holds():
  text = open(README).read()
  block = re.search(r"```python\n(.*?)```", text, re.S).group(1)
  scope = {}
  exec(compile(block, "README.md", "exec"), scope)
  report = scope["report"]
  # Independent NumPy: the mixture's log p(x) and the KL of the 50/50 q to the posterior.
  means = np.array([[-1.0, 0.0], [2.0, 1.0]])
  w = np.array([0.3, 0.7])
  for i, x in enumerate(np.array([[0.0, 0.0], [2.0, 2.0]])):
    lj = np.log(w) - 0.5 * np.sum((x - means) ** 2, axis=1) - np.log(2 * np.pi)
    log_px = logsumexp(lj)
    post = np.exp(lj - log_px)
    kl = np.sum(0.5 * np.log(0.5 / post))
    np.testing.assert_allclose(report["log_evidence"][i], log_px, rtol=1e-5)
    np.testing.assert_allclose(report["kl"][i], kl, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(report["log_evidence"][i] - report["elbo"][i], kl, rtol=1e-4,
                               atol=1e-6)


def test_readme_commands_match_ci():
  text = open(README).read()
  ci = open(os.path.join(os.path.dirname(README), ".ci", "run")).read()
  test_cmd = re.search(r'pip install -e "\.\[test\]" && python -m pytest -q -n 2 --dist loadfile '
                       r'tests', text)
  assert test_cmd and test_cmd.group(0) in ci
