r"""README.md's result tables, rendered from the saved results (results/<name>.json).

  python -m experiments.readme            # rewrite every marked table of README.md
  python -m experiments.readme --check    # exit 1 (and show the difference) if one is stale

A table of README.md between the lines `<!-- results: NAME -->` and `<!-- /results -->` is the
`readme_table` of NAME's experiment applied to results/NAME.json; tests/test_rendering.py
checks that README.md holds exactly those renderings, so its numbers cannot drift from the
results files.
"""
from __future__ import annotations

import difflib
import json
import os
import re
import sys

from experiments import common

README = os.path.join(common.REPO, "README.md")
BLOCK = re.compile(r"(<!-- results: (\S+) -->\n)(.*?)(<!-- /results -->)", re.S)


def renderers() -> dict:
  """NAME -> readme_table(results) of the experiment that saves results/NAME.json."""
  from experiments import ddpm_paper, exact_bounds, improved_ddpm, vdm_paper
  out = {"improved_ddpm": improved_ddpm.readme_table, "exact_bounds": exact_bounds.readme_table,
         "vdm_paper": vdm_paper.readme_table}
  out.update({f"ddpm_{t}": (lambda r, t=t: ddpm_paper.readme_table(r, t))
              for t in ("table1", "table2", "table4")})
  return out


def render(text: str, results_dir: str = common.RESULTS) -> str:
  """`text` with every marked block replaced by the table rendered from its saved results."""
  tables = renderers()

  def table(m):
    name = m.group(2)
    if name not in tables:
      raise ValueError(f"README block <!-- results: {name} -->: no experiment of that name; "
                       f"known: {sorted(tables)}")
    with open(os.path.join(results_dir, f"{name}.json")) as f:
      body = tables[name](json.load(f))
    return m.group(1) + body.rstrip("\n") + "\n" + m.group(4)

  return BLOCK.sub(table, text)


def main(argv) -> int:
  with open(README) as f:
    text = f.read()
  new = render(text)
  if "--check" in argv[1:]:
    if new != text:
      sys.stdout.writelines(difflib.unified_diff(text.splitlines(True), new.splitlines(True),
                                                 "README.md", "rendered"))
      return 1
    return 0
  if new != text:
    tmp = README + ".tmp"
    with open(tmp, "w") as f:
      f.write(new)
    os.replace(tmp, README)
  print(f"README.md: {len(BLOCK.findall(text))} tables rendered"
        + (" (changed)" if new != text else " (unchanged)"))
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv))
