#!/usr/bin/env bash
# Every worker of a TPU VM pod runs the same command; jax.distributed joins them and each
# process reads only its slice of the data. The repository must be at the same path on every
# worker (e.g. cloned there, or on a shared disk); WORKDIR should be a bucket (gs://...).
#   bash launch/tpu_pod.sh TPU_NAME ZONE CONFIG WORKDIR [extra --config.* flags]
set -euo pipefail
if [ $# -lt 4 ]; then
  echo "usage: bash launch/tpu_pod.sh TPU_NAME ZONE CONFIG WORKDIR [--config.key=value ...]" >&2
  exit 2
fi
TPU_NAME="$1"; ZONE="$2"; CONFIG="$3"; WORKDIR="$4"; shift 4
REPO="${REPO:-\$HOME/prime_jax}"
EXTRA="$*"
gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" --worker=all --command="
  set -e; cd $REPO
  python3 -m pip install -q -r requirements.txt
  JAX_VERSION=\$(python3 -c 'import jax; print(jax.__version__)')
  python3 -m pip install -q \"jax[tpu]==\$JAX_VERSION\"
  python3 -m prime_jax.main --config='$CONFIG' --workdir='$WORKDIR' --mode=train \
    --config.distributed.initialize=True $EXTRA"
