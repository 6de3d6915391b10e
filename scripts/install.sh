#!/usr/bin/env bash
# Install gscache into ./.venv (created if missing). Safe to run again: it only adds what is missing.
#   GSCACHE_VENV         where the virtual environment lives (default: .venv in the repository root)
#   GSCACHE_TORCH_SPEC   how to install PyTorch when it is missing (default: torch==2.13.0; for a CUDA build use
#                        e.g. "torch --index-url https://download.pytorch.org/whl/cu130")
#   GSCACHE_EXTRAS       extras to install (default: dev)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${GSCACHE_VENV:-$root/.venv}"
python="${PYTHON:-python3}"

if [ ! -x "$venv/bin/python" ]; then
  echo "[gscache] creating virtual environment $venv"
  "$python" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip install --disable-pip-version-check -q)

if ! "$venv/bin/python" -c "import torch" 2>/dev/null; then
  spec="${GSCACHE_TORCH_SPEC:-torch==2.13.0}"
  echo "[gscache] installing PyTorch ($spec)"
  # shellcheck disable=SC2086
  "${pip[@]}" $spec
fi

extras="${GSCACHE_EXTRAS:-dev}"
echo "[gscache] installing gscache[$extras]"
"${pip[@]}" -e "$root[$extras]"
echo "[gscache] ready: $venv/bin/gscache"
