#!/usr/bin/env bash
# The partial-masking study: every run trained, evaluated and sampled through the project's CLI
# under one budget (same steps, batch and model width for every run of a dataset), then
# collected into OUT/results.json and rendered to REPORT_DIR/results.md with PNG plots
# (python3 -m tools.study; the plots need matplotlib, from requirements-test.txt).
#   SIZE=small bash launch/study.sh      # the documented size (docs/results.md), 2 CPU cores
#   SIZE=tiny OUT=/tmp/s bash launch/study.sh   # a few steps per run, for the test
# Env: SIZE (tiny|small|medium), OUT (study folder), REPORT_DIR (where results.md goes; docs/
# for the documented size), RUNS (subset of run names, space-separated), TEXT_FLAGS/IMAGE_FLAGS
# (extra --config.* flags, e.g. a bigger model on an accelerator), CLASSIFIER (FD classifier).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export JAX_PLATFORMS="${JAX_PLATFORMS:-cpu}"
source launch/cpu_allocator.sh
SIZE="${SIZE:-${1:-small}}"
OUT="${OUT:-runs/study_$SIZE}"
PY="${PYTHON:-python3}"

# Per-size budget. TEXT_T / IMAGE_T: sampling steps for the sample-quality-vs-steps curve
# (0 = T = L); IDLE_N: samples drawn one at a time with T = L to count idle steps.
case "$SIZE" in
  tiny)
    TEXT_STEPS=3; IMAGE_STEPS=3; EVAL_BATCHES=1; CLS_STEPS=3
    TEXT_T="4 0"; IMAGE_T="4"; TEXT_NQ=4; IMAGE_NQ=4; IDLE_N=1; IMAGE_IDLE_N=1
    SIZE_TEXT="--config.data.seq_len=16 --config.model.d_model=16 --config.model.num_layers=1
      --config.model.num_heads=2 --config.model.cond_dim=16 --config.train.batch_size=4
      --config.train.eval_every=2 --config.train.eval_batches=1 --config.train.log_every=1
      --config.eval.batch_size=4 --config.eval.num_time_samples=1"
    SIZE_IMAGE="--config.model.ch=32 --config.model.ch_mult=(1,) --config.model.attn_resolutions=()
      --config.train.batch_size=4 --config.train.eval_every=2 --config.train.eval_batches=1
      --config.train.log_every=1 --config.eval.batch_size=4 --config.eval.num_time_samples=1"
    REPORT_DIR="${REPORT_DIR:-$OUT/report}" ;;
  small)
    TEXT_STEPS=120; IMAGE_STEPS=60; EVAL_BATCHES=8; CLS_STEPS=300
    TEXT_T="32 0"; IMAGE_T="16 64"; TEXT_NQ=16; IMAGE_NQ=64; IDLE_N=8; IMAGE_IDLE_N=2
    SIZE_TEXT="--config.train.eval_every=40 --config.train.log_every=20"
    SIZE_IMAGE="--config.model.ch_mult=(1,) --config.model.attn_resolutions=()
      --config.train.batch_size=16 --config.train.eval_every=20 --config.train.log_every=10
      --config.eval.batch_size=16"
    REPORT_DIR="${REPORT_DIR:-docs}" ;;
  medium)
    TEXT_STEPS=600; IMAGE_STEPS=600; EVAL_BATCHES=0; CLS_STEPS=1500
    TEXT_T="16 32 64 0"; IMAGE_T="16 64 256"; TEXT_NQ=64; IMAGE_NQ=256; IDLE_N=32; IMAGE_IDLE_N=4
    SIZE_TEXT="--config.train.eval_every=100"; SIZE_IMAGE="--config.train.eval_every=100"
    REPORT_DIR="${REPORT_DIR:-$OUT/report}" ;;
  *) echo "SIZE must be tiny, small or medium, got '$SIZE'" >&2; exit 2 ;;
esac
TEXT_FLAGS="$SIZE_TEXT ${TEXT_FLAGS:-}"
IMAGE_FLAGS="$SIZE_IMAGE ${IMAGE_FLAGS:-}"
ALL_RUNS="text_ar text_mdm text_l2_joint text_l4_joint text_l8_joint text_l2_valid text_l4_valid
  text_l8_valid image_mdm image_l2 image_l4"
RUNS="${RUNS:-$ALL_RUNS}"
CLASSIFIER="${CLASSIFIER:-$OUT/fmnist_classifier.msgpack}"
mkdir -p "$OUT/logs"
: > "$OUT/commands.txt"
: > "$OUT/timings.jsonl"
echo "{\"size\": \"$SIZE\", \"runs\": \"$(echo $RUNS)\", \"start\": $(date +%s)}" > "$OUT/study.json"
STUDY_START=$(date +%s.%N)

# run NAME PHASE CMD...: runs one command, logs it, appends it and its wall time to the study.
run() {
  local name="$1" phase="$2"; shift 2
  echo "== $name $phase: $*"
  printf '%s\n' "$*" >> "$OUT/commands.txt"
  local t0; t0=$(date +%s.%N)
  "$@" > "$OUT/logs/$name.$phase.log" 2>&1 || {
    echo "FAILED: $name $phase (log: $OUT/logs/$name.$phase.log)" >&2
    tail -20 "$OUT/logs/$name.$phase.log" >&2; exit 1; }
  local t1; t1=$(date +%s.%N)
  echo "{\"run\": \"$name\", \"phase\": \"$phase\", \"seconds\": $(echo "$t1 - $t0" | bc)}" \
    >> "$OUT/timings.jsonl"
}

# keep_samples WORKDIR TAG: --mode=sample writes WORKDIR/samples/step_N; keep it under a name.
keep_samples() {
  local dst="$1/study_samples/$2"
  rm -rf "$dst"; mkdir -p "$1/study_samples"
  mv "$(ls -d "$1"/samples/step_* | head -1)" "$dst"
  rm -rf "$1/samples"
}

# study_run NAME CONFIG KIND: train, evaluate (valid bound and joint objective) and sample.
study_run() {
  local name="$1" config="$2" kind="$3" wd="$OUT/$1" flags steps quality
  if [ "$kind" = text ]; then flags="$TEXT_FLAGS"; steps="$TEXT_STEPS"; else
    flags="$IMAGE_FLAGS"; steps="$IMAGE_STEPS"; fi
  config="$config,steps=$steps"
  local cli=("$PY" -m prime_jax.main "--config=$config" "--workdir=$wd")
  # shellcheck disable=SC2206
  local extra=($flags)
  run "$name" train "${cli[@]}" --mode=train "${extra[@]}"
  run "$name" eval "${cli[@]}" --mode=eval "--config.eval.num_batches=$EVAL_BATCHES" "${extra[@]}"
  [ "$name" = text_ar ] && return 0
  if [ "$kind" = text ]; then
    quality=(--config.sample.scorer_workdir="$OUT/text_ar")
    # T = L, one sample per batch: idle steps as in the formula, and quality at T = L.
    run "$name" sample_T0 "${cli[@]}" --mode=sample --config.sample.steps=0 \
      --config.sample.batch_size=1 "--config.sample.num_samples=$IDLE_N" "${quality[@]}" \
      "${extra[@]}"
    keep_samples "$wd" T0_b1
    for t in $TEXT_T; do
      [ "$t" = 0 ] && continue
      run "$name" "sample_T$t" "${cli[@]}" --mode=sample "--config.sample.steps=$t" \
        "--config.sample.batch_size=$TEXT_NQ" "--config.sample.num_samples=$TEXT_NQ" \
        "${quality[@]}" "${extra[@]}"
      keep_samples "$wd" "T${t}_b$TEXT_NQ"
    done
  else
    quality=(--config.sample.fd_classifier="$CLASSIFIER")
    run "$name" sample_T0 "${cli[@]}" --mode=sample --config.sample.steps=0 \
      --config.sample.batch_size=1 "--config.sample.num_samples=$IMAGE_IDLE_N" "${extra[@]}"
    keep_samples "$wd" T0_b1
    for t in $IMAGE_T; do
      run "$name" "sample_T$t" "${cli[@]}" --mode=sample "--config.sample.steps=$t" \
        "--config.sample.batch_size=$IMAGE_NQ" "--config.sample.num_samples=$IMAGE_NQ" \
        "${quality[@]}" "${extra[@]}"
      keep_samples "$wd" "T${t}_b$IMAGE_NQ"
    done
  fi
}

for name in $RUNS; do
  case "$name" in
    text_ar) study_run "$name" configs/shakespeare.py:baseline=ar text ;;
    text_mdm) study_run "$name" configs/shakespeare.py:baseline=mdm text ;;
    text_l[0-9]*_joint|text_l[0-9]*_valid)
      ell="${name#text_l}"; ell="${ell%%_*}"; obj="${name##*_}"
      study_run "$name" "configs/shakespeare.py:ell=$ell,objective=$obj" text ;;
    image_mdm|image_l[0-9]*)
      if [ ! -f "$CLASSIFIER" ]; then
        run classifier train "$PY" -m prime_jax.quality train-classifier \
          "--out=$CLASSIFIER" "--steps=$CLS_STEPS"
      fi
      if [ "$name" = image_mdm ]; then study_run "$name" configs/fashion_mnist.py:baseline=mdm image
      else study_run "$name" "configs/fashion_mnist.py:ell=${name#image_l}" image; fi ;;
    *) echo "unknown run '$name'; known: $(echo $ALL_RUNS)" >&2; exit 2 ;;
  esac
done

echo "{\"seconds\": $(echo "$(date +%s.%N) - $STUDY_START" | bc)}" > "$OUT/wall.json"
"$PY" -m tools.study --study_dir="$OUT" --report_dir="$REPORT_DIR"
