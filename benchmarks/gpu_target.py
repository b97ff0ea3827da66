"""A compile-only GPU: XLA:GPU compiles for an H100 described here on a machine without one, so
a GPU step's compiled memory (and optimized HLO) can be read on a CPU.

It needs jax's CUDA plugin of the installed jax version (`pip install "jax[cuda12]==VERSION"`;
benchmarks/gpu_compile.sh puts it in an environment of its own), but no GPU and no driver.
Call `prepare()` before jax starts a backend.
"""

from __future__ import annotations

import os
from typing import Any

# What XLA:GPU reads of the device it compiles for (an H100 SXM, 80 GB HBM3).
TARGETS = {"h100": """
gpu_device_info {
  threads_per_block_limit: 1024
  threads_per_warp: 32
  shared_memory_per_block: 49152
  shared_memory_per_core: 233472
  threads_per_core_limit: 2048
  core_count: 132
  fpus_per_core: 128
  block_dim_limit_x: 2147483647
  block_dim_limit_y: 65535
  block_dim_limit_z: 65535
  memory_bandwidth: 3352320000000
  l2_cache_size: 52428800
  clock_rate_ghz: 1.98
  device_memory_size: 84929347584
  shared_memory_per_block_optin: 232448
  cuda_compute_capability { major: 9 minor: 0 }
  registers_per_core_limit: 65536
  registers_per_block_limit: 65536
}
platform_name: "CUDA"
dnn_version_info { major: 9 minor: 8 }
runtime_version { major: 12 minor: 9 }
device_description_str: "NVIDIA H100 80GB HBM3"
"""}


def prepare() -> None:
  """Keeps jax's own backend on the CPU and lets the CUDA plugin load with no driver present."""
  os.environ["JAX_PLATFORMS"] = "cpu"
  os.environ["JAX_SKIP_CUDA_CONSTRAINTS_CHECK"] = "1"


def compile_only_device(name: str) -> Any:
  """A device that `jax.jit(...).lower(...).compile()` can target but nothing can run on."""
  if name not in TARGETS:
    raise ValueError(f"GPU target {name!r} is not one of {sorted(TARGETS)}")
  import jax
  from jax.experimental import topologies
  try:
    topology = topologies.get_topology_desc(platform="cuda", target_config=TARGETS[name],
                                            topology="1x1x1")
  except (NotImplementedError, RuntimeError) as e:
    raise RuntimeError(
        f"compiling for GPU target {name!r} needs jax's CUDA plugin of jax {jax.__version__} "
        f"(pip install \"jax[cuda12]=={jax.__version__}\", or run benchmarks/gpu_compile.sh, "
        f"which installs it in an environment of its own) and gpu_target.prepare() called "
        f"before jax started: {e}") from None
  return topology.devices[0]
