"""Data: named datasets served as grain pipelines of integer token arrays.

Public API: `dataset_info(config)`, `make_loader(config, split, ...)`,
`check_compatible(config, vocab_size, example_shape)`, `default_config(name)` and
`KNOWN_DATASETS`. Importing this package is cheap: grain, tensorflow_datasets and the
tokenizer libraries load only when a loader or tokenizer is built.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

from prime_jax.data.registry import (DatasetInfo, KNOWN_DATASETS, check_compatible,
                                     dataset_info, default_config)

if TYPE_CHECKING:
  import grain


def make_loader(config: Any, split: str = "train", *, batch_size: int, seed: int = 0,
                shuffle: bool = True, num_epochs: Optional[int] = None,
                process_index: Optional[int] = None, process_count: Optional[int] = None,
                drop_remainder: bool = True) -> grain.DataLoader:
  """A grain DataLoader of {'tokens': int32 (batch_size, *example_shape)} batches.

  See `prime_jax.data.pipeline.make_loader`; imported lazily because it loads grain.
  """
  from prime_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  return pipeline.make_loader(
      config, split, batch_size=batch_size, seed=seed, shuffle=shuffle,
      num_epochs=num_epochs, process_index=process_index, process_count=process_count,
      drop_remainder=drop_remainder)


__all__ = ["DatasetInfo", "KNOWN_DATASETS", "check_compatible", "dataset_info",
           "default_config", "make_loader"]
