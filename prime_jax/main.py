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
