#!/usr/bin/env bash
# One GPU: installs the CUDA build of the pinned jax when it is missing, then trains in bf16
# with the XLA flags of launch/gpu_flags.sh.
#   bash launch/gpu.sh [CONFIG] [WORKDIR] [extra --config.* flags]
#   bash launch/gpu.sh configs/openwebtext.py:ell=2,accum=16 runs/owt_l2   # batch 512 as 16 × 32
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash launch/setup_env.sh
JAX_VERSION="$(python3 -c 'import jax; print(jax.__version__)')"
if ! python3 -c 'import jax, sys; sys.exit(jax.default_backend() != "gpu")' 2>/dev/null; then
  python3 -m pip install -q "jax[cuda12]==${JAX_VERSION}"
fi
CONFIG="${1:-configs/shakespeare.py:ell=2}"
WORKDIR="${2:-runs/gpu}"
shift 2 || shift $# || true
source launch/gpu_flags.sh
python3 -m prime_jax.main --config="$CONFIG" --workdir="$WORKDIR" --mode=train \
  --config.model.dtype=bfloat16 "$@"
