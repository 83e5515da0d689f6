"""Named random streams: every jax.random key of a run is fold_in(parent, STREAM) of a name here.

One name per independent use, so that no two uses ever share a key, and a reader can see where
each draw comes from. The values are the ones earlier versions used inline, so runs reproduce
bitwise across the change.

Run level (parent: PRNGKey(config.seed)):
  INIT          parameter initialization
  EVAL          the bound at step s: fold_in(fold_in(key, EVAL), s) (training evals and
                --mode=eval/bpd alike, so both give the same number at the same step)
  SAMPLES       samples at step s: fold_in(fold_in(key, EVAL), s + SAMPLES_OFFSET) in training,
                and in --mode=sample
Step level (parent: fold_in(state.rng, step)):
  DROPOUT       dropout masks, folded with the device index
Example level (parent: the step or eval key, then the example's global index; BatchInfo.keys):
  TIMESTEP, NOISE, NOISE_0, ANTITHETIC (the VDM antithetic offset, step level), DEQUANTIZE,
  BOUND (the per-example Monte Carlo draw of the bound)
"""
import jax

INIT = 0x7A17
EVAL = 0xE7A1
SAMPLES_OFFSET = 1
DROPOUT = 1 << 30

TIMESTEP = 0
NOISE = 1
NOISE_0 = 2
ANTITHETIC = 3
DEQUANTIZE = 4
BOUND = 5


def eval_key(seed: int, step: int) -> jax.Array:
  """The key of the bound evaluated at `step` (any mode)."""
  return jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(seed), EVAL), step)


def samples_key(seed: int, step: int) -> jax.Array:
  """The key of the samples drawn at `step` (any mode)."""
  return jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(seed), EVAL),
                            step + SAMPLES_OFFSET)
