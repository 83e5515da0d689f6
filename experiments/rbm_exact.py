r"""Exact test log-probability of RBMs with 20 hidden units trained by CD-1 and CD-k on MNIST.

An RBM with H hidden units has log p(v) = -F(v) - log Z with the free energy
F(v) = -b.v - sum_j softplus(c_j + (v W)_j), and log Z = logsumexp_h [c.h + sum_d softplus(b_d +
(W h)_d)] over all 2**H hidden states. For H = 20 that is 2**20 = 1,048,576 states: enumerated
exactly here in float64, streamed in chunks through `vdm.elbo.log_evidence` (the RBM's
`log_partition(layer="hidden")`), so the reported test log-probabilities are exact, not AIS
estimates. Salakhutdinov & Murray (2008, "On the quantitative analysis of deep belief networks",
ICML) report exact values for 20-hidden-unit RBMs in the same way; see REFERENCE below.

Data: the MNIST IDX files in --data_dir (default ../shared/data/mnist relative to the repo root),
read with `vdm.data.load_mnist_arrays`. Binarization: every pixel is drawn once as
Bernoulli(intensity / 255) with numpy.random.default_rng(--binarize_seed), training images first
(in file order), then test images, as Salakhutdinov & Murray (2008) binarized stochastically.

Training: CD-k (Hinton 2002): minibatches of --batch_size from a per-epoch permutation; positive
statistics from p(h|v_data), negative from a k-step Gibbs chain started at the data (last visible
state sampled, last hidden probabilities); SGD with momentum (--momentum_start for the first 5
epochs, then --momentum), L2 weight decay on W; W ~ N(0, 0.01^2), visible biases log(p/(1-p))
of the training pixel means (clipped), hidden biases 0 (Hinton 2010, "A practical guide to
training RBMs"). One jitted lax.scan per epoch, float32. Evaluation in float64.

  python -m experiments.rbm_exact [--cd_k=1,3 --epochs=20 --num_hidden=20]
"""
from __future__ import annotations

import json
import os
import sys
import time

from absl import app, flags
import jax
import jax.numpy as jnp
import numpy as np

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Salakhutdinov & Murray (2008), Table 1: exact average test log-probabilities (nats) of RBMs
# with 20 hidden units trained on binarized MNIST. Only the CD1(20) value could be cited here:
# it is quoted from this project's task description ("CD1(20) about -164.50 nats"); the paper
# itself could not be opened from this environment to confirm it or to read the CD3(20) and
# CD25(20) rows, so those are not quoted.
REFERENCE = {1: (-164.50, "Salakhutdinov & Murray (2008), Table 1, CD1(20) test; value as "
                          "quoted in the task description, not re-checked against the paper")}

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The command-line flags: defined only when run as a script, so that importing this
  module defines none (absl refuses a flag defined twice in one process)."""
  flags.DEFINE_string("data_dir", "../shared/data/mnist",
                      "Directory of the four MNIST IDX .gz files (relative paths are relative to "
                      "the repo root).")
  flags.DEFINE_list("cd_k", ["1", "3"], "Gibbs steps k of CD-k; one RBM is trained per value.")
  flags.DEFINE_integer("num_hidden", 20, "Hidden units H (log Z enumerates 2**H states).")
  flags.DEFINE_integer("epochs", 20, "Training epochs per RBM.")
  flags.DEFINE_integer("batch_size", 100, "Minibatch size.")
  flags.DEFINE_float("learning_rate", 0.05, "SGD learning rate.")
  flags.DEFINE_float("momentum_start", 0.5, "Momentum for the first 5 epochs.")
  flags.DEFINE_float("momentum", 0.9, "Momentum after the first 5 epochs.")
  flags.DEFINE_float("weight_decay", 2e-4, "L2 weight decay on W.")
  flags.DEFINE_integer("train_subset", 0, "Use the first N training images (0 = all 60000).")
  flags.DEFINE_integer("test_subset", 0, "Evaluate the first N test images (0 = all 10000).")
  flags.DEFINE_integer("train_eval_subset", 10000,
                       "Report the average log-probability of the first N training images too.")
  flags.DEFINE_integer("binarize_seed", 0, "Seed of the stochastic binarization.")
  flags.DEFINE_integer("seed", 0, "Seed of initialization, minibatch order and Gibbs sampling.")
  flags.DEFINE_integer("chunk_size", 1 << 14, "Hidden states per chunk when enumerating log Z.")
  flags.DEFINE_string("output", "results/rbm_exact.md", "Markdown report path.")


def binarize(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """uint8 [N, 28, 28] -> float32 [N, 784] with each pixel ~ Bernoulli(intensity / 255)."""
  flat = images.reshape(images.shape[0], -1).astype(np.float64) / 255.0
  return (rng.random(flat.shape) < flat).astype(np.float32)


def load_binarized(data_dir: str, binarize_seed: int, train_subset: int, test_subset: int):
  from vdm.data import load_mnist_arrays
  if not os.path.isabs(data_dir):
    data_dir = os.path.join(REPO_ROOT, data_dir)
  arrays = load_mnist_arrays(data_dir)
  rng = np.random.default_rng(binarize_seed)
  train = binarize(arrays["train_images"], rng)   # all images, so subsets keep their pixels
  test = binarize(arrays["test_images"], rng)
  if train_subset:
    train = train[:train_subset]
  if test_subset:
    test = test[:test_subset]
  return train, test


def init_params(key, train, num_hidden):
  mean = np.clip(train.mean(0), 1e-3, 1 - 1e-3)
  return {"W": 0.01 * jax.random.normal(key, (train.shape[1], num_hidden), jnp.float32),
          "visible_bias": jnp.asarray(np.log(mean / (1 - mean)), jnp.float32),
          "hidden_bias": jnp.zeros((num_hidden,), jnp.float32)}


def cd_gradient(params, v0, key, k: int):
  """CD-k estimate of d/dtheta mean log p(v0) for a minibatch v0 [B, D] (ascent direction)."""
  W, b, c = params["W"], params["visible_bias"], params["hidden_bias"]
  ph0 = jax.nn.sigmoid(c + v0 @ W)
  ph = ph0
  keys = jax.random.split(key, 2 * k)
  for i in range(k):
    h = jax.random.bernoulli(keys[2 * i], ph).astype(v0.dtype)
    v = jax.random.bernoulli(keys[2 * i + 1], jax.nn.sigmoid(b + h @ W.T)).astype(v0.dtype)
    ph = jax.nn.sigmoid(c + v @ W)
  n = v0.shape[0]
  return {"W": (v0.T @ ph0 - v.T @ ph) / n, "visible_bias": jnp.mean(v0 - v, 0),
          "hidden_bias": jnp.mean(ph0 - ph, 0)}


def make_epoch(k, batch_size, learning_rate, weight_decay):
  """jitted (params, velocity, data, key, momentum) -> (params, velocity), one pass over data."""

  def step(carry, inputs):
    params, velocity = carry
    batch, key, momentum = inputs
    grad = cd_gradient(params, batch, key, k)
    grad["W"] = grad["W"] - weight_decay * params["W"]
    velocity = jax.tree_util.tree_map(lambda u, g: momentum * u + learning_rate * g, velocity,
                                      grad)
    return (jax.tree_util.tree_map(jnp.add, params, velocity), velocity), None

  @jax.jit
  def epoch(params, velocity, data, key, momentum):
    key_perm, key_steps = jax.random.split(key)
    num_batches = data.shape[0] // batch_size
    order = jax.random.permutation(key_perm, data.shape[0])[:num_batches * batch_size]
    batches = data[order].reshape(num_batches, batch_size, data.shape[1])
    keys = jax.random.split(key_steps, num_batches)
    momenta = jnp.full((num_batches,), momentum, data.dtype)
    (params, velocity), _ = jax.lax.scan(step, (params, velocity), (batches, keys, momenta))
    return params, velocity

  return epoch


def train_rbm(train, k, key, num_hidden, epochs, batch_size, learning_rate, momentum_start,
              momentum, weight_decay):
  key_init, key_train = jax.random.split(key)
  params = init_params(key_init, train, num_hidden)
  velocity = jax.tree_util.tree_map(jnp.zeros_like, params)
  epoch_fn = make_epoch(k, batch_size, learning_rate, weight_decay)
  data = jnp.asarray(train)
  for e in range(epochs):
    mom = momentum_start if e < 5 else momentum
    params, velocity = epoch_fn(params, velocity, data, jax.random.fold_in(key_train, e), mom)
  return jax.tree_util.tree_map(np.asarray, params)


def exact_log_probs(params, datasets, chunk_size):
  """float64: (log Z, [mean log p(v) per dataset], log Z of the same RBM with W = 0, and
  its closed form sum_j softplus(c_j) + sum_d softplus(b_d)) by enumerating 2**H hidden
  states."""
  from vdm.elbo.models import RBM
  d, h = params["W"].shape
  model = RBM(num_latents=h, data_dim=d, partition_chunk_size=chunk_size)
  with jax.enable_x64(True):
    p64 = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), params)
    log_z_fn = jax.jit(lambda p: model.log_partition(p, layer="hidden"))
    log_z = float(log_z_fn(p64))
    free = jax.jit(jax.vmap(lambda v: model.free_energy(p64, v)))
    means = [float(np.mean(-np.asarray(free(jnp.asarray(x, jnp.float64))) - log_z))
             for x in datasets]
    zero = dict(p64, W=jnp.zeros_like(p64["W"]))
    log_z_w0 = float(log_z_fn(zero))
    closed = float(np.sum(np.logaddexp(0.0, np.asarray(p64["hidden_bias"])))
                   + np.sum(np.logaddexp(0.0, np.asarray(p64["visible_bias"]))))
  return log_z, means, log_z_w0, closed


def command_line() -> str:
  return ("python -m experiments.rbm_exact " + " ".join(sys.argv[1:])).strip()


def main(argv):
  del argv
  ks = []
  for k in FLAGS.cd_k:
    if not k.strip().isdigit() or int(k) < 1:
      raise ValueError(f"--cd_k must be a list of positive integers, got {FLAGS.cd_k}")
    ks.append(int(k))
  if not 1 <= FLAGS.num_hidden <= 24:
    raise ValueError(f"--num_hidden must be in 1..24 (log Z enumerates 2**num_hidden states), "
                     f"got {FLAGS.num_hidden}")
  for name in ("epochs", "batch_size", "chunk_size"):
    if getattr(FLAGS, name) < 1:
      raise ValueError(f"--{name} must be >= 1, got {getattr(FLAGS, name)}")
  start = time.time()
  train, test = load_binarized(FLAGS.data_dir, FLAGS.binarize_seed, FLAGS.train_subset,
                               FLAGS.test_subset)
  if FLAGS.batch_size > train.shape[0]:
    raise ValueError(f"--batch_size {FLAGS.batch_size} exceeds the {train.shape[0]} training "
                     f"images")
  train_eval = train[:FLAGS.train_eval_subset] if FLAGS.train_eval_subset else train
  rows = []
  for k in ks:
    t0 = time.time()
    params = train_rbm(train, k, jax.random.fold_in(jax.random.PRNGKey(FLAGS.seed), k),
                       FLAGS.num_hidden, FLAGS.epochs, FLAGS.batch_size, FLAGS.learning_rate,
                       FLAGS.momentum_start, FLAGS.momentum, FLAGS.weight_decay)
    t1 = time.time()
    log_z, (test_lp, train_lp), log_z_w0, closed = exact_log_probs(
        params, [test, train_eval], FLAGS.chunk_size)
    t2 = time.time()
    row = {"k": k, "log_z": log_z, "test": test_lp, "train": train_lp, "train_s": t1 - t0,
           "eval_s": t2 - t1, "log_z_w0_enumerated": log_z_w0, "log_z_w0_closed_form": closed}
    rows.append(row)
    print(json.dumps(row), flush=True)
  text = report(rows, train.shape[0], test.shape[0], train_eval.shape[0], time.time() - start)
  os.makedirs(os.path.dirname(FLAGS.output) or ".", exist_ok=True)
  with open(FLAGS.output, "w") as f:
    f.write(text)
  print(text)


def report(rows, num_train, num_test, num_train_eval, seconds) -> str:
  h = FLAGS.num_hidden
  lines = [
      f"# Exact log-probability of {h}-hidden-unit RBMs on binarized MNIST", "",
      "```", command_line(), "```", "",
      f"Binarization: each pixel ~ Bernoulli(intensity/255), drawn once with "
      f"numpy.random.default_rng({FLAGS.binarize_seed}) (training images, then test images). "
      f"Training: CD-k, {FLAGS.epochs} epochs over {num_train} training images, minibatch "
      f"{FLAGS.batch_size}, learning rate {FLAGS.learning_rate}, momentum "
      f"{FLAGS.momentum_start} then {FLAGS.momentum} (after 5 epochs), weight decay "
      f"{FLAGS.weight_decay}, seed {FLAGS.seed}. log Z: exact, float64, by enumerating all "
      f"2**{h} = {2**h:,} hidden states in chunks of {FLAGS.chunk_size}. "
      f"Test average over {num_test} images, train average over the first {num_train_eval}. "
      f"Total {seconds:.0f} s on this CPU; jax {jax.__version__}.", "",
      "| model | log Z | avg test log p(v) (nats) | avg train log p(v) (nats) | "
      "published (S&M 2008) | train time (s) | exact eval time (s) |",
      "|---|---|---|---|---|---|---|"]
  for r in rows:
    ref = REFERENCE.get(r["k"]) if h == 20 else None
    ref_text = f"{ref[0]:.2f} (test)" if ref else "not quoted (see below)"
    lines.append(f"| CD{r['k']}({h}) | {r['log_z']:.4f} | {r['test']:.2f} | {r['train']:.2f} | "
                 f"{ref_text} | {r['train_s']:.0f} | {r['eval_s']:.0f} |")
  lines += [
      "", "Check of the 2**H enumeration: with W set to 0 the RBM factorizes and log Z = "
      "sum_j softplus(c_j) + sum_d softplus(b_d) in closed form.", "",
      "| model | log Z (W=0), enumerated | log Z (W=0), closed form | difference |",
      "|---|---|---|---|"]
  for r in rows:
    lines.append(f"| CD{r['k']}({h}) | {r['log_z_w0_enumerated']:.6f} | "
                 f"{r['log_z_w0_closed_form']:.6f} | "
                 f"{r['log_z_w0_enumerated'] - r['log_z_w0_closed_form']:+.1e} |")
  lines += [
      "", "Published value: " + "; ".join(v[1] for v in REFERENCE.values()) + ". The training "
      "schedule here (epochs, learning rate, momentum, weight decay) is this script's own, not "
      "theirs, so the comparison is between RBMs of the same size and training rule, not the "
      "same training run; the numbers above are exact for the RBMs trained here (no sampling "
      "in the evaluation)."]
  return "\n".join(lines) + "\n"


if __name__ == "__main__":
  define_flags()
  app.run(main)
