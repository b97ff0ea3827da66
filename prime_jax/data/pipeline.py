"""grain DataLoader over a named dataset: shuffle, repeat, per-process shard, batch.

The loader's iterator is grain's checkpointable iterator: `get_state()` returns bytes and
`set_state(state)` resumes exactly at the next batch (orbax saves it through
`grain.checkpoint.CheckpointSave` / `CheckpointRestore`).
"""

from __future__ import annotations

from typing import Any, Optional

import grain
import jax
from absl import flags

from prime_jax import errors
from prime_jax.data import sources


def _process(process_index: Optional[int], process_count: Optional[int]) -> tuple[int, int]:
  if process_index is None or process_count is None:
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
  if not 0 <= process_index < process_count:
    raise errors.UserError(f"process_index={process_index} is not in [0, {process_count})")
  return process_index, process_count


def _ensure_flags_parsed() -> None:
  """grain's worker processes read absl flags; outside an absl app use their defaults."""
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


def make_loader(config: Any, split: str = "train", *, batch_size: int,
                seed: int = 0, shuffle: bool = True, num_epochs: Optional[int] = None,
                process_index: Optional[int] = None, process_count: Optional[int] = None,
                drop_remainder: bool = True) -> grain.DataLoader:
  """A grain DataLoader yielding {'tokens': int32 (batch_size, *example_shape)}.

  Each process reads only its contiguous 1/process_count slice of the records (grain's
  ShardByJaxProcess layout); `num_epochs=None` repeats forever, shuffling with a fresh
  permutation per epoch derived from `seed`.
  """
  if batch_size < 1:
    raise errors.UserError(f"batch_size must be >= 1, got {batch_size}")
  source, record_ops, batch_ops = sources.build(config, split)
  index, count = _process(process_index, process_count)
  shard = grain.sharding.ShardOptions(shard_index=index, shard_count=count,
                                      drop_remainder=True)
  per_process = len(source) // count
  if drop_remainder and per_process < batch_size:
    raise errors.UserError(
        f"split {split!r} of {config.name!r} has {len(source)} examples, {per_process} per "
        f"process: fewer than batch_size={batch_size}")
  sampler = grain.samplers.IndexSampler(
      num_records=len(source), shard_options=shard, shuffle=shuffle,
      num_epochs=num_epochs, seed=seed)
  num_workers = int(config.get("num_workers", 0) or 0)
  if num_workers > 0:
    _ensure_flags_parsed()
  # Reader threads only pay off for file-backed sources; in memory they cost ~4x.
  threads = config.get("read_threads", None)
  if threads is None:
    threads = 0 if isinstance(source, sources.ArrayRows) else grain.ReadOptions().num_threads
  batch = grain.transforms.Batch(batch_size, drop_remainder=drop_remainder)
  return grain.DataLoader(
      data_source=source, sampler=sampler,
      operations=list(record_ops) + [batch] + list(batch_ops),
      worker_count=num_workers, read_options=grain.ReadOptions(num_threads=int(threads)))
