"""A tiny Shakespeare config shared by the slow tests, in-process and as CLI flags."""

from __future__ import annotations

import os
import sys

from prime_jax import config as config_lib

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))

# Overrides of configs/shakespeare.py: one small block, short sequences, no held-out likelihood.
TINY = {
    "data.seq_len": 32, "model.d_model": 32, "model.num_layers": 1, "model.num_heads": 2,
    "model.cond_dim": 16, "train.batch_size": 8, "train.log_every": 2, "train.eval_every": 0,
    "eval.batch_size": 8, "eval.num_batches": 2, "eval.num_time_samples": 2,
    "sample.batch_size": 8, "sample.num_samples": 8,
}


def config(**overrides):
  """configs/shakespeare.py with TINY and `overrides` ('section__key'=value) applied."""
  return config_from_arg("", **overrides)


def cli_flags(**overrides) -> list[str]:
  """The same config as `config(**overrides)`, as --config.* flags for prime_jax.main."""
  values = {**TINY, **{k.replace("__", "."): v for k, v in overrides.items()}}
  return [f"--config.{k}={v}" for k, v in values.items()]


def command(workdir: str, *flags: str, mode: str = "train") -> list[str]:
  """The training command line a user types, on configs/shakespeare.py."""
  return [sys.executable, "-m", "prime_jax.main",
          f"--config={os.path.join(ROOT, 'configs', 'shakespeare.py')}", f"--workdir={workdir}",
          f"--mode={mode}", *flags]


def env(devices: int, cache_dir: str | None = None) -> dict[str, str]:
  """A subprocess environment with `devices` virtual CPU devices and a shared compile cache."""
  e = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
           JAX_PLATFORMS="cpu", PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
  if cache_dir:
    e.update(JAX_COMPILATION_CACHE_DIR=cache_dir, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
             JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
  return e


# What the shared `trained` workdir (conftest.py) runs: 4 steps, synchronous saves at 2 and 4.
CHECKPOINTED = {"train__num_steps": 4, "train__checkpoint_every": 2, "train__keep_last": 3,
                "train__async_checkpoint": False}


def config_from_arg(arg: str, **overrides):
  """configs/shakespeare.py:`arg` (a variant such as 'baseline=ar'), TINY and `overrides`."""
  path = os.path.join(ROOT, "configs", "shakespeare.py")
  c = config_lib.load(f"{path}:{arg}" if arg else path)
  for key, value in {**TINY, **{k.replace("__", "."): v for k, v in overrides.items()}}.items():
    section, field = key.split(".")
    c[section][field] = value
  return c
