"""Input-pipeline throughput against the training step's consumption rate.

  python3 -m benchmarks.input_pipeline [--batches=200] [--workers=0]

Prints batches/s of the embedded text and image defaults and of a mock LM1B pipeline, then the
train steps/s of configs/shakespeare.py and configs/fashion_mnist.py on this machine with their
own batch sizes, and the ratio (target: the pipeline delivers >= 10x what the step consumes).
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from prime_jax import config as config_lib, data, experiment


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


def train_steps_per_second(config_path: str, steps: int = 10) -> float:
  """Steps/s of the jitted train step of a config file, on one fixed batch (compile excluded)."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from prime_jax import sharding  # pylint: disable=g-import-not-at-top
  config = config_lib.load(config_path)
  run = experiment.build(config)
  step = experiment.make_train_step(run)
  state = experiment.init_state(run, 0)
  tokens = np.zeros((config.train.batch_size,) + run.example_shape, np.int32)
  batch = sharding.global_batch(tokens, sharding.batch_sharding(run.mesh))
  state, metrics = step(state, batch)
  jax.block_until_ready(metrics)
  start = time.perf_counter()
  for _ in range(steps):
    state, metrics = step(state, batch)
  jax.block_until_ready(metrics)
  return steps / (time.perf_counter() - start)


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--batches", type=int, default=200)
  parser.add_argument("--workers", type=int, default=0)
  args = parser.parse_args()
  for name, rate in run(args.batches, args.workers).items():
    print(f"{name:45s} {rate:10.1f} batches/s")
  for path, name in (("configs/shakespeare.py", "shakespeare_bytes"),
                     ("configs/fashion_mnist.py", "fashion_mnist_local")):
    steps = train_steps_per_second(path)
    config = config_lib.load(path)
    pipe = batches_per_second(config.data, config.train.batch_size, args.batches)
    print(f"{path}: train {steps:.2f} steps/s, pipeline {pipe:.1f} batches/s at batch "
          f"{config.train.batch_size}: ratio {pipe / steps:.0f}x (target >= 10x)")


if __name__ == "__main__":
  main()
