"""A NumPy reference for the tests of vdm.elbo: a sigmoid belief net enumerated by a loop."""
import itertools

import numpy as np
from scipy.special import logsumexp


def brute_force_sbn(p, x):
  """(log p(x), ELBO, KL, p(h|x) [2**H]) of a sigmoid belief net by a loop over all 2**H states.

  p(h) = prod_j Bern(h_j; sigmoid(c_j)), p(x|h) = prod_d Bern(x_d; sigmoid(W h + b)_d),
  q(h|x) = prod_j Bern(h_j; sigmoid(U x + d)_j); p a dict of W [D, H], b [D], c [H], U [H, D],
  d [H]; x [D] binary. Float64 NumPy, nats.
  """
  p = {k: np.asarray(v, np.float64) for k, v in p.items()}
  log_sig = lambda z: -np.logaddexp(0.0, -z)
  lj, lq = [], []
  for h in itertools.product([0.0, 1.0], repeat=p["c"].shape[0]):
    h = np.array(h)
    a = p["W"] @ h + p["b"]
    lj.append(np.sum(h * log_sig(p["c"]) + (1 - h) * log_sig(-p["c"]))
              + np.sum(x * log_sig(a) + (1 - x) * log_sig(-a)))
    aq = p["U"] @ x + p["d"]
    lq.append(np.sum(h * log_sig(aq) + (1 - h) * log_sig(-aq)))
  lj, lq = np.array(lj), np.array(lq)
  log_px = logsumexp(lj)                                  # log p(x) = log sum_h p(x, h)
  q = np.exp(lq)
  post = np.exp(lj - log_px)                              # p(h|x) = p(x, h) / p(x)
  return log_px, float(np.sum(q * (lj - lq))), float(np.sum(q * (lq - np.log(post)))), post
