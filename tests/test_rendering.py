"""The committed results regenerate from their saved numbers: each experiment's Markdown body (and
figure) is a function of its results JSON alone (rendering is a separate step from computing),
and the committed Markdown is exactly that rendering under the header of the run that computed
it."""
import json
import os

import pytest

from experiments import (compression, ddpm_paper, exact_bounds, improved_ddpm, likelihoods,
                         vdm_paper)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# name -> (render(results, figure directory) -> Markdown body, the figures it draws there)
RENDERERS = {
    "compression": (lambda r, d: compression.render(r), ()),
    "exact_bounds": (lambda r, d: exact_bounds.render(r), ()),
    "likelihoods": (likelihoods.render, ("likelihoods.png",)),
    "improved_ddpm": (improved_ddpm.render, ("improved_ddpm.png",)),
    "vdm_paper": (vdm_paper.render, ("vdm_paper.png",)),
    "ddpm_table1": (lambda r, d: ddpm_paper.render(r, "table1", d), ()),
    "ddpm_table2": (lambda r, d: ddpm_paper.render(r, "table2", d), ("ddpm_table2.png",)),
    "ddpm_table4": (lambda r, d: ddpm_paper.render(r, "table4", d), ("ddpm_table4.png",)),
}


def _committed(name):
  with open(os.path.join(REPO, "results", f"{name}.json")) as f:
    results = json.load(f)
  with open(os.path.join(REPO, "results", f"{name}.md")) as f:
    markdown = f.read()
  return results, markdown


@pytest.mark.parametrize("name", sorted(RENDERERS))
def test_committed_markdown_is_the_rendering_of_the_committed_json(name, tmp_path):
  render, figures = RENDERERS[name]
  results, markdown = _committed(name)
  body = render(results, str(tmp_path))
  for fig in figures:
    assert (tmp_path / fig).stat().st_size > 1000
  # write_result's header (command, machine, wall time), then exactly the body.
  assert markdown.rstrip().endswith(body.rstrip())
  assert markdown.count(body.strip()) == 1
  assert f"```\n{results['command']}\n```" in markdown
  if isinstance(results.get("machine"), str):   # (older files keep a dict of facts)
    assert f"Machine: {results['machine']}." in markdown


def test_readme_tables_are_the_renderings_of_the_committed_results():
  """Every marked table of README.md is its experiment's readme_table of the committed JSON
  (`python -m experiments.readme` rewrites them), and a stale number is caught."""
  from experiments import readme
  with open(readme.README) as f:
    text = f.read()
  names = readme.BLOCK.findall(text)
  assert {m[1] for m in names} >= {"improved_ddpm", "exact_bounds"}
  assert readme.render(text) == text
  stale = text.replace("<!-- results: improved_ddpm -->\n| schedule",
                       "<!-- results: improved_ddpm -->\n| schedules")
  assert stale != text and readme.render(stale) == text
  with pytest.raises(ValueError, match="no experiment of that name"):
    readme.render("<!-- results: nope -->\n| x |\n<!-- /results -->")


def test_report_text_unwraps_paragraphs_and_keeps_blocks(tmp_path, monkeypatch):
  from experiments import common
  (tmp_path / "demo.md").write_text(
      "A note for the reader.\n<!-- @intro -->\n\nFirst line\nwrapped {x:.2f}.\n\n"
      "1. item one\n   continues\n2. item two\n- bullet\n| a | b |\n|---|---|\n"
      "<!-- @end -->\nLast {{braced}}.\n")
  monkeypatch.setattr(common, "REPORTS", str(tmp_path))
  common.report_text.cache_clear()
  try:
    text = common.report_text("demo")
  finally:
    common.report_text.cache_clear()
  assert text == {"intro": "First line wrapped {x:.2f}.\n\n1. item one continues\n"
                           "2. item two\n- bullet\n| a | b |\n|---|---|",
                  "end": "Last {{braced}}."}
  assert text["intro"].format(x=1).startswith("First line wrapped 1.00.")
  assert text["end"].format() == "Last {braced}."


def test_every_report_section_is_used_by_its_script():
  """No dead prose: each section of experiments/reports/<script>.md is named in the script, and
  every template parses as a str.format string."""
  import string
  from experiments import common
  names = sorted(f[:-3] for f in os.listdir(common.REPORTS) if f.endswith(".md"))
  assert names
  for name in names:
    with open(os.path.join(REPO, "experiments", f"{name}.py")) as f:
      source = f.read()
    for section, template in common.report_text(name).items():
      assert f'"{section}"' in source, (name, section)
      list(string.Formatter().parse(template))


@pytest.mark.parametrize("bench", ["bench_train", "bench_bound"])
def test_committed_benchmark_report_is_the_render_only_of_its_rows(bench, tmp_path):
  """results/bench_{train,bound}.md merge runs of several settings: the whole file, head
  included (each run's command, machine and wall time come from its rows), is what
  `--render_only` writes from the committed .jsonl, whoever re-renders it."""
  import importlib
  import shutil
  from experiments import common
  module = importlib.import_module(f"experiments.{bench}")
  shutil.copy(os.path.join(REPO, "results", f"{bench}.jsonl"), tmp_path)
  common.bench_report(str(tmp_path / f"{bench}.md"), module.TITLE, module.render)
  with open(os.path.join(REPO, "results", f"{bench}.md")) as f:
    committed = f.read()
  assert (tmp_path / f"{bench}.md").read_text() == committed
  with open(tmp_path / f"{bench}.jsonl") as f:
    rows = [json.loads(line) for line in f]
  for command in {r["command"] for r in rows}:
    assert f"\n{command}  # " in committed
  assert "\npython -\n" not in committed
  with pytest.raises(FileNotFoundError, match="--render_only: no saved rows"):
    common.bench_report(str(tmp_path / "absent.md"), module.TITLE, module.render)


def test_merged_report_head_names_every_runs_command_and_wall_time(tmp_path):
  from experiments import common
  machine = {"cpu": "AMD EPYC", "cores": 2, "backend": "cpu", "devices": 1, "jax": "0.10.2",
             "jaxlib": "0.10.2", "XLA_FLAGS": ""}
  rows = [{"bench": "x_run", "command": "python -m experiments.x", "machine": machine,
           "malloc": "system", "wall_s": 120.0},
          {"bench": "x_run", "command": "python -m experiments.x --reps=3",
           "machine": dict(machine, cpu="Intel Xeon"), "malloc": "tcmalloc", "wall_s": 30.0}]
  text = open(common.write_rows_result("x", "T", "body", rows, str(tmp_path))).read()
  assert ("```\npython -m experiments.x  # AMD EPYC (2 cores), system\n"
          "python -m experiments.x --reps=3  # Intel Xeon (2 cores), tcmalloc\n```") in text
  assert "Machines: AMD EPYC, 2 cores, cpu x 1; jax 0.10.2, jaxlib 0.10.2; XLA_FLAGS='' | " \
         "Intel Xeon, 2 cores" in text
  assert ("Wall time: 2.0 min (AMD EPYC (2 cores), system), 0.5 min (Intel Xeon (2 cores), "
          "tcmalloc).") in text
