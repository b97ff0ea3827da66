"""Bad input: each case has its own message naming what was typed and what would be accepted."""

import os
import subprocess
import sys

import pytest

import tiny
from run_helpers import ckpt_config, compile_cache  # compile_cache: autouse fixture
from prime_jax import errors, evaluate, experiment, main, sample, train


def _usage_error(config, path, mode="train"):
  with pytest.raises(errors.UserError) as e:
    main.check_flags(config, path, mode)
  return str(e.value)


def test_cli_workdir_errors(tmp_path):
  a_file = tmp_path / "notes.txt"
  a_file.write_text("x")
  c = tiny.config()
  assert f"--workdir={a_file} is a file, not a directory" in _usage_error(c, str(a_file))
  assert f"cannot be created: {a_file} is a file" in _usage_error(c, str(a_file / "run"))
  for mode in ("eval", "sample"):
    message = _usage_error(c, str(tmp_path / "empty"), mode)
    assert f"--mode={mode} needs a trained workdir" in message and "--mode=train" in message


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_cli_unwritable_workdir(tmp_path):
  locked = tmp_path / "locked"
  locked.mkdir(mode=0o500)
  assert "is not writable" in _usage_error(tiny.config(), str(locked / "run"))


@pytest.mark.parametrize("fields,match", [
    (dict(coordinator_address="127.0.0.1:1234"),
     "coordinator_address='127.0.0.1:1234' is set but config.distributed.initialize=False"),
    (dict(initialize=True, coordinator_address="127.0.0.1", num_processes=2, process_id=0),
     "coordinator_address='127.0.0.1' is invalid: expected HOST:PORT"),
    (dict(initialize=True, coordinator_address="127.0.0.1:70000", num_processes=2, process_id=0),
     "coordinator_address='127.0.0.1:70000' is invalid"),
    (dict(initialize=True, coordinator_address="127.0.0.1:1234", num_processes=0, process_id=0),
     "num_processes=0 is invalid: expected a positive integer"),
    (dict(initialize=True, coordinator_address="127.0.0.1:1234", num_processes=2, process_id=2),
     r"process_id=2 is invalid: expected an integer in [0, 2)"),
])
def test_cli_distributed_field_errors(tmp_path, fields, match):
  c = tiny.config()
  c.distributed.update(fields)
  assert match in _usage_error(c, str(tmp_path / "run"))


@pytest.mark.parametrize("args,match", [
    (["--mode=bogus"], "--mode=bogus: value should be one of <train|eval|sample>"),
    (["--workdir="], "--workdir is required"),
    (["extra"], "unexpected arguments: ['extra']"),
])
def test_cli_flag_errors(tmp_path, args, match):
  command = tiny.command(str(tmp_path / "run"))
  command = [a for a in command if not any(a.startswith(x.split("=")[0] + "=") for x in args)]
  result = subprocess.run(command + args, capture_output=True, text=True, env=tiny.env(1),
                          cwd=tiny.ROOT, timeout=120)
  assert result.returncode != 0
  assert match in result.stderr + result.stdout, result.stderr


def _one_line_error(config_arg, *flags, workdir, **env):
  """(exit status, the output's lines) of the real command line with a mistake in it."""
  command = [sys.executable, "-m", "prime_jax.main", f"--config={config_arg}",
             f"--workdir={workdir}", *flags]
  result = subprocess.run(command, capture_output=True, text=True, env={**tiny.env(1), **env},
                          cwd=tiny.ROOT, timeout=120)
  lines = [line for line in (result.stdout + result.stderr).splitlines()
           if not line.startswith(("W", "I")) or line.startswith("error:")]  # absl log lines
  return result.returncode, lines


@pytest.mark.parametrize("arg,flags,expected", [
    ("configs/shakespeare.py:elll=2", (), "error: unknown config argument 'elll'; known: "
     "['baseline', 'carry_over', 'ell', 'objective', 'steps']"),
    ("configs/shakespeare.py:ell=0", (), "error: config.model.ell=0 is invalid: expected an "
     "integer ℓ >= 1 (config argument ell)"),
    ("configs/shakespeare.py", ("--mode=bogus",), "error: flag --mode=bogus: value should be "
     "one of <train|eval|sample> (python -m prime_jax.main --helpshort lists the flags)"),
])
def test_user_errors_are_one_line_and_status_2(tmp_path, arg, flags, expected):
  status, lines = _one_line_error(arg, *flags, workdir=tmp_path / "run")
  assert status == 2 and lines == [expected]
  assert not (tmp_path / "run").exists()  # Nothing was written.


def test_a_dataset_that_is_not_built_names_the_command_that_builds_it(tmp_path):
  pytest.importorskip("tensorflow_datasets")
  status, lines = _one_line_error("configs/cifar10.py", workdir=tmp_path / "run",
                                  TFDS_DATA_DIR=str(tmp_path / "tfds"))
  assert status == 2 and len(lines) == 1, lines
  assert lines[0].startswith("error: tfds dataset 'cifar10' (split 'train') is not prepared")
  assert "tfds build cifar10 --file_format=array_record" in lines[0]


def test_debug_adds_the_traceback(tmp_path):
  status, lines = _one_line_error("configs/shakespeare.py:ell=0", "--debug",
                                  workdir=tmp_path / "run")
  assert status == 2 and lines[0] == "Traceback (most recent call last):"
  assert lines[-1].startswith("error: config.model.ell=0 is invalid")


def test_a_bug_keeps_its_traceback():
  assert main.user_error_in(ZeroDivisionError("a bug")) is None
  inner = errors.UserError("config.x is invalid")
  try:
    try:
      raise inner
    except errors.UserError as e:
      raise ValueError("Error whilst parsing config file: ...") from e
  except ValueError as wrapped:
    assert main.user_error_in(wrapped) is inner


@pytest.mark.parametrize("overrides,match", [
    (dict(model__ell=0), r"model.ell=0 is invalid: expected an integer ℓ >= 1"),
    (dict(model__dropout=1.0), r"model.dropout=1.0 is invalid: expected a number in \[0, 1\)"),
    (dict(diffusion__t_min=0.0), r"diffusion.t_min=0.0 is invalid: expected a number in \(0, 1\)"),
    (dict(optim__ema_decay=1.0), r"optim.ema_decay=1.0 is invalid"),
    (dict(optim__lr_schedule="step"), r"optim.lr_schedule='step' is invalid: expected one of"),
    (dict(train__num_steps=0), r"train.num_steps=0 is invalid: expected a positive integer"),
    (dict(model__type="resnet"), r"model.type='resnet' is invalid: expected one of"),
    (dict(diffusion__objective="autoregressive"), r"model.causal=True, model.ell=1"),
    (dict(sample__batch_size=4), r"sample.batch_size=4 is invalid.*data×fsdp = 8"),
    (dict(mesh__tensor=0), r"mesh.tensor=0 is invalid: expected a positive integer or -1"),
    (dict(mesh__data=3, mesh__fsdp=-1), r"does not divide the 8 available devices"),
    (dict(model__remat_policy="all"),
     r"model.remat_policy='all' is invalid: expected one of \('full', 'dots'\)"),
    (dict(model__attention_impl="flash"),
     r"model.attention_impl='flash' is invalid: expected one of \('auto', 'xla', 'cudnn'\)"),
    (dict(model__fused_head_chunk=-1), r"model.fused_head_chunk=-1 is invalid: expected 0"),
    (dict(model__type="unet", model__fused_head_chunk=64),
     r"model.fused_head_chunk=64 is invalid: .*for model.type='transformer'"),
])
def test_config_value_errors(overrides, match):
  with pytest.raises(ValueError, match=match):
    experiment.build(tiny.config(**overrides))


def test_config_argument_that_is_not_key_value():
  with pytest.raises(ValueError, match=r"config argument 'ell' is not key=value; keys: \["):
    tiny.config_from_arg("ell")


def test_sampling_prefix_outside_the_character_set():
  run = experiment.build(tiny.config(data__name="shakespeare_chars", sample__prefix="ROMEO: €"))
  with pytest.raises(ValueError, match=r"characters outside the character set: \['€'\]"):
    sample.prefix(run, 8)  # pylint: disable=protected-access


def test_eval_split_and_eval_dataset_errors(trained):
  with pytest.raises(ValueError, match=r"config.eval.split='test' is not a split of "
                                       r"'shakespeare_bytes'; available: "
                                       r"\['train', 'validation'\]"):
    evaluate.evaluate(tiny.config(eval__split="test"), trained)
  with pytest.raises(ValueError, match=r"example_shape mismatch: the model expects .* \(32,\) "
                                       r"but dataset 'fashion_mnist_local' gives \(28, 28, 1\)"):
    evaluate.evaluate(tiny.config(eval__data_name="fashion_mnist_local"), trained)


def test_eval_and_sample_without_the_checkpoint_asked_for(trained, tmp_path):
  with pytest.raises(FileNotFoundError, match=r"no checkpoint in .*: train first with"):
    evaluate.evaluate(tiny.config(), str(tmp_path / "untrained"))
  with pytest.raises(ValueError, match=r"no checkpoint at step 7; available steps: \[2, 4\]"):
    sample.sample(ckpt_config(sample__checkpoint_step=7), trained)
  with pytest.raises(ValueError, match="the causal baseline scores samples"):
    sample.sample(tiny.config_from_arg("baseline=ar"), trained)
