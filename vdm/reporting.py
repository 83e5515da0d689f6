"""Files a run writes: metrics.jsonl (+ TensorBoard), bound decompositions, PNG images.

Only the process that calls these with enabled=True (process 0) writes anything.
"""
from __future__ import annotations

import json
import math
import os
import struct
import zlib
from typing import Optional

import numpy as np
from absl import logging


class MetricWriter:
  """Appends {"step", "split", ...scalars} lines to DIR/metrics.jsonl and TensorBoard events."""

  def __init__(self, workdir: str, enabled: bool = True):
    self.enabled = enabled
    self._tb = None
    if not enabled:
      return
    os.makedirs(workdir, exist_ok=True)
    self.path = os.path.join(workdir, "metrics.jsonl")
    try:
      from tensorboardX import SummaryWriter
      self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))
    except ImportError:
      logging.info("tensorboardX not installed: metrics go to metrics.jsonl only")

  def write(self, step: int, split: str, scalars: dict) -> None:
    if not self.enabled:
      return
    row = {"step": int(step), "split": split}
    row.update({k: float(v) for k, v in scalars.items() if np.ndim(v) == 0})
    with open(self.path, "a") as f:
      f.write(json.dumps(row) + "\n")
    if self._tb is not None:
      for k, v in row.items():
        if k not in ("step", "split"):
          self._tb.add_scalar(f"{split}/{k}", v, step)
      self._tb.flush()

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()


def read_metrics(workdir: str) -> list:
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f if line.strip()]


def bound_summary(bound: dict) -> dict:
  """Scalars of a mean bound decomposition (bits/dim).

  DDPM (keys total_bpd, prior_bpd, vb [T]): total, prior L_T, decoder L_0 = vb[0], the
  diffusion terms sum_{t>=1} vb[t], and their sum over each timestep quartile.
  VDM (keys loss_*_bpd): those terms and their total. Other 0-d entries pass through.
  """
  out = {k: float(v) for k, v in bound.items() if np.ndim(v) == 0}
  if "vb" in bound:
    vb = np.asarray(bound["vb"], np.float64)
    T = vb.shape[0]
    out["decoder_bpd"] = float(vb[0])
    out["diffusion_bpd"] = float(vb[1:].sum())
    for q in range(4):
      out[f"vb_q{q}_bpd"] = float(vb[(np.arange(T) * 4) // T == q].sum())
  return out


_TERM_NAMES = [
    ("prior_bpd", "L_T      prior KL(q(x_T|x_0) || N(0, I))"),
    ("diffusion_bpd", "sum L_t  diffusion terms, t = 1..T-1"),
    ("vb_q0_bpd", "           of which timesteps in quartile 1"),
    ("vb_q1_bpd", "           quartile 2"),
    ("vb_q2_bpd", "           quartile 3"),
    ("vb_q3_bpd", "           quartile 4"),
    ("decoder_bpd", "L_0      decoder -log p(x_0 | x_1)"),
    ("loss_klz_bpd", "prior    KL(q(z_1|x) || N(0, I))"),
    ("loss_diff_bpd", "diffusion loss"),
    ("loss_recon_bpd", "reconstruction -log p(x | z_0)"),
    ("total_bpd", "total    upper bound on -log2 p(x) per dimension"),
]


def decomposition_table(summary: dict, step: int) -> str:
  """The bound decomposition as aligned text lines (bits/dim), for the console."""
  lines = [f"Bound on the held-out split at step {step} (EMA parameters), bits/dim:"]
  for key, name in _TERM_NAMES:
    if key in summary:
      lines.append(f"  {name:<48s} {summary[key]:10.4f}")
  return "\n".join(lines)


def likelihood_table(record: dict) -> str:
  """A Markdown table of a --mode=iwbound / ode_nll record: one row per entry of its `rows`,
  each value beside its standard error (`<name>_se`)."""
  rows = record["rows"]
  names = []
  for r in rows:   # the union of the rows' names, in order of first appearance
    names += [k for k in r if not k.endswith("_se") and k not in names]
  names = [k for k in names if k != "seconds"] + ["seconds"] * ("seconds" in names)
  head = "| " + " | ".join(names) + " |"
  lines = [f"{record['mode']} at step {record['step']}, {record['num_examples']} held-out "
           f"examples ({record.get('units', '')}; +- one standard error over the examples)",
           head, "|" + "---|" * len(names)]
  for r in rows:
    cells = []
    for k in names:
      v = r.get(k, "")
      if isinstance(v, float) and f"{k}_se" in r:
        cells.append(f"{v:.4f} +- {r[k + '_se']:.4f}")
      elif isinstance(v, float):
        cells.append(f"{v:.4g}")
      else:
        cells.append(str(v))
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def compression_table(record: dict) -> str:
  """A Markdown table of a --mode=compress record (bits/dim; +- one standard error)."""
  r = record
  n, d = r["num_examples"], r["dims"]
  rows = [
      ("bound of the coded chain", f"{r['bound_bpd']:.4f} +- {r['bound_bpd_se']:.4f}",
       r["bound"]),
      ("rate, measured from the file", f"{r['rate_bpd']:.4f}",
       "file bits less the one-off bits below, per dim"),
      ("overhead over the bound",
       f"{r['overhead_bpd']:+.4f} +- {r['overhead_bpd_se']:.4f} ({r['overhead_percent']:+.2f}%)",
       "rate - bound; SE of the paired difference"),
      ("coder overhead", f"{r['coder_overhead_bpd']:+.4f}",
       "rate - ideal codelength of the coded trajectories"),
      ("one-off bits", f"{r['one_off_bpd']:.4f}",
       f"seed {r['seed_bits']} + container {r['framing_bits']} + checksum "
       f"{r['checksum_bits']} bits"),
      ("whole file", f"{r['file_bpd']:.4f}", f"{r['file_bytes']} bytes"),
  ]
  lines = [f"compress at step {r['step']}: {n} held-out examples of {d} dims (bits/dim)",
           "| quantity | bits/dim | what |", "|---|---|---|"]
  lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
  dec = r.get("decode_seconds")
  lines.append(f"encode {r['encode_seconds']:.1f} s ({r['encode_images_per_s']:.1f} images/s), "
               f"{r['encode_over_bound_time']:.2f}x the bound's {r['bound_seconds']:.1f} s"
               + (f"; decode {dec:.1f} s" if dec is not None else "")
               + f"; round trip {r['round_trip']}")
  return "\n".join(lines)


def format_summary(summary: dict) -> str:
  return ", ".join(f"{k} {v:.4f}" for k, v in summary.items())


def write_bound(eval_dir: str, step: int, bound: dict, summary: dict,
                num_levels: Optional[int], name: str = "bound", info: Optional[dict] = None) -> str:
  """DIR/eval/<name>_<step>.json: every term (per-timestep arrays as lists), the summary and
  `info` (how it was computed: number of examples, the key); plus <name>_<step>.png (vb per
  timestep; rate-distortion) when matplotlib is installed. Training writes name 'bound',
  --mode=eval 'eval' and --mode=bpd 'bpd', so no mode overwrites another's record."""
  os.makedirs(eval_dir, exist_ok=True)
  record = {"step": int(step), "summary": summary, **(info or {}),
            "terms": {k: np.asarray(v, np.float64).tolist() for k, v in bound.items()}}
  if "vb" in bound and "xstart_mse" in bound and num_levels:
    from vdm.diffusion.ddpm import rate_distortion
    rd = rate_distortion({"prior_bpd": np.reshape(bound["prior_bpd"], (1,)),
                          "vb": np.asarray(bound["vb"])[None],
                          "xstart_mse": np.asarray(bound["xstart_mse"])[None]},
                         num_levels=num_levels)
    record["rate_distortion"] = {k: np.asarray(v).tolist() for k, v in rd.items()}
  path = os.path.join(eval_dir, f"{name}_{step}.json")
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(record, f)
  os.replace(tmp, path)
  if "vb" in bound:
    plot_bound(os.path.join(eval_dir, f"{name}_{step}.png"), record)
  return path


def plot_bound(path: str, record: dict) -> bool:
  """PNG: the terms L_t per timestep (log scale) and, if present, the rate-distortion curve."""
  try:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
  except ImportError:
    logging.info("matplotlib not installed: skipping %s", path)
    return False
  vb = np.asarray(record["terms"]["vb"])
  rd = record.get("rate_distortion")
  fig, axes = plt.subplots(1, 2 if rd else 1, figsize=(10 if rd else 5, 3.6), squeeze=False)
  ax = axes[0, 0]
  ax.semilogy(np.arange(len(vb)), np.maximum(vb, 1e-12), lw=1)
  ax.set_xlabel("timestep t (0 = decoder L_0)")
  ax.set_ylabel("term (bits/dim)")
  ax.set_title(f"step {record['step']}: total {record['summary'].get('total_bpd', float('nan')):.3f}"
               f" bits/dim")
  if rd:
    ax = axes[0, 1]
    ax.plot(rd["rate"], rd["distortion"], lw=1)
    ax.set_xlabel("rate (bits/dim)")
    ax.set_ylabel("distortion (RMSE, pixel scale)")
    ax.set_title("reverse process: rate vs distortion")
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return True


def _png_bytes(image: np.ndarray) -> bytes:
  """Encode uint8 [H, W] (grey) or [H, W, 3] (RGB) as PNG (zlib, no extra dependency)."""
  if image.ndim == 2:
    color_type, rows = 0, image
  else:
    color_type, rows = 2, image.reshape(image.shape[0], -1)
  raw = b"".join(b"\x00" + row.tobytes() for row in np.ascontiguousarray(rows, np.uint8))

  def chunk(tag, data):
    return (struct.pack(">I", len(data)) + tag + data
            + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF))

  header = struct.pack(">IIBBBBB", image.shape[1], image.shape[0], 8, color_type, 0, 0, 0)
  return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 6))
          + chunk(b"IEND", b""))


def image_grid(samples: np.ndarray, num_levels: Optional[int], scale: int = 1) -> np.ndarray:
  """Samples [N, H, W, C] on the model scale [-1, 1] -> uint8 grid image, 1-pixel borders."""
  x = np.asarray(samples, np.float64)
  n, h, w, c = x.shape
  if num_levels:  # quantize as the decoder does, then stretch to 0..255 for display
    v = np.clip(np.round((x + 1) * (num_levels - 1) / 2), 0, num_levels - 1)
    img = np.round(v * 255.0 / (num_levels - 1))
  else:
    img = np.clip(np.round((x + 1) * 127.5), 0, 255)
  img = img.astype(np.uint8)
  cols = int(math.ceil(math.sqrt(n)))
  rows = int(math.ceil(n / cols))
  grid = np.full((rows * (h + 1) + 1, cols * (w + 1) + 1, c), 255, np.uint8)
  for i in range(n):
    r, q = divmod(i, cols)
    grid[1 + r * (h + 1):1 + r * (h + 1) + h, 1 + q * (w + 1):1 + q * (w + 1) + w] = img[i]
  if scale > 1:
    grid = grid.repeat(scale, axis=0).repeat(scale, axis=1)
  return grid[..., 0] if c == 1 else grid


def write_sample_grid(path: str, samples: np.ndarray, num_levels: Optional[int]) -> str:
  """PNG grid of image samples (small images are magnified so the grid is at least ~256 px)."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  h = samples.shape[1]
  grid = image_grid(samples, num_levels, scale=max(1, 32 // h))
  with open(path, "wb") as f:
    f.write(_png_bytes(grid))
  return path
