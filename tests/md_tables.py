"""Reading the Markdown tables the experiment scripts write (shared by their smoke tests)."""
import re


def _cells(line):
  return [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line)[1:-1]]


def table(text, first_header_cell):
  """(header cells, data rows) of the first Markdown table whose header starts with the cell."""
  lines = text.splitlines()
  start = next(i for i, l in enumerate(lines) if l.startswith(f"| {first_header_cell} |"))
  rows = []
  for line in lines[start + 2:]:
    if not line.startswith("|"):
      break
    rows.append(_cells(line))
  return _cells(lines[start]), rows


def table_rows(text, first_header_cell):
  """The data rows (lists of cells) of that table."""
  return table(text, first_header_cell)[1]


def numbers(cell):
  """The decimal numbers written in a cell (e.g. '1.23 ± 0.04' -> [1.23, 0.04])."""
  return [float(v) for v in re.findall(r"[-+]?\d+\.\d+(?:e[-+]?\d+)?", cell)]
