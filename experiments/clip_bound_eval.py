r"""The bound of finished runs re-evaluated with x0 predictions clipped to [-1, 1].

    python -m experiments.clip_bound_eval \
        --run_dirs=workdirs/improved_ddpm/cosine_simple-40b28911,workdirs/improved_ddpm/linear_simple-23f52b7a

The DDPM and improved-diffusion evaluation code clip the predicted x0 inside the bound
(calc_bpd_loop(clip_denoised=True)); our trainer's evaluation does not unless
`diffusion.clip_bound=True`. For each run directory (a finished vdm.train run: config.json and
checkpoints/) this copies the directory to --scratch (so the run's own eval files stay as they
are), sets diffusion.clip_bound=True, and evaluates the full bound of the latest checkpoint's EMA
parameters on the whole test split (vdm.train.evaluate, full=True). Prints one JSON line per run:
the run's own (unclipped) summary, from its last eval/bound_<step>.json, beside the clipped one.
"""
import glob
import json
import os
import shutil

from absl import app, flags

from experiments import common

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The command-line flags: defined only when run as a script, so that importing this
  module defines none (absl refuses a flag defined twice in one process)."""
  flags.DEFINE_list("run_dirs", [], "Finished run directories (config.json, checkpoints/).")
  flags.DEFINE_string("scratch", "/tmp/vdm_clip_bound_eval", "Where the copies are evaluated.")
  flags.DEFINE_string("out", None, "Also append the JSON lines to this file.")


KEYS = ("total_bpd", "prior_bpd", "decoder_bpd", "diffusion_bpd", "vb_q0_bpd", "vb_q1_bpd",
        "vb_q2_bpd", "vb_q3_bpd")


def load_config(run_dir: str):
  """The run's config.json as a ConfigDict (lists back to tuples where the model expects them)."""
  import ml_collections
  path = os.path.join(run_dir, "config.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"--run_dirs: {path} not found (not a vdm.train run directory)")
  with open(path) as f:
    cfg = ml_collections.ConfigDict(json.load(f))
  # Fields added to configs/base.py after the run was made take their defaults (the trainer
  # compares only the fields the run recorded against them, and the new ones are evaluation-only).
  from configs.base import get_base_config
  base = get_base_config()
  with cfg.unlocked():
    for group, fields in base.items():
      if group not in cfg:
        cfg[group] = fields
      elif isinstance(fields, ml_collections.ConfigDict):
        for name in fields:
          if name not in cfg[group]:
            cfg[group][name] = fields[name]
  for k in ("ch_mult", "attn_resolutions", "fourier_features"):
    if k in cfg.model and isinstance(cfg.model[k], list):
      cfg.model[k] = tuple(cfg.model[k])
  return cfg


def last_bound(run_dir: str) -> dict:
  files = glob.glob(os.path.join(run_dir, "eval", "bound_*.json"))
  if not files:
    return {}
  latest = max(files, key=lambda p: int(os.path.basename(p)[6:-5]))
  with open(latest) as f:
    return json.load(f)["summary"]


def main(argv):
  del argv
  if not FLAGS.run_dirs:
    raise ValueError("--run_dirs: give at least one finished run directory")
  configs = {d: load_config(d) for d in FLAGS.run_dirs}   # every error before any evaluation
  from vdm import train
  for run_dir, cfg in configs.items():
    if cfg.model.objective != "ddpm":
      raise ValueError(f"{run_dir}: model.objective={cfg.model.objective!r}; clip_bound applies "
                       f"to 'ddpm' runs only")
    copy = os.path.join(FLAGS.scratch, os.path.basename(os.path.normpath(run_dir)))
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(run_dir, copy)
    cfg.diffusion.clip_bound = True
    timer = common.Timer()
    clipped = train.evaluate(cfg, copy, full=True).summary
    own = last_bound(run_dir)
    common.print_json({"run": run_dir, "clip_bound": True, "seconds": timer.seconds,
                       **{f"clipped_{k}": float(clipped[k]) for k in KEYS if k in clipped},
                       **{f"unclipped_{k}": float(own[k]) for k in KEYS if k in own},
                       "command": common.command_line(), "machine": common.machine()},
                      FLAGS.out)


if __name__ == "__main__":
  define_flags()
  app.run(main)
