#!/usr/bin/env bash
# One GPU: installs the CUDA build of the pinned jax when it is missing, then trains in bf16
# with the XLA flags of launch/gpu_flags.sh.
#   bash launch/gpu.sh [CONFIG] [WORKDIR] [extra --config.* flags]
#   bash launch/gpu.sh configs/openwebtext.py:ell=2,accum=4 runs/owt_l2   # batch 512 as 4 × 128
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash launch/setup_gpu.sh
CONFIG="${1:-configs/shakespeare.py:ell=2}"
WORKDIR="${2:-runs/gpu}"
shift 2 || shift $# || true
source launch/gpu_flags.sh
python3 -m prime_jax.main --config="$CONFIG" --workdir="$WORKDIR" --mode=train \
  --config.model.dtype=bfloat16 "$@"
