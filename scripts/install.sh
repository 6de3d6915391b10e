#!/usr/bin/env bash
# Install gscache into ./.venv (created if missing). Safe to run again: it only adds what is missing.
#   GSCACHE_VENV         where the virtual environment lives (default: .venv in the repository root)
#   GSCACHE_TORCH_SPEC   how to install PyTorch when it is missing (default: torch==2.13.0; for a CUDA build use
#                        e.g. "torch --index-url https://download.pytorch.org/whl/cu130")
#   GSCACHE_EXTRAS       extras to install (default: dev,train,viewer,server,cluster)
#   GSCACHE_APT=0        skip installing the Debian packages listed below
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${GSCACHE_VENV:-$root/.venv}"
python="${PYTHON:-python3}"

# Debian packages: open3d needs libusb; the viewer's tests need a virtual X server and Mesa's OpenGL.
debs=(libusb-1.0-0 xvfb xauth libgl1 libegl1 libgl1-mesa-dri)
if [ "${GSCACHE_APT:-1}" != 0 ] && command -v apt-get >/dev/null && command -v dpkg-query >/dev/null; then
  missing=()
  for deb in "${debs[@]}"; do
    dpkg-query -W -f='${Status}' "$deb" 2>/dev/null | grep -q "install ok installed" || missing+=("$deb")
  done
  if [ "${#missing[@]}" -gt 0 ]; then
    sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
    echo "[gscache] installing Debian packages: ${missing[*]}"
    $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
fi

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

extras="${GSCACHE_EXTRAS:-dev,train,viewer,server,cluster}"
echo "[gscache] installing gscache[$extras]"
"${pip[@]}" -e "$root[$extras]"
echo "[gscache] ready: $venv/bin/gscache"
