"""The GPU launch flags are ones this jax's XLA knows: an unknown XLA flag aborts any program."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_gpu_xla_flags_are_accepted_and_keep_the_callers_flags():
  script = ('source launch/gpu_flags.sh && echo "$XLA_FLAGS" && '
            f'{sys.executable} -c "import jax.numpy as jnp; print(float(jnp.ones(3).sum()))"')
  env = {**os.environ, "JAX_PLATFORMS": "cpu",
         "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
  proc = subprocess.run(["bash", "-c", script], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr[-2000:]
  flags, result = proc.stdout.split("\n")[:2]
  assert "--xla_gpu_enable_latency_hiding_scheduler=true" in flags
  assert flags.split()[-1] == "--xla_force_host_platform_device_count=2"
  assert result == "3.0"
