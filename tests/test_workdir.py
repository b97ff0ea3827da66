"""Workdir safety: checkpoints of an incompatible config are refused, naming what differs."""

import json
import os

import pytest

from run_helpers import ckpt_config, compile_cache, copy_workdir  # compile_cache: autouse fixture
from prime_jax import experiment, train, workdir


@pytest.mark.parametrize("overrides,expected", [
    (dict(model__ell=4), "model.ell: 2 in the workdir, 4 now (ℓ, sub-tokens per token)"),
    (dict(model__d_model=64), "model.d_model: 32 in the workdir, 64 now (model shapes)"),
    (dict(data__name="shakespeare_chars"), "data.tokenizer: 'bytes' in the workdir, 'chars' now"),
    (dict(model__scan_layers=True), "model.scan_layers: False in the workdir, True now"),
])
def test_incompatible_workdir_is_refused_naming_what_differs(trained, tmp_path, overrides,
                                                            expected):
  path = copy_workdir(trained, tmp_path)
  before = open(os.path.join(path, "config.json")).read()
  with pytest.raises(workdir.IncompatibleWorkdirError) as e:
    train.train_and_evaluate(ckpt_config(**overrides), path)
  message = str(e.value)
  assert expected in message and "allow_incompatible_workdir=True" in message
  assert "steps 2..4" in message
  assert open(os.path.join(path, "config.json")).read() == before  # Not overwritten.


def test_workdir_without_config_json_is_checked_by_parameter_shapes(trained, tmp_path):
  path = copy_workdir(trained, tmp_path)
  os.remove(os.path.join(path, "config.json"))
  c = ckpt_config(model__num_heads=4)
  with pytest.raises(workdir.IncompatibleWorkdirError,
                     match=r"params/block_0/key/kernel: shape \(32, 2, 16\) in the checkpoint, "
                           r"\(32, 4, 8\) now"):
    workdir.check(c, path, experiment.build(c))
  assert workdir.check(ckpt_config(), path, experiment.build(ckpt_config())) == []


def test_config_json_of_an_earlier_version_still_resumes(trained, tmp_path):
  """Workdirs written before ℓ was renamed (model.length -> model.ell) keep working."""
  path = copy_workdir(trained, tmp_path)
  config_path = os.path.join(path, "config.json")
  saved = json.load(open(config_path))
  saved["model"]["length"] = saved["model"].pop("ell")
  json.dump(saved, open(config_path, "w"))
  assert workdir.check(ckpt_config(), path, experiment.build(ckpt_config())) == []
  with pytest.raises(workdir.IncompatibleWorkdirError, match=r"model.ell: 2 in the workdir, 4"):
    workdir.check(ckpt_config(model__ell=4), path, None)


def test_compatible_changes_and_the_override_are_allowed(trained, tmp_path, capsys):
  path = copy_workdir(trained, tmp_path)
  same_shapes = ckpt_config(optim__lr=1e-4, model__dropout=0.1, train__num_steps=8)
  assert workdir.check(same_shapes, path, experiment.build(same_shapes)) == []
  forced = ckpt_config(model__ell=4, train__allow_incompatible_workdir=True)
  differences = workdir.check(forced, path, experiment.build(forced))
  assert differences == ["model.ell: 2 in the workdir, 4 now (ℓ, sub-tokens per token)"]
  assert "restoring what fits anyway" in capsys.readouterr().out
  assert workdir.check(same_shapes, str(tmp_path / "fresh"), None) == []
