"""Resuming: kill -9 and SIGTERM mid-run, and saves handed off to a background thread.

The kill test runs the real CLI (`python -m prime_jax.main`) as subprocesses on a tiny config and
compares with an uninterrupted run in this process; the subprocesses share a compilation cache so
each restart costs seconds, not a compile.
"""

import random
import signal
import subprocess
import time

import jax
import numpy as np
import pytest

import tiny
from run_helpers import (checkpoints, ckpt_config, compile_cache, iterator_state, read_until,  # compile_cache: autouse fixture
                         restore, step_of, wait_for_checkpoint_after)
from prime_jax import checkpointing, experiment, train


# The four interrupted runs stop near step 12 (each at most 4 steps past its restart, plus what
# runs while the signal is on its way); 40 leaves room for that and a resumed stretch after it.
KILL_STEPS = 40


def test_sigkill_three_times_and_sigterm_then_resume_matches_an_uninterrupted_run(
    tmp_path, compile_cache):
  """Three SIGKILLs at random moments (mid-step or mid-async-save), one SIGTERM, then to the end."""
  overrides = dict(train__num_steps=KILL_STEPS, train__checkpoint_every=2, train__keep_last=3,
                   train__async_checkpoint=True, train__log_every=1)
  # The uninterrupted run saves only its last step (saves cost time and cannot change the
  # state); it compiles what the subprocesses then load from the shared cache.
  reference = str(tmp_path / "reference")
  train.train_and_evaluate(tiny.config(**{**overrides, "train__checkpoint_every": KILL_STEPS}),
                           reference)

  seed = random.randrange(1 << 30)
  rng = random.Random(seed)
  run_dir = str(tmp_path / "killed")
  command = tiny.command(run_dir, *tiny.cli_flags(**overrides))
  env = tiny.env(8, compile_cache)
  start, history = 0, []
  for attempt in range(4):
    kill = signal.SIGKILL if attempt < 3 else signal.SIGTERM
    target = rng.randint(start + 1, start + 4)
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env, cwd=tiny.ROOT)
    try:
      lines = read_until(proc, lambda l: (step_of(l) or 0) >= target)
      wait_for_checkpoint_after(run_dir, start)  # So that every restart has progress to keep.
      time.sleep(rng.uniform(0.0, 0.2))  # Mid-step, mid-async-write or between: at random.
      proc.send_signal(kill)
      rest, _ = proc.communicate(timeout=120)
    finally:
      if proc.poll() is None:
        proc.kill()
    output = "".join(lines) + rest
    history.append(f"attempt {attempt}: from {start}, {kill.name} after step {target}")
    if attempt:
      assert ("[train] resumed from step" in output) == (start > 0), (history, output)
    if kill == signal.SIGKILL:
      assert proc.returncode == -signal.SIGKILL, output
    else:
      assert proc.returncode == 0, output
      saved = [l for l in output.splitlines() if l.startswith("[train] signal 15: saved step")]
      assert len(saved) == 1, output
      stopped_at = int(saved[0].split()[-2].rstrip(";"))
      assert stopped_at >= target
      step, _ = restore(run_dir, tiny.config(**overrides))
      assert step == stopped_at, (history, output)
    steps = checkpoints(run_dir)
    start = max(steps, default=0)
    history[-1] += f"; checkpoints then: {steps}"
  print(f"seed {seed}:", *history, sep="\n  ")
  final = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tiny.ROOT,
                         timeout=300)
  assert final.returncode == 0, final.stdout + final.stderr
  assert f"[train] resumed from step {start}" in final.stdout, (seed, history, final.stdout)

  c = tiny.config(**overrides)
  ref_step, ref_state = restore(reference, c)
  got_step, got_state = restore(run_dir, c)
  assert ref_step == got_step == KILL_STEPS
  # Exactly equal on CPU: parameters, EMA, optimizer moments, PRNG state and skip count.
  jax.tree.map(np.testing.assert_array_equal, got_state, ref_state)
  # The grain iterator stands at the same record: no example skipped or read twice.
  assert iterator_state(run_dir, KILL_STEPS) == iterator_state(reference, KILL_STEPS), (
      seed, history)



def test_forced_save_at_a_step_just_saved_is_a_no_op(tmp_path):
  """SIGTERM right after a regular save: the preemption save must not hit StepAlreadyExists."""
  c = ckpt_config(train__async_checkpoint=True)
  state = experiment.init_state(experiment.build(c), 0)
  manager = checkpointing.make_manager(str(tmp_path / "run"), c)
  assert checkpointing.save(manager, 2, state)
  assert not checkpointing.save(manager, 2, state, force=True)
  manager.wait_until_finished()
  assert manager.all_steps() == [2]



def test_a_handed_off_save_holds_the_state_and_iterator_of_the_moment_it_was_asked_for(tmp_path):
  """The loop goes on at once (donating the state, drawing batches); the checkpoint must not."""
  from prime_jax import data  # pylint: disable=g-import-not-at-top
  c = ckpt_config(train__async_checkpoint=True)
  run = experiment.build(c)
  state = experiment.init_state(run, 0)
  expected = jax.device_get(state)
  loader = data.make_loader(c.data, "train", batch_size=4, seed=0, shuffle=True, num_epochs=None)
  iterator = iter(loader)
  next(iterator)
  saved_iterator_state = iterator.get_state()
  manager = checkpointing.make_manager(str(tmp_path / "run"), c)
  assert manager.hands_off
  assert checkpointing.save(manager, 1, state, iterator)
  bump = jax.jit(lambda s: jax.tree.map(lambda x: x + 1, s), donate_argnums=0)
  for _ in range(3):
    state = bump(state)
    next(iterator)
  manager.close()

  fresh = iter(loader)
  manager = checkpointing.make_manager(str(tmp_path / "run"), c)
  step, restored = checkpointing.restore_latest(manager, experiment.init_state(run, 1), fresh)
  manager.close()
  assert step == 1
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(restored), expected)
  assert fresh.get_state() == saved_iterator_state


def test_an_error_in_a_handed_off_save_is_raised_by_the_next_call(tmp_path, monkeypatch):
  c = ckpt_config(train__async_checkpoint=True)
  state = experiment.init_state(experiment.build(c), 0)
  manager = checkpointing.make_manager(str(tmp_path / "run"), c)

  def disk_full(*args, **kwargs):
    raise OSError("No space left on device")

  monkeypatch.setattr(manager.orbax, "save", disk_full)
  assert checkpointing.save(manager, 1, state)  # Returns before orbax is called ...
  with pytest.raises(OSError, match="No space left"):  # ... and the failure is not lost.
    manager.wait_until_finished()
  monkeypatch.undo()
  manager.close()
