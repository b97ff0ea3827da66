#!/usr/bin/env bash
# Installs what is missing, then runs the test suite on CPU with 8 virtual devices.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash launch/setup_env.sh requirements-test.txt
export XLA_FLAGS="${XLA_FLAGS:---xla_force_host_platform_device_count=8}"
export JAX_PLATFORMS=cpu
exec python3 -m pytest -q "$@" tests
