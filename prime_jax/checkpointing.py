"""Checkpoints with orbax: the train state and the grain iterator state, saved asynchronously.

A restore targets abstract arrays that carry the *current* shardings, so a checkpoint written on
one mesh restores onto another. A checkpoint that fails to restore (truncated, corrupted) is
reported in one line and the next older one is tried.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Optional

import jax
import ml_collections
import orbax.checkpoint as ocp


def make_manager(workdir: str, config: ml_collections.ConfigDict) -> ocp.CheckpointManager:
  """Keeps the last `train.keep_last` checkpoints plus every `train.keep_every`-th step."""
  t = config.train
  options = ocp.CheckpointManagerOptions(
      max_to_keep=t.keep_last, keep_period=t.keep_every or None, create=True,
      enable_async_checkpointing=t.async_checkpoint)
  return ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), "checkpoints"),
                               options=options, item_names=("state", "data"))


def save(manager: ocp.CheckpointManager, step: int, state: Any, data_iterator: Any = None,
         force: bool = False) -> bool:
  """Starts saving (asynchronously when configured); returns whether a save was started."""
  import grain  # pylint: disable=g-import-not-at-top
  items = {"state": ocp.args.StandardSave(state)}
  if data_iterator is not None:
    items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
  return manager.save(step, args=ocp.args.Composite(**items), force=force)


def abstract_like(state: Any) -> Any:
  """ShapeDtypeStructs with the shardings of `state`: the restore target."""
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)),
      state)


def restore_latest(manager: ocp.CheckpointManager, target_state: Any,
                   data_iterator: Any = None, step: Optional[int] = None
                   ) -> tuple[Optional[int], Any]:
  """(step, state) of the newest checkpoint that restores, or (None, None) when there is none.

  The data iterator, when given, is restored in place.
  """
  import grain  # pylint: disable=g-import-not-at-top
  steps = sorted(manager.all_steps(), reverse=True)
  if step is not None:
    if step not in steps:
      raise ValueError(f"no checkpoint at step {step}; available steps: {sorted(steps)}")
    steps = [step]
  abstract = abstract_like(target_state)
  for s in steps:
    items = {"state": ocp.args.StandardRestore(abstract)}
    if data_iterator is not None:
      items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
    try:
      restored = manager.restore(s, args=ocp.args.Composite(**items))
    except Exception as e:  # pylint: disable=broad-except
      logging.warning("checkpoint at step %d is unreadable (%s: %s); trying an older one",
                      s, type(e).__name__, str(e).splitlines()[0][:200] if str(e) else "")
      print(f"[checkpoint] step {s} is unreadable ({type(e).__name__}); trying an older one",
            flush=True)
      continue
    return s, restored["state"]
  if steps:
    raise RuntimeError(f"no checkpoint in {manager.directory} could be restored (steps tried: "
                       f"{steps}); refusing to start again from step 0 — move the directory "
                       "away to start afresh")
  return None, None
