#!/usr/bin/env bash
# Compile the torch-free CUDA core (cuda/csrc/*.cu) for sm_90 with nvcc, warnings as errors. Needs no GPU and no
# torch: CPU CI runs it (tests/test_cuda_compile.py). Usage: cuda/check_compile.sh [arch, default sm_90]
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
arch="${1:-sm_90}"
nvcc="${NVCC:-nvcc}"
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
status=0
for src in "$here"/csrc/*.cu; do
    name="$(basename "$src" .cu)"
    if "$nvcc" -arch="$arch" -O3 -std=c++17 -lineinfo --Werror all-warnings -Xcompiler -Wall,-Wextra -c "$src" -o "$out/$name.o"; then
        echo "ok   $name.cu ($arch)"
    else
        echo "FAIL $name.cu ($arch)" >&2
        status=1
    fi
done
exit "$status"
