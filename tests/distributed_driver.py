"""One process of a multi-process CPU training run (used by test_train.py).

python tests/distributed_driver.py PORT NUM_PROCESSES PROCESS_ID WORKDIR OUT_NPZ
"""
import os
import sys

import numpy as np


def main(port, num_processes, process_id, workdir, out):
  import jax
  jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}",
                             num_processes=int(num_processes), process_id=int(process_id))
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  from train_configs import toy_config
  from vdm import data, train
  config = toy_config(num_steps=4, batch_size=16)
  result = train.train_and_evaluate(config, workdir)
  dataset = data.load_dataset(config.data)
  first = data.get_batch(dataset.train, seed=config.seed, step=0, global_batch_size=16,
                         process_index=jax.process_index(), process_count=jax.process_count(),
                         local_device_count=jax.local_device_count())
  leaves = jax.tree_util.tree_leaves(result.state.params)
  np.savez(out, process_index=jax.process_index(), process_count=jax.process_count(),
           first_batch=first, step=int(result.state.step),
           **{f"param_{i:04d}": np.asarray(a) for i, a in enumerate(leaves)})


if __name__ == "__main__":
  main(*sys.argv[1:])
