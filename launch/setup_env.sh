#!/usr/bin/env bash
# Installs whatever pinned requirement is missing, tcmalloc, then the offline data the defaults and
# tests use.
# Sourced by local.sh and test.sh; safe to run again (it installs nothing when all is present).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3}"
missing="$("$PY" "$ROOT/launch/missing_requirements.py" "$ROOT/requirements.txt" "$@")"
if [ -n "$missing" ]; then
  echo "[setup] installing: $(echo $missing)"
  "$PY" -m pip install -q --disable-pip-version-check $missing
fi
# tcmalloc, which launch/cpu_allocator.sh preloads for CPU jobs, from apt when it is missing.
libraries="$( { ldconfig -p || /sbin/ldconfig -p || true; } 2>/dev/null)"
if ! grep -q "libtcmalloc_minimal.so.4 " <<<"$libraries" && command -v apt-get >/dev/null 2>&1; then
  if [[ $(id -u) -eq 0 ]]; then SUDO=""; else SUDO="sudo"; fi
  { $SUDO apt-get install -y -qq libtcmalloc-minimal4 >/dev/null 2>&1 \
      || { $SUDO apt-get update -qq >/dev/null && \
           $SUDO apt-get install -y -qq libtcmalloc-minimal4 >/dev/null; }; } \
    || echo "[setup] warning: could not install libtcmalloc-minimal4; CPU jobs use glibc's" \
      "malloc" >&2
fi
if [ -f "$ROOT/launch/install_offline_data.sh" ]; then
  bash "$ROOT/launch/install_offline_data.sh"
fi
