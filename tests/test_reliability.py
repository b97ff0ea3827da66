"""Reliability: kill -9 and SIGTERM mid-run, unreadable checkpoints, the NaN guard, workdir safety.

The kill tests run the real CLI (`python -m prime_jax.main`) as subprocesses on a tiny config and
compare with an uninterrupted run in this process; the subprocesses share a compilation cache so
each restart costs seconds, not a compile.
"""

import glob
import json
import os
import random
import select
import shutil
import signal
import subprocess
import time

import jax
import numpy as np
import pytest

import tiny
from prime_jax import checkpointing, errors, evaluate, experiment, main, sample, train, workdir

KILL_STEPS = 60


@pytest.fixture(scope="module", autouse=True)
def compile_cache(tmp_path_factory):
  """One persistent compilation cache for this module's runs and its subprocesses.

  Runs of one config then compile once (and a restarted subprocess starts in seconds); the
  previous settings come back afterwards.
  """
  from jax._src import compilation_cache as cc  # pylint: disable=g-import-not-at-top
  path = str(tmp_path_factory.mktemp("jax_cache"))
  settings = {"jax_compilation_cache_dir": path,
              "jax_persistent_cache_min_compile_time_secs": 0.0,
              "jax_persistent_cache_min_entry_size_bytes": 0}
  previous = {name: getattr(jax.config, name) for name in settings}
  for name, value in settings.items():
    jax.config.update(name, value)
  cc.reset_cache()
  yield path
  for name, value in previous.items():
    jax.config.update(name, value)
  cc.reset_cache()


def _read_until(proc, predicate, timeout=180.0):
  """Lines of `proc`'s output up to and including the first for which `predicate` holds."""
  lines, deadline = [], time.monotonic() + timeout
  while time.monotonic() < deadline:
    ready, _, _ = select.select([proc.stdout], [], [], 1.0)
    if not ready:
      continue
    line = proc.stdout.readline()
    if not line:
      if proc.poll() is not None:
        break
      continue
    lines.append(line)
    if predicate(line):
      return lines
  raise AssertionError(f"the run ended or stalled before the awaited line:\n{''.join(lines)}")


def _checkpoints(path):
  return sorted(int(d) for d in checkpointing.listdir(os.path.join(path, "checkpoints"))
                if d.isdigit())


def _wait_for_checkpoint_after(path, step, timeout=60.0):
  deadline = time.monotonic() + timeout
  while max(_checkpoints(path), default=0) <= step:
    assert time.monotonic() < deadline, f"no checkpoint after step {step} in {path}"
    time.sleep(0.01)


def _step_of(line):
  """N for a console line '[train] step N/M | ...', else None."""
  if line.startswith("[train] step "):
    return int(line.split()[2].split("/")[0])
  return None


def _restore(path, config):
  run = experiment.build(config)
  manager = checkpointing.make_manager(path, config)
  step, state = checkpointing.restore_latest(manager, experiment.init_state(run, 1))
  manager.close()
  return step, jax.device_get(state)


def _iterator_state(path, step):
  files = sorted(glob.glob(os.path.join(path, "checkpoints", str(step), "data", "*.json")))
  assert files, f"no iterator state at step {step} in {path}"
  return [open(f).read() for f in files]


def test_sigkill_three_times_and_sigterm_then_resume_matches_an_uninterrupted_run(
    tmp_path, compile_cache):
  """Three SIGKILLs at random moments (mid-step or mid-async-save), one SIGTERM, then to the end."""
  overrides = dict(train__num_steps=KILL_STEPS, train__checkpoint_every=2, train__keep_last=3,
                   train__async_checkpoint=True, train__log_every=1)
  reference = str(tmp_path / "reference")
  train.train_and_evaluate(tiny.config(**overrides), reference)

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
      lines = _read_until(proc, lambda l: (_step_of(l) or 0) >= target)
      _wait_for_checkpoint_after(run_dir, start)  # So that every restart has progress to keep.
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
      step, _ = _restore(run_dir, tiny.config(**overrides))
      assert step == stopped_at, (history, output)
    steps = _checkpoints(run_dir)
    start = max(steps, default=0)
    history[-1] += f"; checkpoints then: {steps}"
  print(f"seed {seed}:", *history, sep="\n  ")
  final = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tiny.ROOT,
                         timeout=300)
  assert final.returncode == 0, final.stdout + final.stderr
  assert f"[train] resumed from step {start}" in final.stdout, (seed, history, final.stdout)

  c = tiny.config(**overrides)
  ref_step, ref_state = _restore(reference, c)
  got_step, got_state = _restore(run_dir, c)
  assert ref_step == got_step == KILL_STEPS
  # Exactly equal on CPU: parameters, EMA, optimizer moments, PRNG state and skip count.
  jax.tree.map(np.testing.assert_array_equal, got_state, ref_state)
  # The grain iterator stands at the same record: no example skipped or read twice.
  assert _iterator_state(run_dir, KILL_STEPS) == _iterator_state(reference, KILL_STEPS), (
      seed, history)


# ------------------------------------------------------------------------------------------------
# Unreadable checkpoints, in process.


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A workdir with synchronous checkpoints at steps 2 and 4 of the tiny config."""
  path = str(tmp_path_factory.mktemp("trained") / "run")
  train.train_and_evaluate(_ckpt_config(), path)
  return path


def _ckpt_config(**overrides):
  return tiny.config(**{"train__num_steps": 4, "train__checkpoint_every": 2,
                        "train__keep_last": 3, "train__async_checkpoint": False, **overrides})


def _copy(trained_dir, tmp_path):
  path = str(tmp_path / "run")
  shutil.copytree(trained_dir, path)
  return path


def test_truncated_newest_checkpoint_is_skipped_with_one_line_and_the_previous_restored(
    trained, tmp_path, capsys):
  path = _copy(trained, tmp_path)
  c = _ckpt_config()
  run = experiment.build(c)
  manager = checkpointing.make_manager(path, c)
  _, step2 = checkpointing.restore_latest(manager, experiment.init_state(run, 1), step=2)
  step2 = jax.device_get(step2)
  manager.close()
  for name in glob.glob(os.path.join(path, "checkpoints", "4", "**", "*"), recursive=True):
    if os.path.isfile(name):
      with open(name, "r+b") as f:
        f.truncate(os.path.getsize(name) // 2)

  assert experiment.restore(run, path)[0] == 2  # A reader (eval, sample) falls back too ...
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
  step, state = _restore(path, c)
  assert step == 4 and int(state.step) == 4
  manager = checkpointing.make_manager(path, c)
  _, again = checkpointing.restore_latest(manager, experiment.init_state(run, 1), step=2)
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(again), step2)


def test_forced_save_at_a_step_just_saved_is_a_no_op(tmp_path):
  """SIGTERM right after a regular save: the preemption save must not hit StepAlreadyExists."""
  c = _ckpt_config(train__async_checkpoint=True)
  state = experiment.init_state(experiment.build(c), 0)
  manager = checkpointing.make_manager(str(tmp_path / "run"), c)
  assert checkpointing.save(manager, 2, state)
  assert not checkpointing.save(manager, 2, state, force=True)
  manager.wait_until_finished()
  assert manager.all_steps() == [2]


def test_no_readable_checkpoint_refuses_to_start_from_zero(trained, tmp_path):
  path = _copy(trained, tmp_path)
  for name in glob.glob(os.path.join(path, "checkpoints", "*", "state", "**", "*"),
                        recursive=True):
    if os.path.isfile(name):
      open(name, "w").close()
  with pytest.raises(RuntimeError, match=r"could be restored \(steps tried: \[4, 2\]\); "
                                         r"refusing to start again from step 0"):
    train.train_and_evaluate(_ckpt_config(), path)


# ------------------------------------------------------------------------------------------------
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
  step, state = _restore(path, _nan_config())
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
  step, state = _restore(path, _nan_config())
  assert step == 4 and int(state.skipped) == 3
  for leaf in jax.tree.leaves(state.params):
    assert np.isfinite(leaf).all()


def test_nan_skip_cap_names_the_first_step_beyond_it(tmp_path):
  with pytest.raises(train.NonFiniteError, match=r"non-finite value at step 3: .*"
                                                   r"train.max_skipped_steps=1"):
    train.train_and_evaluate(_nan_config(train__nan_policy="skip", train__max_skipped_steps=1),
                               str(tmp_path / "cap"))


# ------------------------------------------------------------------------------------------------
# Workdir safety.


@pytest.mark.parametrize("overrides,expected", [
    (dict(model__ell=4), "model.ell: 2 in the workdir, 4 now (ℓ, sub-tokens per token)"),
    (dict(model__d_model=64), "model.d_model: 32 in the workdir, 64 now (model shapes)"),
    (dict(data__name="shakespeare_chars"), "data.tokenizer: 'bytes' in the workdir, 'chars' now"),
    (dict(model__scan_layers=True), "model.scan_layers: False in the workdir, True now"),
])
def test_incompatible_workdir_is_refused_naming_what_differs(trained, tmp_path, overrides,
                                                            expected):
  path = _copy(trained, tmp_path)
  before = open(os.path.join(path, "config.json")).read()
  with pytest.raises(workdir.IncompatibleWorkdirError) as e:
    train.train_and_evaluate(_ckpt_config(**overrides), path)
  message = str(e.value)
  assert expected in message and "allow_incompatible_workdir=True" in message
  assert "steps 2..4" in message
  assert open(os.path.join(path, "config.json")).read() == before  # Not overwritten.


def test_workdir_without_config_json_is_checked_by_parameter_shapes(trained, tmp_path):
  path = _copy(trained, tmp_path)
  os.remove(os.path.join(path, "config.json"))
  c = _ckpt_config(model__num_heads=4)
  with pytest.raises(workdir.IncompatibleWorkdirError,
                     match=r"params/block_0/key/kernel: shape \(32, 2, 16\) in the checkpoint, "
                           r"\(32, 4, 8\) now"):
    workdir.check(c, path, experiment.build(c))
  assert workdir.check(_ckpt_config(), path, experiment.build(_ckpt_config())) == []


def test_config_json_of_an_earlier_version_still_resumes(trained, tmp_path):
  """Workdirs written before ℓ was renamed (model.length -> model.ell) keep working."""
  path = _copy(trained, tmp_path)
  config_path = os.path.join(path, "config.json")
  saved = json.load(open(config_path))
  saved["model"]["length"] = saved["model"].pop("ell")
  json.dump(saved, open(config_path, "w"))
  assert workdir.check(_ckpt_config(), path, experiment.build(_ckpt_config())) == []
  with pytest.raises(workdir.IncompatibleWorkdirError, match=r"model.ell: 2 in the workdir, 4"):
    workdir.check(_ckpt_config(model__ell=4), path, None)


def test_compatible_changes_and_the_override_are_allowed(trained, tmp_path, capsys):
  path = _copy(trained, tmp_path)
  same_shapes = _ckpt_config(optim__lr=1e-4, model__dropout=0.1, train__num_steps=8)
  assert workdir.check(same_shapes, path, experiment.build(same_shapes)) == []
  forced = _ckpt_config(model__ell=4, train__allow_incompatible_workdir=True)
  differences = workdir.check(forced, path, experiment.build(forced))
  assert differences == ["model.ell: 2 in the workdir, 4 now (ℓ, sub-tokens per token)"]
  assert "restoring what fits anyway" in capsys.readouterr().out
  assert workdir.check(same_shapes, str(tmp_path / "fresh"), None) == []


# ------------------------------------------------------------------------------------------------
# Bad input: each case has its own message naming what was typed and what would be accepted.


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
    sample.sample(_ckpt_config(sample__checkpoint_step=7), trained)
  with pytest.raises(ValueError, match="the causal baseline scores samples"):
    sample.sample(tiny.config_from_arg("baseline=ar"), trained)


def test_a_handed_off_save_holds_the_state_and_iterator_of_the_moment_it_was_asked_for(tmp_path):
  """The loop goes on at once (donating the state, drawing batches); the checkpoint must not."""
  from prime_jax import data  # pylint: disable=g-import-not-at-top
  c = _ckpt_config(train__async_checkpoint=True)
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
  c = _ckpt_config(train__async_checkpoint=True)
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
