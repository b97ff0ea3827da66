"""How long the training loop is blocked per checkpoint: asynchronous save vs a synchronous one.

  python3 -m benchmarks.checkpoint [--repeats=3] [--skip_large]

For the CPU default (configs/shakespeare.py) state and a ~100M-parameter state (the same
transformer widened to D = 768, 14 blocks), both saved with the grain iterator exactly as the
trainer saves them. Blocked time is the time inside `checkpointing.save` with async checkpointing
(the loop waits only for that: in one process, an on-device copy of the state and the iterator
state, the orbax save being handed to a worker thread); the synchronous figure is the whole save. The background write
of an async save is waited for between saves, so each save starts with nothing in flight, as in
a run whose checkpoint interval is longer than a write. Target: blocked < 10% of synchronous.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from typing import Any

import jax

from prime_jax import checkpointing, config as config_lib, data, experiment


def shakespeare_config(large: bool = False):
  """configs/shakespeare.py, or its ~100M-parameter widening with `large`."""
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  c = config_lib.load(os.path.join(root, "configs", "shakespeare.py"))
  if large:
    c.model.update(d_model=768, num_layers=14, num_heads=12, cond_dim=128)
  c.train.batch_size = len(jax.devices()) * (c.train.batch_size // len(jax.devices()) or 1)
  return c


def time_saves(config: Any, repeats: int, directory: str) -> dict[str, float]:
  """Median seconds per save: async blocked, async in the background, and synchronous."""
  run = experiment.build(config)
  state = jax.block_until_ready(experiment.init_state(run, config.seed))
  iterator = iter(data.make_loader(config.data, "train", batch_size=config.train.batch_size,
                                   seed=0, shuffle=True, num_epochs=None))
  next(iterator)
  out: dict[str, Any] = {"params": sum(x.size for x in jax.tree.leaves(state.params)),
                         "state_bytes": sum(x.nbytes for x in jax.tree.leaves(state))}
  for mode in ("async", "sync"):
    config.train.async_checkpoint = mode == "async"
    config.train.keep_last = 2
    workdir = os.path.join(directory, mode)
    manager = checkpointing.make_manager(workdir, config)
    blocked, total = [], []
    for step in range(1, repeats + 2):  # The first save (directory set-up) is not counted.
      start = time.perf_counter()
      checkpointing.save(manager, step, state, iterator, force=True)
      returned = time.perf_counter()
      manager.wait_until_finished()
      done = time.perf_counter()
      if step > 1:
        blocked.append(returned - start)
        total.append(done - start)
    manager.close()
    shutil.rmtree(workdir, ignore_errors=True)
    if mode == "async":
      out.update(async_blocked_s=statistics.median(blocked), async_total_s=statistics.median(total))
    else:
      out.update(sync_s=statistics.median(total))
  out["ratio"] = out["async_blocked_s"] / out["sync_s"]
  return out


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--skip_large", action="store_true")
  parser.add_argument("--dir", default=None, help="where to write (default: a temp dir)")
  args = parser.parse_args()
  directory = args.dir or tempfile.mkdtemp(prefix="prime_jax_ckpt_bench_")
  print(f"devices: {jax.devices()[0].platform} x{len(jax.devices())}; writing under {directory}")
  cases = [("CPU default (configs/shakespeare.py)", False)]
  if not args.skip_large:
    cases.append(("~100M parameters (D=768, 14 blocks)", True))
  try:
    for name, large in cases:
      r = time_saves(shakespeare_config(large), args.repeats, directory)
      print(f"{name}: {r['params'] / 1e6:.1f}M params, state {r['state_bytes'] / 2**20:.0f} MiB | "
            f"sync save {r['sync_s'] * 1e3:.1f} ms | async: loop blocked "
            f"{r['async_blocked_s'] * 1e3:.1f} ms, background write "
            f"{r['async_total_s'] * 1e3:.1f} ms "
            f"| blocked/sync = {100 * r['ratio']:.1f}% (target < 10%)", flush=True)
  finally:
    if args.dir is None:
      shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
  main()
