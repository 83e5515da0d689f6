"""Configs of the paper-table experiments (experiments/<name>.py): one base config per table."""


def cpu_schedule(config, num_steps: int, steps_per_log: int):
  """The CPU-scale training shared by the paper experiments, set on `config` in place.

  Adam, lr 1e-3 after 100 warmup steps, gradient clipping at 1.0, EMA 0.995; `num_steps` steps
  at batch 64 on one device, one substep per dispatch, a checkpoint every 500 steps and one
  evaluation at the end (of the whole 297-image digits test split, in 3 batches of 99); no
  sample grids (the experiments draw their own samples).
  """
  o = config.optimizer
  o.name, o.learning_rate, o.warmup_steps, o.grad_clip, o.ema_rate = "adam", 1e-3, 100, 1.0, 0.995
  t = config.training
  t.num_steps, t.batch_size, t.substeps, t.num_devices = num_steps, 64, 1, 1
  t.steps_per_log = steps_per_log
  t.steps_per_eval = num_steps     # one evaluation, at the end (keep equal to num_steps)
  t.steps_per_save = 500
  e = config.eval
  e.batch_size, e.num_examples, e.num_samples = 99, 0, 0
  return config
