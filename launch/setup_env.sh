#!/usr/bin/env bash
# Installs whatever pinned requirement is missing, then the offline data the defaults and tests use.
# Sourced by local.sh and test.sh; safe to run again (it installs nothing when all is present).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3}"
missing="$("$PY" "$ROOT/launch/missing_requirements.py" "$ROOT/requirements.txt" "$@")"
if [ -n "$missing" ]; then
  echo "[setup] installing: $(echo $missing)"
  "$PY" -m pip install -q --disable-pip-version-check $missing
fi
if [ -f "$ROOT/launch/install_offline_data.sh" ]; then
  bash "$ROOT/launch/install_offline_data.sh"
fi
