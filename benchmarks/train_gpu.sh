#!/usr/bin/env bash
# GPU training runs of issue 5, one mode per device call; results (JSON + plot + log, the snowmiku .ply) go to $OUT.
#
#   bash benchmarks/train_gpu.sh smoke                       # lego 500 steps native, then gsplat (< 3 min with JIT)
#   bash benchmarks/train_gpu.sh lego --backends native      # lego 30k native ...
#   bash benchmarks/train_gpu.sh lego --backends gsplat --merge DIR   # ... and gsplat in a second call, merged
#   bash benchmarks/train_gpu.sh snowmiku [--parts heldout,scene]     # held-out PSNR; bundled scene (<= 10 MB)
#   bash benchmarks/train_gpu.sh resume [--steps 4000]       # SIGKILL mid-run + --resume vs uninterrupted
#
# Data: $TRAIN_DATA_DIR (default .traindata/) holding nerf_synthetic_lego_200/ and snowmiku_plush_mit/ (falls back
# to ../shared/data/). Wheels: .whl/ (gsplat, tyro, plyfile, ...) installed into /tmp/site when missing. Builds are
# cached under build/ (git-ignored, kept while the machine stays warm); a prebuilt native library in
# $PREBUILT_DIR/gscache_native.so (default .prebuilt/) skips the native JIT build, and KEEP_NATIVE=1 copies the one
# built here to $OUT. Other modes' options: python3 benchmarks/train_bench.py --help. Environment for a CPU check:
# TRAIN_EXTRA (more trainer flags), PYTHON (interpreter), TRAIN_TIMEOUT / TRAIN_CALL_BUDGET (seconds).
set -uo pipefail
mode="${1:?usage: train_gpu.sh smoke|lego|snowmiku|resume [options]}"
shift
cd "$(dirname "$0")/.." || exit 2
export TRAIN_CALL_START="${TRAIN_CALL_START:-$(date +%s)}"
out="${OUT:-benchmarks/results/train-gpu}"
mkdir -p "$out"
py="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1 COLUMNS=160 MAX_JOBS="${MAX_JOBS:-16}"
export GSCACHE_CACHE_DIR="${GSCACHE_CACHE_DIR:-$PWD/build/gscache-cache}"
export TORCH_EXTENSIONS_DIR="${TORCH_EXTENSIONS_DIR:-$PWD/build/torch-extensions}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if ! "$py" -c "import gsplat, tyro, plyfile" 2>/dev/null; then
  if ls .whl/*.whl >/dev/null 2>&1; then
    "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
      || exit 1
    export PYTHONPATH="/tmp/site:$PYTHONPATH"
  fi
fi
# A gsplat extension built on the same image (.prebuilt/gsplat_cuda.so) is loaded as gsplat.csrc by a
# sitecustomize.py placed beside the wheels, so that gsplat skips its ~75 s JIT build.
if [ -f .prebuilt/gsplat_cuda.so ] && [ -f .prebuilt/sitecustomize.py ] && [ -d /tmp/site ]; then
  cp .prebuilt/sitecustomize.py /tmp/site/ && export GSPLAT_PREBUILT_SO="$PWD/.prebuilt/gsplat_cuda.so"
fi
prebuilt="${PREBUILT_DIR:-.prebuilt}/gscache_native.so"
if [ -z "${GSCACHE_NATIVE_LIB:-}" ] && [ -f "$prebuilt" ]; then
  export GSCACHE_NATIVE_LIB="$PWD/$prebuilt"
  echo "native: prebuilt $GSCACHE_NATIVE_LIB"
fi
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
echo "=== train_gpu.sh $mode $* ($(date +%T)), revision ${GSCACHE_REVISION:-unknown}"
"$py" benchmarks/train_bench.py "$mode" --out-dir "$out" "$@"
rc=$?
if [ "${KEEP_NATIVE:-0}" = 1 ]; then
  so=$(ls -t "$GSCACHE_CACHE_DIR"/native/*/*.so 2>/dev/null | head -1)
  [ -n "$so" ] && cp "$so" "$out/gscache_native.so" && echo "copied $so to $out/gscache_native.so"
fi
echo "=== done rc=$rc ($(date +%T)); files in $out:"
ls -la "$out"
exit $rc
