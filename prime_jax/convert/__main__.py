"""python3 -m prime_jax.convert official --checkpoint=FILE --workdir=DIR [--weights=ema|raw]

--config (optional, as prime_jax.main takes it, with --config.a.b=v overrides) is checked
against the file: its ℓ and vocabulary must match. Without it, configs/official_owt.py (text) or
configs/official_cifar10.py (images) for the file's ℓ is used.
"""

from __future__ import annotations

import json
import os
from typing import Sequence

from absl import app, flags, logging
from ml_collections import config_flags

SOURCES = ("official",)

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file to check against and "
                                          "save (default: configs/official_*.py).")
_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "The authors' .ckpt (text) or .pth (image).")
_WORKDIR = flags.DEFINE_string("workdir", None, "New directory for the converted checkpoint.")
_WEIGHTS = flags.DEFINE_enum("weights", "ema", ["ema", "raw"], "EMA or raw weights.")


def main(argv: Sequence[str]) -> None:
  if len(argv) != 2 or argv[1] not in SOURCES:
    raise app.UsageError(f"usage: python3 -m prime_jax.convert {{{'|'.join(SOURCES)}}} "
                         "--checkpoint=FILE --workdir=DIR [--weights=ema|raw] [--config=...]")
  if not _CHECKPOINT.value or not _WORKDIR.value:
    raise app.UsageError("--checkpoint and --workdir are required")
  if not os.path.isfile(_CHECKPOINT.value):
    raise app.UsageError(f"--checkpoint={_CHECKPOINT.value} does not exist")
  logging.set_verbosity(logging.WARNING)
  from prime_jax.convert import official  # pylint: disable=g-import-not-at-top
  summary = official.convert(_CHECKPOINT.value, _WORKDIR.value, _WEIGHTS.value, _CONFIG.value)
  workdir = _WORKDIR.value
  print(f"[convert] next: python3 -m prime_jax.main --config={workdir}/config.py "
        f"--workdir={workdir} --mode=eval (or --mode=sample)", flush=True)
  print("[result] " + json.dumps(summary, default=str))


if __name__ == "__main__":
  app.run(main)
