"""Command line: python -m prime_jax.main --config=configs/NAME.py[:k=v,...] --workdir=DIR --mode=M

Modes: train (resumes when the workdir has checkpoints), eval (the valid bound on a split of a
checkpoint), sample (decoded samples from a checkpoint). Any config value can be overridden with
--config.section.key=value. A mistake in the flags, config, data or workdir prints one line,
`error: ...`, and exits with status 2 (--debug adds the traceback).
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from typing import Any, Callable, Optional, Sequence

import jax
import ml_collections
from absl import app, flags, logging
from ml_collections import config_flags

from prime_jax import errors, evaluate, sample, train

MODES = ("train", "eval", "sample")
USAGE_EXIT = 2

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py[:args]).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and outputs.")
_MODE = flags.DEFINE_enum("mode", "train", MODES, "What to do.")
_DEBUG = flags.DEFINE_bool("debug", False, "Print the traceback of errors in the flags, config, "
                           "data or workdir too (they are one line without it).")

_RUNNERS: dict[str, Callable[[Any, str], dict[str, Any]]] = {
    "train": train.train_and_evaluate, "eval": evaluate.evaluate, "sample": sample.sample}


def _check_workdir(workdir: str, mode: str) -> None:
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise errors.UserError(f"--workdir={workdir} is a file, not a directory")
  if mode == "train":
    existing = os.path.abspath(workdir)
    while not os.path.exists(existing):
      existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
      raise errors.UserError(f"--workdir={workdir} cannot be created: {existing} is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
      raise errors.UserError(f"--workdir={workdir} is not writable ({existing} does not let "
                             "this user create files); choose another directory")
  elif not os.path.isdir(os.path.join(workdir, "checkpoints")):
    raise errors.MissingInput(f"--mode={mode} needs a trained workdir, but {workdir} holds no "
                              f"checkpoints/; train first with --mode=train --workdir={workdir}")


def _check_distributed(d: ml_collections.ConfigDict) -> None:
  if not d.initialize:
    if d.coordinator_address:
      raise errors.UserError(
          f"config.distributed.coordinator_address={d.coordinator_address!r} is set but "
          "config.distributed.initialize=False: each process would train alone; set "
          "--config.distributed.initialize=True")
    return
  if d.coordinator_address:
    host, _, port = d.coordinator_address.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
      raise errors.UserError(f"config.distributed.coordinator_address={d.coordinator_address!r} "
                             "is invalid: expected HOST:PORT, e.g. 127.0.0.1:12345")
    if not isinstance(d.num_processes, int) or d.num_processes < 1:
      raise errors.UserError(f"config.distributed.num_processes={d.num_processes!r} is "
                             "invalid: expected a positive integer with coordinator_address")
    if not isinstance(d.process_id, int) or not 0 <= d.process_id < d.num_processes:
      raise errors.UserError(f"config.distributed.process_id={d.process_id!r} is invalid: "
                             f"expected an integer in [0, {d.num_processes})")


def check_flags(config: ml_collections.ConfigDict, workdir: str, mode: str) -> None:
  """Errors in what was typed, before jax starts: the workdir and config.distributed."""
  _check_workdir(workdir, mode)
  _check_distributed(config.distributed)


def _initialize_distributed(config: ml_collections.ConfigDict) -> None:
  """Joins the processes of a multi-host job (a TPU pod, or several local processes)."""
  d = config.distributed
  if not d.initialize:
    return
  kwargs = {}
  if d.coordinator_address:
    kwargs.update(coordinator_address=d.coordinator_address, num_processes=d.num_processes,
                  process_id=d.process_id)
  jax.distributed.initialize(**kwargs)


def user_error_in(error: BaseException) -> Optional[errors.UserError]:
  """The innermost UserError behind `error` (absl and ml_collections wrap what config files
  raise), or None when the chain holds none."""
  found = None
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    if isinstance(error, errors.UserError):
      found = error
    error = error.__cause__ or error.__context__
  return found


def _fail(message: str, error: BaseException, debug: bool):
  if debug:
    traceback.print_exception(error)
  print(f"error: {message}", file=sys.stderr, flush=True)
  sys.exit(USAGE_EXIT)


def parse_flags(argv: Sequence[str]) -> list[str]:
  """absl's flag parsing, with errors (in a config file's arguments too) as one line."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    inner = user_error_in(e)
    message = str(inner) if inner is not None else str(e)
    _fail(message + ("" if inner is not None else
                     " (python -m prime_jax.main --helpshort lists the flags)"), e,
          "--debug" in argv)


def run(argv: Sequence[str]) -> dict[str, Any]:
  """Checks the flags, then runs the mode; returns its result."""
  if len(argv) > 1:
    raise errors.UserError(f"unexpected arguments: {list(argv[1:])}")
  config = _CONFIG.value
  if config is None:
    raise errors.UserError("--config is required, e.g. --config=configs/shakespeare.py")
  if not _WORKDIR.value:
    raise errors.UserError("--workdir is required, e.g. --workdir=runs/shakespeare")
  check_flags(config, _WORKDIR.value, _MODE.value)
  logging.set_verbosity(logging.WARNING)
  _initialize_distributed(config)
  result = _RUNNERS[_MODE.value](config, _WORKDIR.value)
  return {"mode": _MODE.value, "workdir": os.path.abspath(_WORKDIR.value), **result}


def main(argv: Sequence[str]) -> None:
  try:
    summary = run(argv)
  except errors.UserError as e:
    _fail(str(e), e, _DEBUG.value)
  print("[result] " + json.dumps(summary, default=str))


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
