"""Helpers of the reliability tests: a shared compilation cache, reading a live run's output,
and restoring what a workdir holds."""

from __future__ import annotations

import glob
import os
import select
import shutil
import time

import jax
import pytest
from jax._src import compilation_cache as cc

import tiny
from prime_jax import checkpointing, experiment


@pytest.fixture(scope="module", autouse=True)
def compile_cache(tmp_path_factory):
  """One persistent compilation cache for the runs of the modules that import this fixture and
  for their subprocesses.

  Runs of one config then compile once (and a restarted subprocess starts in seconds); the
  previous settings come back afterwards.
  """
  path = str(tmp_path_factory.getbasetemp() / "jax_cache")
  os.makedirs(path, exist_ok=True)
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


@pytest.fixture(scope="module")
def cached_trained(compile_cache, request):
  """conftest's `trained` workdir, made while this module's compilation cache is on when no
  module made it before: the runs here then load its compiled init and train step.

  (A session fixture is set up before any module fixture, so `trained` asked for directly
  would always compile without the cache.)
  """
  del compile_cache
  return request.getfixturevalue("trained")


def read_until(proc, predicate, timeout=180.0):
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


def checkpoints(path):
  return sorted(int(d) for d in checkpointing.listdir(os.path.join(path, "checkpoints"))
                if d.isdigit())


def wait_for_checkpoint_after(path, step, timeout=60.0):
  deadline = time.monotonic() + timeout
  while max(checkpoints(path), default=0) <= step:
    assert time.monotonic() < deadline, f"no checkpoint after step {step} in {path}"
    time.sleep(0.01)


def step_of(line):
  """N for a console line '[train] step N/M | ...', else None."""
  if line.startswith("[train] step "):
    return int(line.split()[2].split("/")[0])
  return None


def restore(path, config):
  """(step, state on the host) of the newest checkpoint; reads onto the abstract state, which
  needs no compiled init."""
  run = experiment.build(config)
  manager = checkpointing.make_manager(path, config)
  step, state = checkpointing.restore_latest(manager, experiment.abstract_state(run))
  manager.close()
  return step, jax.device_get(state)


def iterator_state(path, step):
  files = sorted(glob.glob(os.path.join(path, "checkpoints", str(step), "data", "*.json")))
  assert files, f"no iterator state at step {step} in {path}"
  return [open(f).read() for f in files]



def ckpt_config(**overrides):
  """The tiny config of the `trained` workdir, with `overrides`."""
  return tiny.config(**{**tiny.CHECKPOINTED, **overrides})


def copy_workdir(trained_dir, tmp_path):
  path = str(tmp_path / "run")
  shutil.copytree(trained_dir, path)
  return path
