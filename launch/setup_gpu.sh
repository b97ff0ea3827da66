#!/usr/bin/env bash
# The pinned requirements, then the CUDA build of the pinned jax when jax sees no GPU.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash launch/setup_env.sh
JAX_VERSION="$(python3 -c 'import jax; print(jax.__version__)')"
if ! python3 -c 'import jax, sys; sys.exit(jax.default_backend() != "gpu")' 2>/dev/null; then
  python3 -m pip install -q "jax[cuda12]==${JAX_VERSION}"
fi
