#!/usr/bin/env bash
# Every GPU figure for the OpenWebText-small shape in one run (a few minutes on an H100/H200):
# train step (MFU, tokens/s, compiled peak memory, head + objective share) at a micro-batch of
# 32 × 1024 (OWT_BATCHES="32 64" for more), the same step at the config's 128 × 1024; at
# 32 × 1024 the same step with the fused head computing every token
# (model.fused_head_skip_rows=False: no switch on the count of active rows), with the blocks
# rematerialised (model.remat=True) and with them scanned (model.scan_layers=True), then the
# sampler's own cost per step at batch 1 and 64, all with the XLA flags of launch/gpu_flags.sh.
# Each step line also gives the roofline of its compiled program (benchmarks/gpu_roofline.py),
# whose ratio to the measured time says how far its kernels run from the device's peaks.
#   bash benchmarks/gpu_check.sh
# SKIP_SETUP=1 uses the packages already installed (a machine with no network, say).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
if [ "${SKIP_SETUP:-0}" != 1 ]; then
  bash launch/setup_gpu.sh
fi
source launch/gpu_flags.sh
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
# Each part runs under its own time limit; one that fails is reported and the rest still run.
# shellcheck disable=SC2086
timeout 240 python3 -m benchmarks.train_step --owt --owt_only --owt_batch ${OWT_BATCHES:-32} \
  --repeats 10 || echo "[gpu_check] the OWT train step failed (exit $?)"
echo "[gpu_check] the same step at the config's micro-batch, 128 × 1024:"
timeout 180 python3 -m benchmarks.train_step --owt --owt_only --owt_batch 128 --repeats 5 \
  --owt_no_share || echo "[gpu_check] the OWT step at 128 × 1024 failed (exit $?)"
# The same step at 32 × 1024 with one config override each: every token through the fused
# head, then the blocks rematerialised, then scanned (one compile each, no head + objective
# share).
for override in model.fused_head_skip_rows=False model.remat=True model.scan_layers=True; do
  echo "[gpu_check] the same step with $override:"
  timeout 150 python3 -m benchmarks.train_step --owt --owt_only --owt_batch 32 --repeats 10 \
    --owt_no_share --owt_set "$override" ||
    echo "[gpu_check] the OWT step with $override failed (exit $?)"
done
for batch in 1 64; do
  timeout "$((batch > 1 ? 180 : 60))" python3 -m benchmarks.sampling --seq_len=1024 \
    --vocab=50257 --d_model=768 --layers=12 --heads=12 --lengths=2 --batch="$batch" \
    --dtype=bfloat16 --overhead_only --forward_calls=20 --repeats=2 ||
    echo "[gpu_check] the sampler at batch $batch failed (exit $?)"
done
