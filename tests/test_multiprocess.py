"""A real multi-process run: two CLI processes with four virtual CPU devices each.

They join through `--config.distributed.*` (jax.distributed on 127.0.0.1), train, are preempted by
a SIGTERM sent to process 1 alone (JAX's preemption service makes both save the same step), and
resume. The result must equal one process with eight devices fed the same global batches
(process 0's slice of the data, then process 1's).
"""

import json
import os
import signal
import socket
import subprocess

import jax
import numpy as np

import tiny
from prime_jax import checkpointing, data, experiment, sharding

RESUMED_STEPS = 3


def _free_port() -> int:
  """A port on 127.0.0.1 that nothing listens on now (the coordinator binds it next)."""
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _flags(port, **overrides):
  """A constant learning rate after 2 warm-up steps, so num_steps may change on resume."""
  return tiny.cli_flags(
      optim__lr_schedule="constant", optim__warmup_steps=2, train__checkpoint_every=2,
      train__log_every=1,
      distributed__initialize=True, distributed__coordinator_address=f"127.0.0.1:{port}",
      distributed__num_processes=2, **overrides)


def _launch(workdir, flags, cache, logs=None):
  """The two processes; their output goes to pipes, or to the files `logs` when the caller does
  other work meanwhile (a full pipe would stall a process)."""
  outs = [open(path, "w") for path in logs] if logs else [subprocess.PIPE] * 2
  procs = [subprocess.Popen(tiny.command(workdir, *flags, f"--config.distributed.process_id={i}"),
                            stdout=outs[i], stderr=subprocess.STDOUT, text=True,
                            env=tiny.env(4, cache), cwd=tiny.ROOT) for i in range(2)]
  for out in outs if logs else ():
    out.close()
  return procs


def _finish(procs, timeout=240, logs=None):
  outputs = []
  for p in procs:
    try:
      outputs.append(p.communicate(timeout=timeout)[0])
    finally:
      if p.poll() is None:
        p.kill()
  return [open(path).read() for path in logs] if logs else outputs


def _reference(config, steps):
  """One process, eight devices, the two processes' data slices concatenated per step."""
  run = experiment.build(config)
  state = experiment.init_state(run, config.seed)
  per_process = config.train.batch_size // 2
  iterators = [iter(data.make_loader(config.data, "train", batch_size=per_process,
                                     seed=config.seed, shuffle=True, num_epochs=None,
                                     process_index=i, process_count=2)) for i in range(2)]
  step_fn = experiment.make_train_step(run)
  for _ in range(steps):
    tokens = np.concatenate([next(it)["tokens"] for it in iterators])
    state, _ = step_fn(state, sharding.global_batch(tokens, sharding.batch_sharding(run.mesh)))
  return run, jax.device_get(state), [json.loads(it.get_state()) for it in iterators]


def test_two_processes_preempt_and_resume_like_one_process_with_eight_devices(tmp_path):
  cache = str(tmp_path / "jax_cache")
  workdir = str(tmp_path / "run")
  procs = _launch(workdir, _flags(_free_port(), train__num_steps=500), cache)
  try:
    for line in procs[0].stdout:
      if line.startswith("[train] step 3/"):
        procs[1].send_signal(signal.SIGTERM)  # Process 1 only: a preemption notice on one host.
        break
  finally:
    outputs = _finish(procs)
  for p, out in zip(procs, outputs):
    assert p.returncode == 0, out
  saved = [[l for l in out.splitlines() if l.startswith("[train] signal 15: saved step")]
           for out in outputs]
  assert all(len(s) == 1 for s in saved), outputs
  assert saved[0] == saved[1], saved  # Both hosts saved the same step.
  stopped = int(saved[0][0].split()[-2].rstrip(";"))
  assert stopped >= 3

  total = stopped + RESUMED_STEPS
  logs = [str(tmp_path / f"resumed_{i}.log") for i in range(2)]
  procs = _launch(workdir, _flags(_free_port(), train__num_steps=total), cache, logs)
  try:  # The reference runs while process 0 waits on process 1's compile (it has the cache).
    config = tiny.config(optim__lr_schedule="constant", optim__warmup_steps=2,
                         train__num_steps=total)
    run, expected, iterator_states = _reference(config, total)
  finally:
    outputs = _finish(procs, logs=logs)
  for p, out in zip(procs, outputs):
    assert p.returncode == 0, out
  assert f"[train] resumed from step {stopped}" in outputs[0]

  manager = checkpointing.make_manager(workdir, config)
  step, state = checkpointing.restore_latest(manager, experiment.abstract_state(run))
  assert step == total
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
               jax.device_get(state), expected)
  files = [os.path.join(workdir, "checkpoints", str(total), "data", f"process_{i}-of-2.json")
           for i in range(2)]
  assert [json.load(open(f)) for f in files] == iterator_states
