#!/usr/bin/env bash
# Installs what is missing, then runs the test suite on CPU with 8 virtual devices, in one
# pytest-xdist worker per core (at most 4): most of the suite is single-threaded XLA compiles.
# Extra arguments go to pytest; `-n 0` runs in this process (for -s, pdb or one test).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash launch/setup_env.sh requirements-test.txt
export XLA_FLAGS="${XLA_FLAGS:---xla_force_host_platform_device_count=8}"
export JAX_PLATFORMS=cpu
source launch/cpu_allocator.sh
exec python3 -m pytest -q -n auto --maxprocesses=4 "$@" tests
