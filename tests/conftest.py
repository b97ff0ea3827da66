"""Test set-up: eight virtual CPU devices so sharding is exercised without accelerators."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402  (must come after XLA_FLAGS)

jax.config.update("jax_enable_x64", False)


import pytest  # noqa: E402

import tiny  # noqa: E402
from prime_jax import train  # noqa: E402


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
  """A workdir with synchronous checkpoints at steps 2 and 4 of the tiny config (read only)."""
  path = str(tmp_path_factory.mktemp("trained") / "run")
  train.train_and_evaluate(tiny.config(**tiny.CHECKPOINTED), path)
  return path
