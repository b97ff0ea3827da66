"""The NaN guard: a non-finite update stops the run (or is skipped), and no checkpoint holds it."""

import jax
import numpy as np
import pytest

import tiny
from run_helpers import compile_cache, restore  # compile_cache: autouse fixture
from prime_jax import train


# Non-finite updates. The NaN is injected honestly through the config: an absurd learning rate
# (1e30, no warm-up) makes the first update finite but sends the parameters to ~1e30, so the loss
# of step 2 and every later step is NaN.


def _nan_config(**overrides):
  return tiny.config(**{"optim__lr": 1e30, "optim__warmup_steps": 0,
                        "optim__lr_schedule": "constant", "train__num_steps": 4,
                        "train__checkpoint_every": 1, "train__async_checkpoint": False,
                        "train__log_every": 100, **overrides})


def test_nan_stops_the_run_naming_the_step_and_checkpoints_stay_finite(tmp_path):
  path = str(tmp_path / "nan")
  with pytest.raises(train.NonFiniteError, match=r"non-finite value at step 2: .*loss_bits"):
    train.train_and_evaluate(_nan_config(), path)
  step, state = restore(path, _nan_config())
  assert step in (1, 2)
  for leaf in jax.tree.leaves(state.params):
    assert np.isfinite(leaf).all()


def test_nan_skip_policy_skips_bad_updates_and_finishes(tmp_path, capsys):
  path = str(tmp_path / "skip")
  result = train.train_and_evaluate(_nan_config(train__nan_policy="skip",
                                                  train__max_skipped_steps=5), path)
  out = capsys.readouterr().out
  assert result["step"] == 4 and result["skipped"] == 3
  assert "[train] step 2: non-finite" in out and "update skipped" in out
  step, state = restore(path, _nan_config())
  assert step == 4 and int(state.skipped) == 3
  for leaf in jax.tree.leaves(state.params):
    assert np.isfinite(leaf).all()


def test_nan_skip_cap_names_the_first_step_beyond_it(tmp_path):
  with pytest.raises(train.NonFiniteError, match=r"non-finite value at step 3: .*"
                                                   r"train.max_skipped_steps=1"):
    train.train_and_evaluate(_nan_config(train__nan_policy="skip", train__max_skipped_steps=1),
                               str(tmp_path / "cap"))
