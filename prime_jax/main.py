"""Command line: python -m prime_jax.main --config=configs/NAME.py[:k=v,...] --workdir=DIR --mode=M

Modes: train (resumes when the workdir has checkpoints), eval (the valid bound on a split of a
checkpoint), sample (decoded samples from a checkpoint). Any config value can be overridden with
--config.section.key=value.
"""

from __future__ import annotations

import json
import os

from absl import app, flags, logging
from ml_collections import config_flags

MODES = ("train", "eval", "sample")

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py[:args]).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and outputs.")
_MODE = flags.DEFINE_enum("mode", "train", MODES, "What to do.")


def check_flags(config, workdir: str, mode: str) -> None:
  """Usage errors for what was typed, before jax starts: the workdir and config.distributed."""
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise app.UsageError(f"--workdir={workdir} is a file, not a directory")
  if mode == "train":
    existing = os.path.abspath(workdir)
    while not os.path.exists(existing):
      existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
      raise app.UsageError(f"--workdir={workdir} cannot be created: {existing} is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
      raise app.UsageError(f"--workdir={workdir} is not writable ({existing} does not let this "
                           "user create files); choose another directory")
  elif not os.path.isdir(os.path.join(workdir, "checkpoints")):
    raise app.UsageError(f"--mode={mode} needs a trained workdir, but {workdir} holds no "
                         f"checkpoints/; train first with --mode=train --workdir={workdir}")
  d = config.distributed
  if not d.initialize:
    if d.coordinator_address:
      raise app.UsageError(
          f"config.distributed.coordinator_address={d.coordinator_address!r} is set but "
          "config.distributed.initialize=False: each process would train alone; set "
          "--config.distributed.initialize=True")
    return
  if d.coordinator_address:
    host, _, port = d.coordinator_address.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
      raise app.UsageError(f"config.distributed.coordinator_address={d.coordinator_address!r} "
                           "is invalid: expected HOST:PORT, e.g. 127.0.0.1:12345")
    if not isinstance(d.num_processes, int) or d.num_processes < 1:
      raise app.UsageError(f"config.distributed.num_processes={d.num_processes!r} is invalid: "
                           "expected a positive integer with coordinator_address")
    if not isinstance(d.process_id, int) or not 0 <= d.process_id < d.num_processes:
      raise app.UsageError(f"config.distributed.process_id={d.process_id!r} is invalid: "
                           f"expected an integer in [0, {d.num_processes})")


def _initialize_distributed(config) -> None:
  """Joins the processes of a multi-host job (a TPU pod, or several local processes)."""
  import jax  # pylint: disable=g-import-not-at-top
  d = config.distributed
  if not d.initialize:
    return
  kwargs = {}
  if d.coordinator_address:
    kwargs.update(coordinator_address=d.coordinator_address, num_processes=d.num_processes,
                  process_id=d.process_id)
  jax.distributed.initialize(**kwargs)


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  config = _CONFIG.value
  if config is None:
    raise app.UsageError("--config is required, e.g. --config=configs/shakespeare.py")
  if not _WORKDIR.value:
    raise app.UsageError("--workdir is required, e.g. --workdir=runs/shakespeare")
  check_flags(config, _WORKDIR.value, _MODE.value)
  logging.set_verbosity(logging.WARNING)
  _initialize_distributed(config)
  workdir = _WORKDIR.value
  from prime_jax import trainer  # pylint: disable=g-import-not-at-top
  if _MODE.value == "train":
    result = trainer.train_and_evaluate(config, workdir)
  elif _MODE.value == "eval":
    from prime_jax import runs  # pylint: disable=g-import-not-at-top
    result = runs.evaluate(config, workdir)
  else:
    from prime_jax import runs  # pylint: disable=g-import-not-at-top
    result = runs.sample(config, workdir)
  summary = {"mode": _MODE.value, "workdir": os.path.abspath(workdir), **result}
  print("[result] " + json.dumps(summary, default=str))


if __name__ == "__main__":
  app.run(main)
