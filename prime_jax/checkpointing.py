"""Checkpoints with orbax: the train state and the grain iterator state, saved asynchronously.

A restore targets abstract arrays that carry the *current* shardings, so a checkpoint written on
one mesh restores onto another. A checkpoint that fails to restore (truncated, corrupted) is
reported in one line and the next older one is tried; when training restores an older one, the
unreadable newer ones are moved to `<workdir>/unreadable_checkpoints/` so that it can save those
steps again instead of failing on a step that already exists.

With asynchronous saving in a single process, `Manager.save` only snapshots the state (one jitted
on-device copy, for a moment one extra state in device memory) and the iterator state, and hands
the orbax save to a worker thread: orbax's own synchronous part (per-array bookkeeping, the copy
to host, starting its writer threads) then no longer blocks the training loop. Several processes
call orbax directly, in the main thread, since orbax's barriers there are device collectives.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import os
import time
from typing import Any, Optional, Sequence

import grain
import jax
import jax.numpy as jnp
import ml_collections
import optax
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental import multihost_utils

# TrainState fields a checkpoint may leave out (the converter writes neither); restore makes them.
OPTIONAL_FIELDS = ("ema_params", "opt_state")


class Manager:
  """An orbax CheckpointManager whose asynchronous saves are handed to one worker thread.

  Every other call first waits for the hand-off in flight, so orbax sees one caller at a time,
  in order; an error raised by a handed-off save is raised there.
  """

  def __init__(self, manager: ocp.CheckpointManager, hand_off: bool):
    self.orbax = manager
    self._worker = (concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="prime_jax_save")
                    if hand_off else None)
    self._in_flight: Optional[concurrent.futures.Future] = None

  @property
  def hands_off(self) -> bool:
    return self._worker is not None

  @property
  def directory(self) -> epath.Path:
    return self.orbax.directory

  def _drain(self) -> None:
    future, self._in_flight = self._in_flight, None
    if future is not None:
      future.result()

  def latest_step(self) -> Optional[int]:
    self._drain()
    return self.orbax.latest_step()

  def all_steps(self) -> list[int]:
    self._drain()
    return list(self.orbax.all_steps())

  def restore(self, step: int, args: Any) -> Any:
    self._drain()
    return self.orbax.restore(step, args=args)

  def reload(self) -> None:
    self._drain()
    self.orbax.reload()

  def wait_until_finished(self) -> None:
    """Returns once every save started so far is complete on disk."""
    self._drain()
    self.orbax.wait_until_finished()

  def close(self) -> None:
    try:
      self.wait_until_finished()
    finally:
      if self._worker is not None:
        self._worker.shutdown(wait=True)
      self.orbax.close()

  def save(self, step: int, items: dict[str, Any], force: bool) -> bool:
    """Saves `items` (orbax args); handed off, it returns before orbax has seen them."""
    if self._worker is None:
      return self.orbax.save(step, args=ocp.args.Composite(**items), force=force)
    self._drain()
    self._in_flight = self._worker.submit(
        lambda: self.orbax.save(step, args=ocp.args.Composite(**items), force=force))
    return True


class _IteratorSnapshot:
  """A grain DataLoader iterator's state, frozen when the save was asked for."""

  def __init__(self, state: bytes):
    self._state = state

  def get_state(self) -> bytes:
    return self._state


@jax.jit
def _snapshot(state: Any) -> Any:
  """A copy of every array, so that a later donating step cannot free what is being saved."""
  return jax.tree.map(jnp.copy, state)


def make_manager(workdir: str, config: ml_collections.ConfigDict) -> Manager:
  """Keeps the last `train.keep_last` checkpoints plus every `train.keep_every`-th step."""
  train_cfg = config.train
  options = ocp.CheckpointManagerOptions(
      max_to_keep=train_cfg.keep_last, keep_period=train_cfg.keep_every or None, create=True,
      enable_async_checkpointing=train_cfg.async_checkpoint)
  manager = ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), "checkpoints"),
                                  options=options, item_names=("state", "data"))
  return Manager(manager, hand_off=bool(train_cfg.async_checkpoint) and jax.process_count() == 1)


def save(manager: Manager, step: int, state: Any, data_iterator: Any = None,
         force: bool = False) -> bool:
  """Starts saving (asynchronously when configured); returns whether a save was started.

  A step that is already saved (a regular save just before a forced preemption save) is left as is.
  """
  if manager.latest_step() == step:
    return False
  if manager.hands_off:
    state = _snapshot(state)
    if data_iterator is not None:
      data_iterator = _IteratorSnapshot(data_iterator.get_state())
  items = {"state": ocp.args.StandardSave(state)}
  if data_iterator is not None:
    items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
  return manager.save(step, items, force)


def abstract_like(state: Any) -> Any:
  """ShapeDtypeStructs with the shardings of `state`: the restore target."""
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)),
      state)


def make_reader(workdir: str) -> Manager:
  """A read-only manager for `restore_weights`: it reads parts of a saved state, never writes."""
  manager = ocp.CheckpointManager(
      os.path.join(os.path.abspath(workdir), "checkpoints"),
      options=ocp.CheckpointManagerOptions(read_only=True),
      item_handlers={"state": ocp.PyTreeCheckpointHandler()})
  return Manager(manager, hand_off=False)


def restore_latest(manager: Manager, target_state: Any,
                   data_iterator: Any = None, step: Optional[int] = None,
                   set_aside_unreadable: bool = False,
                   tx: Optional[optax.GradientTransformation] = None
                   ) -> tuple[Optional[int], Any]:
  """(step, state) of the newest checkpoint that restores, or (None, None) when there is none.

  The data iterator, when given, is restored in place. With `set_aside_unreadable` (training,
  which will save those steps again) unreadable newer steps are moved out of the way; readers
  such as eval leave the workdir untouched. A checkpoint without EMA or optimizer state (a
  converted one) gets EMA = its params and `tx.init(params)`; one without an iterator state
  leaves the iterator at its start.
  """
  abstract = abstract_like(target_state)
  found, read = _newest_readable(
      manager, step, lambda s: _restore_step(manager, s, abstract, data_iterator),
      set_aside_unreadable)
  if found is None:
    return None, None
  absent, state = read
  return found, _complete(state, absent, abstract, tx, found)


def restore_weights(reader: Manager, target_params: Any, ema: bool,
                    step: Optional[int] = None) -> tuple[Optional[int], Any]:
  """(step, params or their EMA) of the newest checkpoint that restores: what eval and sampling
  need, read alone (no optimizer state is read or made). `reader` comes from `make_reader`.

  A checkpoint without EMA (a converted one, whose EMA is its params) gives its params.
  """
  abstract = abstract_like(target_params)

  def read(s):
    saved = saved_tree(epath.Path(str(reader.directory)) / str(s) / "state")
    field = "ema_params" if ema and saved.get("ema_params") is not None else "params"
    item = {field: abstract}
    args = ocp.args.PyTreeRestore(
        item=item, restore_args=ocp.checkpoint_utils.construct_restore_args(item),
        partial_restore=True)
    return reader.restore(s, ocp.args.Composite(state=args))["state"][field]
  return _newest_readable(reader, step, read, set_aside_unreadable=False)


def _newest_readable(manager: Manager, step: Optional[int], read: Any,
                     set_aside_unreadable: bool) -> tuple[Optional[int], Any]:
  """(s, read(s)) for the newest step s (or `step`) that `read` restores; each unreadable one
  is reported in one line, and set aside when asked."""
  steps = sorted(manager.all_steps(), reverse=True)
  if step is not None:
    if step not in steps:
      raise ValueError(f"no checkpoint at step {step}; available steps: {sorted(steps)}")
    steps = [step]
  unreadable = []
  for s in steps:
    try:
      restored = read(s)
    except Exception as e:  # pylint: disable=broad-except
      logging.warning("checkpoint at step %d is unreadable (%s: %s); trying an older one",
                      s, type(e).__name__, str(e).splitlines()[0][:200] if str(e) else "")
      print(f"[checkpoint] step {s} is unreadable ({type(e).__name__}); trying an older one",
            flush=True)
      unreadable.append(s)
      continue
    if unreadable and set_aside_unreadable:
      _set_aside(manager, unreadable)
    return s, restored
  if steps:
    raise RuntimeError(f"no checkpoint in {manager.directory} could be restored (steps tried: "
                       f"{steps}); refusing to start again from step 0 — move the directory "
                       "away to start afresh")
  return None, None


def _restore_step(manager: Manager, s: int, abstract: Any, data_iterator: Any
                  ) -> tuple[list[str], Any]:
  """(the optional fields step `s` lacks, its state without them); restores the iterator."""
  step_dir = epath.Path(str(manager.directory)) / str(s)
  saved = saved_tree(step_dir / "state")
  absent = [f for f in OPTIONAL_FIELDS if isinstance(saved, dict) and saved.get(f) is None]
  items = {"state": ocp.args.StandardRestore(
      dataclasses.replace(abstract, **{f: None for f in absent}) if absent else abstract)}
  if data_iterator is not None:
    if (step_dir / "data").exists():
      items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
    else:
      print(f"[checkpoint] step {s} holds no data-iterator state; the data start from the "
            "beginning", flush=True)
  return absent, manager.restore(s, ocp.args.Composite(**items))["state"]


def _complete(state: Any, absent: list[str], abstract: Any,
              tx: Optional[optax.GradientTransformation], s: int) -> Any:
  """`state` with the fields the checkpoint left out made afresh, on the target's shardings."""
  made = {}
  if "ema_params" in absent:
    made["ema_params"] = jax.jit(lambda p: jax.tree.map(jnp.copy, p),
                                 out_shardings=_shardings(abstract.ema_params))(state.params)
  if "opt_state" in absent:
    if tx is None:
      raise ValueError(f"the checkpoint at step {s} holds no optimizer state (a converted "
                       "checkpoint); restoring it needs the optimizer (tx) to make a fresh one")
    made["opt_state"] = jax.jit(tx.init, out_shardings=_shardings(abstract.opt_state))(
        state.params)
    print(f"[checkpoint] step {s} holds no optimizer state; starting a fresh one", flush=True)
  return dataclasses.replace(state, **made) if made else state


def _shardings(abstract: Any) -> Any:
  return jax.tree.map(lambda x: x.sharding, abstract)


def _set_aside(manager: Manager, steps: list[int]) -> None:
  """Moves unreadable step directories out of the manager's way (kept for inspection)."""
  root = os.path.dirname(os.path.abspath(str(manager.directory)))
  if jax.process_index() == 0:
    target = os.path.join(root, "unreadable_checkpoints")
    os.makedirs(target, exist_ok=True)
    for s in steps:
      destination = os.path.join(target, f"{s}-{int(time.time())}")
      os.rename(os.path.join(str(manager.directory), str(s)), destination)
      print(f"[checkpoint] moved unreadable step {s} to {destination}", flush=True)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices("prime_jax_set_aside_unreadable_checkpoints")
  manager.reload()


def saved_param_shapes(checkpoint_dir: str) -> Optional[dict[str, tuple[int, ...]]]:
  """{'a/b/kernel': shape} of the parameters in the newest step's metadata; None if unreadable."""
  steps = sorted((int(d) for d in listdir(checkpoint_dir) if d.isdigit()), reverse=True)
  for s in steps:
    try:
      tree = saved_tree(epath.Path(os.path.join(checkpoint_dir, str(s), "state")))
    except Exception:  # pylint: disable=broad-except  (a corrupted step: restore reports it)
      continue
    if not isinstance(tree, dict) or "params" not in tree:
      continue
    leaves = jax.tree_util.tree_flatten_with_path(tree["params"])[0]
    return {path_name(p): tuple(getattr(leaf, "shape", ())) for p, leaf in leaves}
  return None


def saved_tree(state_dir: epath.Path) -> Any:
  """The metadata tree of a saved state (array metadata at the leaves, None for fields left
  out); raises when the step is unreadable."""
  meta = ocp.StandardCheckpointHandler().metadata(state_dir)
  return getattr(meta, "tree", meta)


def path_name(path: Sequence[Any]) -> str:
  """'block_0/mlp_in/kernel' for a tree path of dict keys or attributes."""
  return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def listdir(directory: str) -> list[str]:
  """The entries of `directory`, or none when it does not exist."""
  return os.listdir(directory) if os.path.isdir(directory) else []
