"""Shared pieces of the experiment and benchmark scripts: provenance, tables, result files."""
from __future__ import annotations

import functools
import json
import math
import os
import platform
import re
import resource
import shlex
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(REPO, "results")


def command_line() -> str:
  """The command that is running, as a user would type it from the repo root."""
  argv = list(sys.argv)
  if argv and argv[0].endswith(".py"):
    rel = os.path.relpath(os.path.abspath(argv[0]), REPO)
    if rel.startswith("experiments" + os.sep):
      argv[0] = "-m " + rel[:-3].replace(os.sep, ".")
  return "python " + " ".join([argv[0]] + [shlex.quote(a) for a in argv[1:]])


def cpu_name() -> str:
  """This CPU's model name (vdm.xla_options.cpu_model, which the probe's cache is keyed by)."""
  from vdm.xla_options import cpu_model
  return cpu_model()["model"]


def loadavg() -> float | None:
  """1-minute load average: other processes sharing the cores inflate timings."""
  try:
    return os.getloadavg()[0]
  except OSError:
    return None


def machine() -> dict:
  """What ran: CPU, core count, load, JAX versions, XLA flags and the date."""
  import jax
  import jaxlib
  return {"cpu": cpu_name(), "cores": os.cpu_count(), "loadavg_1min": loadavg(),
          "platform": platform.platform(), "python": platform.python_version(),
          "jax": jax.__version__, "jaxlib": jaxlib.__version__,
          "backend": jax.default_backend(), "devices": jax.device_count(),
          "XLA_FLAGS": os.environ.get("XLA_FLAGS", ""), "measured": time.strftime("%Y-%m-%d")}


def env_info() -> dict:
  """The provenance keys every benchmark JSON line carries (DESIGN.md, Benchmarks), with the
  allocator the process runs on."""
  m = machine()
  return {"jax": m["jax"], "jaxlib": m["jaxlib"], "XLA_FLAGS": m["XLA_FLAGS"], "machine": m,
          "command": command_line(), "malloc": allocator()}


def median(xs) -> float:
  xs = sorted(xs)
  n = len(xs)
  return xs[n // 2] if n % 2 else 0.5 * (xs[n // 2 - 1] + xs[n // 2])


def matmul_peak_gflops(n: int, reps: int = 3) -> tuple[float, list]:
  """Best float32 n x n x n jnp.dot throughput (GFLOP/s) and the times of the repetitions.

  The best repetition is kept: other processes sharing the cores can only slow a matmul down.
  """
  import jax
  import jax.numpy as jnp
  a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32)
  b = jax.random.normal(jax.random.PRNGKey(1), (n, n), jnp.float32)
  f = jax.jit(jnp.dot)
  f(a, b).block_until_ready()
  times = []
  for _ in range(reps):
    t0 = time.perf_counter()
    f(a, b).block_until_ready()
    times.append(time.perf_counter() - t0)
  return 2.0 * n**3 / min(times) / 1e9, times


def machine_line(m: dict | None = None) -> str:
  """One line of `m` (a `machine()` dict, e.g. a benchmark row's; default: this process's)."""
  m = machine() if m is None else m
  return (f"{m['cpu']}, {m['cores']} cores, {m['backend']} x {m['devices']}; jax {m['jax']}, "
          f"jaxlib {m['jaxlib']}; XLA_FLAGS='{m['XLA_FLAGS']}'")


def max_rss_mb() -> float:
  """Peak resident memory of this process so far (MiB)."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def number(value, digits: int = 4, missing: str = "—", nonfinite: str | None = None) -> str:
  """A table cell: `digits` decimals, a tiny nonzero value in scientific notation; `missing`
  for None, `nonfinite` (default: `missing`) for nan or inf."""
  if value is None:
    return missing
  value = float(value)
  if not math.isfinite(value):
    return missing if nonfinite is None else nonfinite
  if value != 0 and abs(value) < 0.5 * 10.0 ** -digits:
    return f"{value:.1e}"
  return f"{value:.{digits}f}"


def markdown_table(headers, rows) -> str:
  """A GitHub markdown table; floats are printed with 4 significant decimals unless str."""
  def fmt(v):
    if isinstance(v, float):
      return f"{v:.4f}" if abs(v) >= 1e-3 or v == 0 else f"{v:.2e}"
    return str(v).replace("|", "\\|")
  lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
  lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
  return "\n".join(lines)


REPORTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "reports")
_SECTION = re.compile(r"^<!-- @([a-z0-9_]+) -->$", re.M)
_BLOCK_START = re.compile(r"(\d+\. |- |\||#|!\[|```)")


def _unwrap(text: str) -> str:
  """Join the wrapped lines of each paragraph with single spaces (Markdown's soft breaks made
  explicit). A line starts a new line of output when it or the line before is blank, or when it
  begins a block: a list item ('1. ', '- '), a table row, a heading, an image or a fence."""
  out = []
  for line in text.split("\n"):
    if out and out[-1] and line and not _BLOCK_START.match(line) and not out[-1].startswith(
        ("|", "#", "```")):
      out[-1] += " " + line.lstrip()
    else:
      out.append(line)
  return "\n".join(out)


@functools.lru_cache(maxsize=None)
def report_text(name: str) -> dict:
  """The prose of a report, experiments/reports/<name>.md, as {section: str.format template}.

  The file is Markdown cut into sections by lines `<!-- @section -->`; text before the first
  is a comment for the reader. Each section is unwrapped (see _unwrap) and stripped of
  surrounding blank lines; the script fills its `{fields}` with str.format ('{{' for a brace).
  """
  with open(os.path.join(REPORTS, f"{name}.md")) as f:
    parts = _SECTION.split(f.read())
  names = parts[1::2]
  if len(set(names)) != len(names):
    raise ValueError(f"experiments/reports/{name}.md: a section name repeats in {names}")
  return {key: _unwrap(body.strip("\n")) for key, body in zip(names, parts[2::2])}


class Timer:
  def __init__(self):
    self.start = time.time()

  @property
  def seconds(self) -> float:
    return time.time() - self.start


def write_result(name: str, title: str, body: str, seconds: float | None = None,
                 results_dir: str = RESULTS, command: str | None = None,
                 machine: str | None = None) -> str:
  """results/<name>.md: title, the command that made it, machine and wall time, then body
  (command and machine default to this process's)."""
  wall = None if seconds is None else f"{seconds / 60:.1f} min"
  return _write_md(name, title, body, results_dir, command or command_line(),
                   f"Machine: {machine or machine_line()}.", wall)


def write_rows_result(name: str, title: str, body: str, rows: list,
                      results_dir: str = RESULTS) -> str:
  """results/<name>.md of a benchmark whose JSON lines merge runs of several settings
  (merge_rows_by_cpu): the commands, machines and wall times in its head are the ones the
  rows recorded (env_info; 'wall_s' of a run's summary row), not this process's, so that
  re-rendering the .jsonl (--render_only) writes the same file."""
  settings = {}
  for r in rows:
    if "command" in r:
      settings.setdefault(r["command"], {})[setting_label(r)] = None
  commands = [f"{c}  # {'; '.join(s)}" for c, s in settings.items()]
  machines = list(dict.fromkeys(machine_line(r["machine"]) for r in rows if "machine" in r))
  walls = [f"{r['wall_s'] / 60:.1f} min ({setting_label(r)})" for r in rows if "wall_s" in r]
  return _write_md(name, title, body, results_dir, "\n".join(commands) or "-",
                   ("Machine: " if len(machines) < 2 else "Machines: ")
                   + " | ".join(machines or ["-"]) + ".", ", ".join(walls) or None)


def _write_md(name, title, body, results_dir, command: str, machine: str, wall) -> str:
  os.makedirs(results_dir, exist_ok=True)
  head = [f"# {title}", "", "Produced by:", "", "```", command, "```", "", machine]
  if wall is not None:
    head.append(f"Wall time: {wall}.")
  path = os.path.join(results_dir, f"{name}.md")
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    f.write("\n".join(head) + "\n\n" + body.rstrip() + "\n")
  os.replace(tmp, path)
  return path


def define_experiment_flags(config_file: str, workdir: str, what: str) -> None:
  """The flags of an experiment with saved results (defined when run as a script, so that the
  modules import side by side): --config (configs/<config_file>), --workdir (workdirs/<workdir>,
  `what` runs there), --results_dir, --render_only."""
  from absl import flags
  from ml_collections import config_flags
  config_flags.DEFINE_config_file("config", os.path.join(REPO, "configs", config_file),
                                  "Experiment config (a vdm config with an `experiment` group).")
  flags.DEFINE_string("workdir", os.path.join(REPO, "workdirs", workdir),
                      f"Run directory of {what} (trained if absent, reused if done).")
  _define_results_flags()


def _define_results_flags() -> None:
  """--results_dir and --render_only, of every script with saved results."""
  from absl import flags
  flags.DEFINE_string("results_dir", RESULTS, "Where the JSON, Markdown and figures go.")
  flags.DEFINE_bool("render_only", False, "Only redraw the Markdown and figures from the "
                    "saved JSON (no training, no evaluation).")


def run_experiment(name: str, title: str, compute, render) -> str:
  """The main of a script defined by `define_experiment_flags`: compute(config, workdir) after
  every field of --config is checked (vdm.train.validate_config), or --render_only;
  `compute_or_render` does the rest."""
  from absl import flags
  f = flags.FLAGS

  def checked():
    from vdm import train
    train.validate_config(f.config)          # every field before any compute
    return compute(f.config, f.workdir)

  return compute_or_render(name, title, f.results_dir, f.render_only, checked, render)


def compute_or_render(name: str, title: str, results_dir: str, render_only: bool, compute,
                      render) -> str:
  """The main of an experiment: results = compute() (a JSON-able dict, timed, with the command
  and machine added) saved atomically to <results_dir>/<name>.json, or read back from it when
  render_only; then <results_dir>/<name>.md from render(results) (a Markdown body). Returns
  the Markdown's path; prints the body."""
  if render_only:
    results = load_results(name, results_dir)
  else:
    timer = Timer()
    results = compute()
    results.update(seconds=timer.seconds, command=command_line(), machine=machine_line())
    save_results(name, results_dir, results)
  path = write_rendered(name, title, results_dir, results, render)
  print(f"wrote {path}")
  return path


def load_results(name: str, results_dir: str) -> dict:
  """<results_dir>/<name>.json, or FileNotFoundError saying how to make it."""
  path = os.path.join(results_dir, f"{name}.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"--render_only: no saved results {path}; run the experiment "
                            "without --render_only first")
  with open(path) as f:
    return json.load(f)


def save_results(name: str, results_dir: str, results: dict) -> str:
  """Write <results_dir>/<name>.json atomically (a kill leaves the previous file intact)."""
  os.makedirs(results_dir, exist_ok=True)
  path = os.path.join(results_dir, f"{name}.json")
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(results, f, indent=1)
  os.replace(tmp, path)
  return path


def write_rendered(name: str, title: str, results_dir: str, results: dict, render) -> str:
  """<results_dir>/<name>.md from render(results); the header keeps the command, machine and
  wall time recorded in results (a re-rendering keeps the computing run's header), or this
  process's while they are absent (a progress rendering of partial results)."""
  body = render(results)
  machine = results.get("machine")
  path = write_result(name, title, body, results.get("seconds"), results_dir,
                      command=results.get("command"),
                      machine=machine if isinstance(machine, str) else None)
  print(body)
  return path


def define_paper_flags(config_file: str, workdir_root: str, full_scale: str = "") -> None:
  """The flags of a paper script (defined when run as a script): --config
  (configs/paper/<config_file>), --workdir_root (workdirs/<workdir_root>: one directory per
  run), --results_dir, --render_only, and --full_scale (help text `full_scale`) if given."""
  from absl import flags
  from ml_collections import config_flags
  config_flags.DEFINE_config_file("config", os.path.join(REPO, "configs", "paper", config_file),
                                  "CPU-scale base config of the runs.", lock_config=False)
  flags.DEFINE_string("workdir_root", os.path.join("workdirs", workdir_root),
                      "Root of the run directories (one per run, named by its config).")
  _define_results_flags()
  if full_scale:
    flags.DEFINE_bool("full_scale", False, full_scale)


def pyplot():
  """matplotlib.pyplot on the file-only Agg backend, or None when matplotlib is missing (an
  optional dependency: the scripts then write their tables without figures)."""
  try:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
  except ImportError:
    return None
  return plt


def save_figure(fig, path: str, dpi: int = 110) -> str:
  """Lay out, write (creating the directory) and close a matplotlib figure; returns path."""
  import matplotlib.pyplot as plt
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=dpi)
  plt.close(fig)
  return path


def cpu_label(row: dict) -> str:
  """'<CPU model> (<n> cores)' of a benchmark row (its env_info machine)."""
  m = row["machine"]
  return f"{m['cpu']} ({m['cores']} cores)"


def cpu_and_allocator(row: dict) -> tuple:
  """(cpu_label, allocator) of a benchmark row ('-' for a row that did not record one): what
  one benchmark run measures, and a later run on the same CPU and allocator replaces."""
  return cpu_label(row), row.get("malloc", "-")


def setting_label(row: dict) -> str:
  """'<CPU model> (<n> cores), <allocator>' of a benchmark row (the CPU alone if unrecorded)."""
  cpu, malloc = cpu_and_allocator(row)
  return cpu if malloc == "-" else f"{cpu}, {malloc}"


def merge_rows_by_cpu(path: str, rows: list) -> list:
  """The benchmark rows of `path` (JSON lines) from other settings (CPU model and allocator,
  cpu_and_allocator), then `rows`: a run replaces the earlier figures of its own setting and
  keeps every other's; written back atomically."""
  mine = {cpu_and_allocator(r) for r in rows}
  old = []
  if os.path.exists(path):
    with open(path) as f:
      old = [json.loads(line) for line in f if line.strip()]
  merged = [r for r in old if cpu_and_allocator(r) not in mine] + rows
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in merged)
  os.replace(tmp, path)
  return merged


def print_json(record: dict, out: str | None = None) -> None:
  """One JSON object per line (benchmarks), printed and optionally appended to `out`."""
  line = json.dumps(record)
  print(line, flush=True)
  if out:
    with open(out, "a") as f:
      f.write(line + "\n")


# The benchmarks' allocator: XLA:CPU's large per-step buffers cost page faults under glibc's
# malloc; with tcmalloc they do not (ours and the peer alike run on it).

TCMALLOC_PATHS = ("/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4",
                  "/usr/lib/x86_64-linux-gnu/libtcmalloc.so.4",
                  "/usr/lib64/libtcmalloc_minimal.so.4", "/usr/lib/libtcmalloc_minimal.so.4")
_REEXEC_GUARD = "VDM_BENCH_REEXEC"


def define_render_only_flag() -> None:
  """--render_only of a benchmark script with a --output report."""
  from absl import flags
  flags.DEFINE_bool("render_only", False, "Measure nothing: re-render --output's Markdown "
                    "(default the results/ one) from the .jsonl beside it.")


def bench_report(output: str, title: str, render, new_rows: list | None = None) -> str:
  """<output> (Markdown) of a benchmark that keeps one run per setting in the .jsonl beside
  it: `new_rows` merged into that file (merge_rows_by_cpu), or with None (--render_only) its
  saved rows as they are (a missing file is an error naming it); then the whole Markdown, head
  included, from those rows (write_rows_result, body render(rows)). Returns its path."""
  out_dir = os.path.dirname(output) or "."
  name = os.path.splitext(os.path.basename(output))[0]
  path = os.path.join(out_dir, name + ".jsonl")
  if new_rows is not None:
    rows = merge_rows_by_cpu(path, new_rows)
  elif not os.path.exists(path):
    raise FileNotFoundError(f"--render_only: no saved rows at {path}; run the benchmark first")
  else:
    with open(path) as f:
      rows = [json.loads(line) for line in f if line.strip()]
  return write_rows_result(name, title, render(rows), rows, results_dir=out_dir)


def define_malloc_flag() -> None:
  """--malloc=auto|system of a benchmark script."""
  from absl import flags
  flags.DEFINE_enum("malloc", "auto", ["auto", "system"],
                    "'auto': when libtcmalloc is installed (apt-get install libtcmalloc-minimal4) "
                    "and not yet preloaded, re-run this process with LD_PRELOAD=libtcmalloc "
                    "(XLA:CPU's large buffers then stop costing page faults; ours and the peer "
                    "both run on it); 'system': as is.")


def allocator() -> str:
  """The malloc this process runs on: 'tcmalloc', 'preload:<LD_PRELOAD>' or 'system'."""
  pre = os.environ.get("LD_PRELOAD", "")
  return "tcmalloc" if "tcmalloc" in pre else ("preload:" + pre if pre else "system")


def reexec_with_tcmalloc(module: str, malloc: str) -> None:
  """With malloc == 'auto', re-run `python -m <module> <this argv>` once with tcmalloc
  preloaded, if it is installed and not preloaded yet (its subprocesses inherit it)."""
  if malloc != "auto" or os.environ.get(_REEXEC_GUARD) or allocator() == "tcmalloc":
    return
  lib = next((p for p in TCMALLOC_PATHS if os.path.exists(p)), None)
  if lib is None:
    return
  env = dict(os.environ, **{_REEXEC_GUARD: "1"})
  env["LD_PRELOAD"] = (lib + " " + env.get("LD_PRELOAD", "")).strip()
  sys.stdout.flush()
  os.execve(sys.executable, [sys.executable, "-m", module] + sys.argv[1:], env)


# PyTorch peer of the benchmarks (optional: torch and diffusers are not dependencies).

def peer_available():
  """(True, '') when torch and diffusers import (the benchmarks' PyTorch peer), else (False, why)."""
  try:
    import diffusers  # noqa: F401
    import torch  # noqa: F401
  except Exception as e:  # optional dependency
    return False, f"{type(e).__name__}: {e}"
  return True, ""


def torch_unet(cfg: dict, image):
  """diffusers.UNet2DModel with the shape of our U-Net config `cfg` (ch, ch_mult,
  num_res_blocks, attn_resolutions, dropout) on `image` (H, W, C): the PyTorch peer's model."""
  from diffusers import UNet2DModel
  channels = tuple(cfg["ch"] * m for m in cfg["ch_mult"])
  down = []
  res = image[0]
  for _ in channels:
    down.append("AttnDownBlock2D" if res in cfg["attn_resolutions"] else "DownBlock2D")
    res //= 2
  up = [b.replace("Down", "Up") for b in reversed(down)]
  return UNet2DModel(
    sample_size=image[0], in_channels=image[2], out_channels=image[2],
    layers_per_block=cfg["num_res_blocks"], block_out_channels=channels,
    down_block_types=tuple(down), up_block_types=tuple(up),
    norm_num_groups=cfg.get("num_groups", 32),
    norm_eps=1e-6, dropout=cfg["dropout"], attention_head_dim=None,
    freq_shift=1, flip_sin_to_cos=False)
