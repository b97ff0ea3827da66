"""Test set-up: eight virtual CPU devices so sharding is exercised without accelerators."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402  (must come after XLA_FLAGS)

jax.config.update("jax_enable_x64", False)


import pytest  # noqa: E402

import tiny  # noqa: E402
from prime_jax import train  # noqa: E402
from prime_jax.quality import fashion_mnist  # noqa: E402


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
  """A workdir with synchronous checkpoints at steps 2 and 4 of the tiny config (read only)."""
  path = str(tmp_path_factory.mktemp("trained") / "run")
  train.train_and_evaluate(tiny.config(**tiny.CHECKPOINTED), path)
  return path


@pytest.fixture(scope="session")
def classifier_path(tmp_path_factory):
  """A small Fashion-MNIST classifier (150 steps on 6,000 train images, 32 features), trained
  once for every test that needs one."""
  path = str(tmp_path_factory.mktemp("clf") / "fmnist.msgpack")
  result = fashion_mnist.train_classifier(path, steps=150, batch_size=64, train_examples=6000,
                                          eval_examples=1000, features=32)
  assert result["accuracy"] > 0.70, result
  return path
