"""The readers' restore (eval, sample, the sample scorer): one copy of the weights, nothing else."""

import glob
import os

import jax
import numpy as np
import pytest

from run_helpers import ckpt_config, compile_cache, copy_workdir  # compile_cache: autouse fixture
from prime_jax import checkpointing, experiment


def _tree_equal(a, b):
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(a), jax.device_get(b))


def _files(path):
  return sorted((f, os.path.getsize(f), os.path.getmtime(f))
                for f in glob.glob(os.path.join(path, "**", "*"), recursive=True))


def test_weights_equal_the_full_restore_and_the_workdir_is_untouched(trained):
  run = experiment.build(ckpt_config())
  before = _files(trained)
  _, state = experiment.restore(run, trained)
  _, state2 = experiment.restore(run, trained, 2)
  for ema, want, want2 in ((True, state.ema_params, state2.ema_params),
                           (False, state.params, state2.params)):
    step, params = experiment.restore_weights(run, trained, ema=ema)
    assert step == 4
    _tree_equal(params, want)
    step, params = experiment.restore_weights(run, trained, 2, ema=ema)
    assert step == 2
    _tree_equal(params, want2)
  assert not np.array_equal(*jax.device_get(
      (state.params["head"]["bias"], state.ema_params["head"]["bias"])))
  leaves = jax.tree.leaves(params)
  assert all(x.sharding == s for x, s in zip(leaves, jax.tree.leaves(run.state_shardings.params)))
  assert _files(trained) == before
  with pytest.raises(ValueError, match=r"no checkpoint at step 3; available steps: \[2, 4\]"):
    experiment.restore_weights(run, trained, 3)


def test_a_checkpoint_without_ema_gives_its_params(trained, tmp_path):
  """A converted workdir holds params only: its EMA is its params."""
  c = ckpt_config()
  run = experiment.build(c)
  _, state = experiment.restore(run, trained)
  path = str(tmp_path / "converted")
  manager = checkpointing.make_manager(path, c)
  checkpointing.save(manager, 7, state.replace(ema_params=None, opt_state=None))
  manager.close()
  step, params = experiment.restore_weights(run, path, ema=True)
  assert step == 7
  _tree_equal(params, state.params)


def test_an_unreadable_newest_step_falls_back_in_one_line(trained, tmp_path, capsys):
  path = copy_workdir(trained, tmp_path)
  run = experiment.build(ckpt_config())
  _, want = experiment.restore_weights(run, path, 2)
  for name in glob.glob(os.path.join(path, "checkpoints", "4", "**", "*"), recursive=True):
    if os.path.isfile(name):
      with open(name, "r+b") as f:
        f.truncate(os.path.getsize(name) // 2)
  capsys.readouterr()
  step, params = experiment.restore_weights(run, path)
  assert step == 2
  _tree_equal(params, want)
  lines = [l for l in capsys.readouterr().out.splitlines() if "unreadable" in l]
  assert len(lines) == 1 and lines[0].startswith("[checkpoint] step 4 is unreadable (")
  assert os.path.isdir(os.path.join(path, "checkpoints", "4"))  # A reader moves nothing.
