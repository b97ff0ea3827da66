#!/usr/bin/env bash
# The main job on this CPU: installs what is missing, trains Prime (ℓ = 2) on the embedded
# Shakespeare bytes for a few minutes, evaluates the valid bound on the held-out plays, draws
# samples, and prints where everything went.
#   bash launch/local.sh [WORKDIR] [extra --config.* flags]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash launch/setup_env.sh
WORKDIR="${1:-runs/shakespeare_l2}"
shift || true
CONFIG="${CONFIG:-configs/shakespeare.py:ell=2}"
export JAX_PLATFORMS="${JAX_PLATFORMS:-cpu}"
source launch/cpu_allocator.sh

echo "== train: $CONFIG -> $WORKDIR"
python3 -m prime_jax.main --config="$CONFIG" --workdir="$WORKDIR" --mode=train "$@"
echo "== held-out evaluation (every validation sequence)"
python3 -m prime_jax.main --config="$CONFIG" --workdir="$WORKDIR" --mode=eval \
  --config.eval.num_batches=0 "$@"
echo "== samples"
python3 -m prime_jax.main --config="$CONFIG" --workdir="$WORKDIR" --mode=sample "$@"
python3 - "$WORKDIR" <<'PY'
import glob, json, os, sys
import numpy as np
from prime_jax import data
workdir = sys.argv[1]
cfg = data.default_config("shakespeare_bytes", seq_len=256)
counts = np.zeros(256)
for batch in data.make_loader(cfg, "validation", batch_size=64, shuffle=False, num_epochs=1,
                              drop_remainder=False):
  counts += np.bincount(batch["tokens"].ravel(), minlength=256)
p = counts / counts.sum()
unigram = float(-(p[p > 0] * np.log2(p[p > 0])).sum())
result = json.load(open(sorted(glob.glob(os.path.join(workdir, "eval", "*.json")),
                               key=os.path.getmtime)[-1]))
print(f"\nheld-out valid bound: {result['valid_bits']:.3f} ± {result['valid_bits_se']:.3f} "
      f"bits/byte on {result['num_examples']} sequences (joint objective, not a bound: "
      f"{result['joint_bits']:.3f})")
print(f"unigram entropy of the held-out bytes: {unigram:.3f} bits/byte")
print(f"\nworkdir {os.path.abspath(workdir)}:")
for name in ("config.json", "metrics.jsonl", "tensorboard", "checkpoints", "eval", "samples"):
  print(f"  {name}")
samples = sorted(glob.glob(os.path.join(workdir, "samples", "*", "samples.txt")),
                 key=os.path.getmtime)
if samples:
  print(f"\nfirst sample ({samples[-1]}):")
  print(open(samples[-1], encoding="utf-8").read()[:600])
PY
