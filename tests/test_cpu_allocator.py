"""launch/cpu_allocator.sh: CPU jobs run with tcmalloc, and large buffers stop page-faulting.

glibc maps every allocation over 32 MB fresh from the kernel and unmaps it on free, so a jitted
call that returns 64 MB faults each of its 16,384 pages in again. tcmalloc keeps the memory,
handing a free span back to the kernel only now and then (about one call in twenty here), so
most calls fault nothing: the test looks at the median call, not the worst.
"""

import ctypes.util
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROBE = """
import resource, jax, jax.numpy as jnp
double = jax.jit(lambda x: x * 2)
x = jnp.ones((4096, 4096), jnp.float32)  # 64 MB in, 64 MB out each call
faults = []
for _ in range(13):
  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  double(x).block_until_ready()  # the result is freed at once
  faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(" ".join(map(str, faults[2:])))  # the first two calls compile and warm up
"""


def _faults_per_call(allocator: str) -> tuple[list[int], str]:
  """(page faults of eleven warm 64 MB calls, LD_PRELOAD) in a job launched as local.sh does."""
  env = dict(os.environ, PRIME_JAX_ALLOCATOR=allocator, JAX_PLATFORMS="cpu")
  env.pop("LD_PRELOAD", None)
  script = ('source launch/cpu_allocator.sh && echo "${LD_PRELOAD:-}" && '
            f'exec {sys.executable} -c "$0"')
  out = subprocess.run(["bash", "-c", script, PROBE], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=120, check=True).stdout.split("\n")
  return [int(f) for f in out[1].split()], out[0]


@pytest.mark.skipif(ctypes.util.find_library("tcmalloc_minimal") is None,
                    reason="libtcmalloc_minimal.so.4 is not installed (launch/setup_env.sh does)")
def test_tcmalloc_is_preloaded_and_keeps_large_buffers_mapped():
  faults, preload = _faults_per_call("tcmalloc")
  assert "libtcmalloc_minimal.so.4" in preload
  assert sorted(faults)[len(faults) // 2] < 100, faults  # the median call maps nothing new
  faults, preload = _faults_per_call("system")
  assert preload == ""
  assert min(faults) >= 16384, faults  # every 4 KiB page of the 64 MB result, every call
