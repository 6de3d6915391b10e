#!/usr/bin/env bash
# Install (if needed), lint and run the test suite. GPU tests skip cleanly without CUDA.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${GSCACHE_VENV:-$root/.venv}"
bash "$root/scripts/install.sh"
cd "$root"
echo "[gscache] ruff"
"$venv/bin/ruff" check .
echo "[gscache] pytest"
"$venv/bin/python" -m pytest -q -p no:cacheprovider "$@"
