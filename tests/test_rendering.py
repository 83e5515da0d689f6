"""The committed results regenerate from their saved numbers: each experiment's Markdown body is
a function of its results JSON alone (rendering is a separate step from computing)."""
import json
import os

import pytest

from experiments import compression, exact_bounds, likelihoods

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _committed(name):
  with open(os.path.join(REPO, "results", f"{name}.json")) as f:
    results = json.load(f)
  with open(os.path.join(REPO, "results", f"{name}.md")) as f:
    markdown = f.read()
  return results, markdown


@pytest.mark.parametrize("name, render", [
    ("compression", compression.render),
    ("exact_bounds", exact_bounds.render),
    ("likelihoods", None),
])
def test_committed_markdown_is_the_rendering_of_the_committed_json(name, render, tmp_path):
  results, markdown = _committed(name)
  if render is None:   # likelihoods also draws its figure into the results directory
    body = likelihoods.render(results, str(tmp_path))
    assert (tmp_path / "likelihoods.png").stat().st_size > 1000
  else:
    body = render(results)
  # write_result's header (command, machine, wall time), then exactly the body.
  assert markdown.rstrip().endswith(body.rstrip())
  assert markdown.count(body.strip()) == 1
