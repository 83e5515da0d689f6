r"""From log p(x) to the ELBO, one line per step, each evaluated numerically on a small model.

A sigmoid belief net with a few binary latents h and an (untrained, so imperfect) amortized
factorized q(h|x); one example x drawn from the model. Every line of the chain

  log p(x) = log sum_h p(x,h)                                   (total probability)
           = log sum_h q(h|x) p(x,h)/q(h|x)                      (multiply and divide by q > 0)
          >= sum_h q(h|x) log[p(x,h)/q(h|x)]                     (Jensen, log concave)
           = E_q[log p(x,h)] - E_q[log q(h|x)] = ELBO
  log p(x) - ELBO = KL(q(h|x) || p(h|x))
  ELBO = log p(x) when q(h|x) = p(h|x)

is computed by its own route: explicit float64 NumPy sums over the table of all 2**H states for
the middle lines, and the library (`vdm.elbo.log_evidence`, `elbo`, `kl_to_posterior`, which
stream a logsumexp) for the two ends, so a reader sees the chain hold to float precision.

  python -m experiments.elbo_derivation [--num_latents=3 --data_dim=5 --seed=0]
"""
from __future__ import annotations

import functools
import os
import sys

from absl import app, flags
import jax
import jax.numpy as jnp
import numpy as np

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The command-line flags: defined only when run as a script, so that importing this
  module defines none (absl refuses a flag defined twice in one process)."""
  flags.DEFINE_integer("num_latents", 3, "H, binary latents of the sigmoid belief net (2**H rows).")
  flags.DEFINE_integer("data_dim", 5, "D, binary visible units.")
  flags.DEFINE_integer("seed", 0, "Seed of the parameters, of q and of the example x.")
  flags.DEFINE_string("output", "results/elbo_derivation.md", "Markdown report path.")


def derivation(num_latents: int, data_dim: int, seed: int) -> dict:
  """Every quantity of the chain for one example, as Python floats / NumPy arrays (float64)."""
  from vdm import elbo as E
  from vdm.elbo import models as M
  model = M.SigmoidBeliefNet(num_latents=num_latents, data_dim=data_dim, encoder_hidden=(8,))
  key_init, key_x = jax.random.split(jax.random.PRNGKey(seed))
  params, q_params = model.init(key_init, jnp.float64)
  x = model.sample(key_x, params, 1)[0][0]
  states = E.enumerate_states(num_latents)
  lj_fn = functools.partial(model.log_joint, params)
  lq_fn = functools.partial(model.log_q, q_params)
  post_q = model.exact_posterior_q(params)
  lpost_fn = functools.partial(model.log_q, post_q)

  @jax.jit
  def library():
    table = lambda f: jax.vmap(lambda h: f(x, h))(states)
    return {"log_joint": table(lj_fn), "log_q": table(lq_fn),
            "log_evidence": E.log_evidence(lj_fn, x, states),
            "elbo": E.elbo(lj_fn, lq_fn, x, states),
            "kl": E.kl_to_posterior(lj_fn, lq_fn, x, states),
            "elbo_exact_q": E.elbo(lj_fn, lpost_fn, x, states),
            "kl_exact_q": E.kl_to_posterior(lj_fn, lpost_fn, x, states)}

  lib = jax.tree_util.tree_map(np.asarray, library())
  lj, lq = lib["log_joint"], lib["log_q"]
  p_xh, q = np.exp(lj), np.exp(lq)
  r = {"x": np.asarray(x), "states": np.asarray(states), "p_xh": p_xh, "q": q, "lj": lj, "lq": lq}
  r["log_px_library"] = float(lib["log_evidence"])
  r["total_probability"] = float(np.log(np.sum(p_xh)))
  r["importance_form"] = float(np.log(np.sum(q * (p_xh / q))))
  r["jensen"] = float(np.sum(q * np.log(p_xh / q)))
  r["e_log_p"] = float(np.sum(q * lj))
  r["e_log_q"] = float(np.sum(q * lq))
  r["elbo_library"] = float(lib["elbo"])
  post = p_xh / np.sum(p_xh)
  r["posterior"] = post
  r["gap"] = r["log_px_library"] - r["elbo_library"]
  r["kl_numpy"] = float(np.sum(q * np.log(q / post)))
  r["kl_library"] = float(lib["kl"])
  r["q_sum"] = float(np.sum(q))
  r["elbo_exact_q"] = float(lib["elbo_exact_q"])
  r["kl_exact_q"] = float(lib["kl_exact_q"])
  r["jensen_exact_q"] = float(np.sum(post * np.log(p_xh / post)))
  return r


def report(r, num_latents, data_dim, seed) -> str:
  f = lambda v: f"{v:+.12f}"
  x = "".join(str(int(v)) for v in r["x"])
  lines = [
      "# From log p(x) to the ELBO, line by line", "",
      "```", ("python -m experiments.elbo_derivation " + " ".join(sys.argv[1:])).strip(), "```",
      "",
      f"Model: a sigmoid belief net with H = {num_latents} binary latents and D = {data_dim} "
      f"binary visible units (random parameters, seed {seed}); q(h|x): a factorized Bernoulli "
      f"from an untrained MLP encoder. One example x = {x} drawn from the model. All values in "
      f"nats, float64. The sums run over all {2**num_latents} states h.", "",
      "| h | p(x,h) | q(h\\|x) | p(h\\|x) | p(x,h)/q(h\\|x) |", "|---|---|---|---|---|"]
  for h, pj, qq, pp in zip(r["states"], r["p_xh"], r["q"], r["posterior"]):
    lines.append(f"| {''.join(str(int(v)) for v in h)} | {pj:.6e} | {qq:.6f} | {pp:.6f} | "
                 f"{pj / qq:.6e} |")
  lines += [
      "", f"sum_h q(h|x) = {r['q_sum']:.15f} (q is a distribution: Jensen's weights).", "",
      "| step | expression | value | reason |", "|---|---|---|---|",
      f"| 1 | log p(x) | {f(r['log_px_library'])} | library: streamed logsumexp "
      f"(`vdm.elbo.log_evidence`) |",
      f"| 2 | = log sum_h p(x,h) | {f(r['total_probability'])} | total probability: "
      f"p(x) = sum_h p(x,h) |",
      f"| 3 | = log sum_h q(h\\|x) p(x,h)/q(h\\|x) | {f(r['importance_form'])} | multiply and "
      f"divide by q(h\\|x) > 0 |",
      f"| 4 | >= sum_h q(h\\|x) log[p(x,h)/q(h\\|x)] | {f(r['jensen'])} | Jensen: log is "
      f"concave, log sum_i w_i y_i >= sum_i w_i log y_i for w_i >= 0 summing to 1 |",
      f"| 5 | = E_q[log p(x,h)] - E_q[log q(h\\|x)] | {f(r['e_log_p'])} - ({f(r['e_log_q'])})"
      f" = {f(r['e_log_p'] - r['e_log_q'])} | log of a ratio = difference of logs; linearity "
      f"of E_q |",
      f"| 6 | = ELBO | {f(r['elbo_library'])} | library: `vdm.elbo.elbo` |", "",
      "The gap of the inequality in step 4:", "",
      "| quantity | value |", "|---|---|",
      f"| log p(x) - ELBO (steps 1 - 6) | {f(r['gap'])} |",
      f"| KL(q(h\\|x) \\|\\| p(h\\|x)) = sum_h q log(q / p(h\\|x)), NumPy | {f(r['kl_numpy'])} |",
      f"| KL, library (`vdm.elbo.kl_to_posterior`, two passes) | {f(r['kl_library'])} |",
      f"| (log p(x) - ELBO) - KL | {r['gap'] - r['kl_numpy']:+.2e} |", "",
      "Why: log p(x,h) = log p(h|x) + log p(x), so E_q[log p(x,h) - log q(h|x)] = log p(x) - "
      "E_q[log q(h|x) - log p(h|x)] = log p(x) - KL(q || p(h|x)); the KL is >= 0 and is 0 only "
      "when q(h|x) = p(h|x).", "",
      "Equality when q(h|x) := p(h|x) (the exact posterior, `exact_posterior_q`):", "",
      "| quantity | value |", "|---|---|",
      f"| log p(x) | {f(r['log_px_library'])} |",
      f"| ELBO with q = p(h\\|x), library | {f(r['elbo_exact_q'])} |",
      f"| sum_h p(h\\|x) log[p(x,h)/p(h\\|x)], NumPy | {f(r['jensen_exact_q'])} |",
      f"| KL(p(h\\|x) \\|\\| p(h\\|x)), library | {r['kl_exact_q']:+.2e} |",
      f"| log p(x) - ELBO | {r['log_px_library'] - r['elbo_exact_q']:+.2e} |", "",
      "With q = p(h|x), every ratio p(x,h)/q(h|x) equals p(x): the y_i in Jensen's inequality "
      "are all equal, which is exactly when it holds with equality.",
  ]
  return "\n".join(lines) + "\n"


def main(argv):
  del argv
  if not 1 <= FLAGS.num_latents <= 10:
    raise ValueError(f"--num_latents must be in 1..10 (one table row per state), got "
                     f"{FLAGS.num_latents}")
  if FLAGS.data_dim < 1:
    raise ValueError(f"--data_dim must be >= 1, got {FLAGS.data_dim}")
  with jax.enable_x64(True):
    r = derivation(FLAGS.num_latents, FLAGS.data_dim, FLAGS.seed)
  text = report(r, FLAGS.num_latents, FLAGS.data_dim, FLAGS.seed)
  os.makedirs(os.path.dirname(FLAGS.output) or ".", exist_ok=True)
  with open(FLAGS.output, "w") as f:
    f.write(text)
  print(text)


if __name__ == "__main__":
  define_flags()
  app.run(main)
