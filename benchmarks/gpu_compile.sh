#!/usr/bin/env bash
# The OpenWebText-small train step compiled for an H100 on this machine, with no GPU: XLA:GPU's
# compiled peak memory (memory_analysis) and the roofline of its optimized program
# (benchmarks/gpu_roofline.py: a lower bound on the step's time, and so a ceiling on its MFU),
# for the micro-batches and settings that decide configs/openwebtext.py, with the XLA flags of
# launch/gpu_flags.sh. No step runs, so nothing is timed.
#   bash benchmarks/gpu_compile.sh        (the config at B = 32 128 192, then at 32 with the
#                                          blocks rematerialised, scanned, and both)
#   OWT_BATCHES="32 256" bash benchmarks/gpu_compile.sh
# jax's CUDA plugin (about 5 GB on disk with its CUDA wheels) goes into build/gpu_compile_venv,
# which sees the installed requirements (--system-site-packages): the main env keeps its CPU.
# SKIP_SETUP=1 uses what is installed. Each compile takes 25-50 s on a 2-core CPU.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV=build/gpu_compile_venv
if [ "${SKIP_SETUP:-0}" != 1 ]; then
  bash launch/setup_env.sh
  JAX_VERSION="$(python3 -c 'import jax; print(jax.__version__)')"
  [ -x "$VENV/bin/python" ] || python3 -m venv --system-site-packages "$VENV"
  if ! "$VENV/bin/python" -c 'import jax_plugins.xla_cuda12' 2>/dev/null; then
    "$VENV/bin/python" -m pip install -q "jax[cuda12]==${JAX_VERSION}"
  fi
fi
source launch/gpu_flags.sh
run() {
  # XLA:GPU logs a warning when its own rematerialisation pass cannot reach a memory target it
  # sets itself; the compiled figure is the one that counts.
  "$VENV/bin/python" -m benchmarks.train_step --owt --owt_only --owt_target h100 --owt_no_share \
    "$@" 2> >(grep -v "hlo_rematerialization" >&2)
}
# shellcheck disable=SC2086
run --owt_batch ${OWT_BATCHES:-32 128 192}
for settings in model.remat=True model.scan_layers=True \
    "model.remat=True model.scan_layers=True"; do
  # shellcheck disable=SC2086
  run --owt_batch 32 --owt_set $settings
done
