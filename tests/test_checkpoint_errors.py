"""Unreadable checkpoints: readers fall back to the newest readable one; none readable is an error,
never a silent start from step 0."""

import glob
import os

import jax
import numpy as np
import pytest

from run_helpers import (cached_trained, ckpt_config, compile_cache, copy_workdir,  # fixtures
                         restore)
from prime_jax import checkpointing, experiment, train


def test_truncated_newest_checkpoint_is_skipped_with_one_line_and_the_previous_restored(
    cached_trained, tmp_path, capsys):
  path = copy_workdir(cached_trained, tmp_path)
  c = ckpt_config()
  run = experiment.build(c)
  manager = checkpointing.make_manager(path, c)
  _, step2 = checkpointing.restore_latest(manager, experiment.init_state(run, 1), step=2)
  step2 = jax.device_get(step2)
  manager.close()
  for name in glob.glob(os.path.join(path, "checkpoints", "4", "**", "*"), recursive=True):
    if os.path.isfile(name):
      with open(name, "r+b") as f:
        f.truncate(os.path.getsize(name) // 2)

  assert experiment.restore_weights(run, path)[0] == 2  # A reader (eval, sample) falls back too ...
  assert os.path.isdir(os.path.join(path, "checkpoints", "4"))  # ... and moves nothing.
  capsys.readouterr()

  result = train.train_and_evaluate(c, path)  # Resumes at 2 and saves step 4 afresh.
  out = capsys.readouterr().out
  warnings = [l for l in out.splitlines() if "unreadable" in l and "trying" in l]
  assert len(warnings) == 1, out
  assert warnings[0].startswith("[checkpoint] step 4 is unreadable (")
  assert warnings[0].endswith("); trying an older one")
  assert "[train] resumed from step 2" in out
  assert result["step"] == 4
  assert len(glob.glob(os.path.join(path, "unreadable_checkpoints", "4-*"))) == 1
  # The set-aside step was saved again, readable, and the step-2 state it grew from was intact.
  step, state = restore(path, c)
  assert step == 4 and int(state.step) == 4
  manager = checkpointing.make_manager(path, c)
  _, again = checkpointing.restore_latest(manager, experiment.init_state(run, 1), step=2)
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(again), step2)



def test_no_readable_checkpoint_refuses_to_start_from_zero(cached_trained, tmp_path):
  path = copy_workdir(cached_trained, tmp_path)
  for name in glob.glob(os.path.join(path, "checkpoints", "*", "state", "**", "*"),
                        recursive=True):
    if os.path.isfile(name):
      open(name, "w").close()
  with pytest.raises(RuntimeError, match=r"could be restored \(steps tried: \[4, 2\]\); "
                                         r"refusing to start again from step 0"):
    train.train_and_evaluate(ckpt_config(), path)
