#!/usr/bin/env bash
# Every GPU figure for the OpenWebText-small shape in one run of under 5 minutes (after setup),
# with the XLA flags of launch/gpu_flags.sh. First what the figures need: the train step at a
# micro-batch of 32 × 1024 (MFU, tokens/s, compiled peak memory, roofline, head + objective
# share; OWT_BATCHES="32 64" for more), then the sampler's own cost per step at batch 1 and 64.
# Then, while the budget lasts: the same step at the config's 128 × 1024, and at 32 × 1024 with
# the fused head computing every token (model.fused_head_skip_rows=False: no switch on the count
# of active rows), with the blocks rematerialised (model.remat=True) and with them scanned
# (model.scan_layers=True). The roofline beside each measured time (benchmarks/gpu_roofline.py)
# says how far its kernels run from the device's peaks.
#   bash benchmarks/gpu_check.sh
# SKIP_SETUP=1 uses the packages already installed (a machine with no network, say).
# GPU_CHECK_BUDGET_S (default 280) bounds the run after setup: each part runs under its own
# limit or what is left of the budget, whichever is less, and parts that would get under
# GPU_CHECK_MIN_PART_S (default 20) are skipped and named. A part past its limit gets SIGTERM,
# then SIGKILL 10 s later, so the whole run stays under 5 minutes.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
if [ "${SKIP_SETUP:-0}" != 1 ]; then
  bash launch/setup_gpu.sh
fi
source launch/gpu_flags.sh
BUDGET="${GPU_CHECK_BUDGET_S:-280}"
MIN_PART="${GPU_CHECK_MIN_PART_S:-20}"
START=$SECONDS

part() {  # part LIMIT_S LABEL COMMAND...: one figure, under min(LIMIT_S, what is left).
  local limit=$1 label=$2 left rc=0
  shift 2
  left=$((BUDGET - (SECONDS - START)))
  if [ "$left" -lt "$MIN_PART" ]; then
    echo "[gpu_check] skipped: $label ($left s of the ${BUDGET} s budget left)"
    return 0
  fi
  [ "$limit" -le "$left" ] || limit=$left
  echo "[gpu_check] $label (limit $limit s):"
  timeout --kill-after=10 "$limit" "$@" || rc=$?
  [ "$rc" = 0 ] || echo "[gpu_check] $label failed (exit $rc$([ "$rc" != 124 ] ||
    echo ": out of time"))"
}

nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
# shellcheck disable=SC2086
part 170 "the OWT train step at 32 × 1024" python3 -m benchmarks.train_step --owt --owt_only \
  --owt_batch ${OWT_BATCHES:-32} --repeats 10
for batch in 1 64; do
  part "$((batch > 1 ? 60 : 40))" "the sampler's own cost at batch $batch" \
    python3 -m benchmarks.sampling --seq_len=1024 --vocab=50257 --d_model=768 --layers=12 \
    --heads=12 --lengths=2 --batch="$batch" --dtype=bfloat16 --overhead_only \
    --forward_calls=20 --repeats=2
done
part 90 "the same step at the config's micro-batch, 128 × 1024" python3 -m benchmarks.train_step \
  --owt --owt_only --owt_batch 128 --repeats 5 --owt_no_share
# One config override each at 32 × 1024 (one compile each, no head + objective share).
for override in model.fused_head_skip_rows=False model.remat=True model.scan_layers=True; do
  part 60 "the step at 32 × 1024 with $override" python3 -m benchmarks.train_step --owt \
    --owt_only --owt_batch 32 --repeats 10 --owt_no_share --owt_set "$override"
done
echo "[gpu_check] done in $((SECONDS - START)) s after setup"
