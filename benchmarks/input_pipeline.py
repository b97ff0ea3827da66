"""Input-pipeline throughput: batches per second of the default offline pipelines.

  python benchmarks/input_pipeline.py [--batches=200] [--workers=0]

`batches_per_second(config, batch_size)` is importable so a training benchmark can compare
the figures with its step rate (the pipeline should deliver >= 10x the steps per second).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

if __name__ == "__main__":  # run as a script from a checkout: import the package beside it
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from prime_jax import data  # pylint: disable=g-import-not-at-top,wrong-import-position


def batches_per_second(config: Any, batch_size: int, num_batches: int = 200,
                       warmup: int = 5, split: str = "train") -> float:
  """Shuffled, repeating loader for `config`; batches/s after `warmup` batches."""
  loader = data.make_loader(config, split, batch_size=batch_size, seed=0, shuffle=True,
                            num_epochs=None, process_index=0, process_count=1)
  it = iter(loader)
  for _ in range(warmup):
    next(it)
  start = time.perf_counter()
  for _ in range(num_batches):
    next(it)
  return num_batches / (time.perf_counter() - start)


def mock_lm1b_batches_per_second(batch_size: int = 64, seq_len: int = 128,
                                 num_batches: int = 100, workers: int = 0) -> float:
  """LM1B sentences (tfds mock data) tokenised per record with bytes, padded to 128."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  config = data.default_config("lm1b", seq_len=seq_len, tokenizer="bytes",
                               num_workers=workers)
  with tfds.testing.mock_data(num_examples=4096, policy=tfds.testing.MockPolicy.USE_CODE):
    return batches_per_second(config, batch_size, num_batches)


def run(num_batches: int = 200, workers: int = 0) -> dict:
  """The three default figures, in batches per second."""
  return {
      "shakespeare_bytes seq_len=256 batch=32": batches_per_second(
          data.default_config("shakespeare_bytes", seq_len=256, num_workers=workers), 32,
          num_batches),
      "fashion_mnist_local batch=64": batches_per_second(
          data.default_config("fashion_mnist_local", num_workers=workers), 64, num_batches),
      "lm1b (mock, bytes) seq_len=128 batch=64": mock_lm1b_batches_per_second(
          64, 128, max(num_batches // 2, 10), workers),
  }


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--batches", type=int, default=200)
  parser.add_argument("--workers", type=int, default=0)
  args = parser.parse_args()
  for name, rate in run(args.batches, args.workers).items():
    print(f"{name:45s} {rate:10.1f} batches/s")


if __name__ == "__main__":
  main()
