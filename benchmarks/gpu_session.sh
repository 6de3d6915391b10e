#!/usr/bin/env bash
# One batched run on the GPU machine: GPU tests, then the benchmark protocol (BENCHMARK.md) with the gsplat peer in
# the same run, then the viewer's figures. Results go to $OUT (the device tool brings them back) or benchmarks/results.
#   usage: bash benchmarks/gpu_session.sh DATA_DIR   (DATA_DIR holds guitar.ply and playbot_lod3.ply)
set -uo pipefail
data="${1:?usage: gpu_session.sh DATA_DIR}"
out="${OUT:-benchmarks/results}"
export PYTHONUNBUFFERED=1 TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}" MAX_JOBS="${MAX_JOBS:-16}"
nvidia-smi -L
step() { echo "=== $* ($(date +%T))"; }

step "GPU tests"
python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_native.py tests/test_frame_cache.py tests/test_bench.py \
  tests/test_render_torch.py 2>&1 | tail -25

step "bench: orbit, native vs gsplat (issue 3)"
python3 -m gscache bench --revision "${GSCACHE_REVISION:-unknown}" --scenes guitar playbot guitar-g4 guitar-g8 guitar-g12 --paths orbit \
  --renderers native gsplat-unpacked gsplat-packed --data-dir "$data" --out-dir "$out" --what orbit-native-vs-gsplat \
  --no-progress

step "bench: head, frame cache (issue 4)"
python3 -m gscache bench --revision "${GSCACHE_REVISION:-unknown}" --scenes guitar-g8 guitar-g12 guitar-g8-sh3 --paths head orbit \
  --renderers native native-cache gsplat-unpacked gsplat-packed --data-dir "$data" --out-dir "$out" \
  --what head-orbit-native-cache --no-progress

step "bench: mono native, for the viewer's display overhead (issue 6)"
python3 -m gscache bench --revision "${GSCACHE_REVISION:-unknown}" --scenes guitar --paths orbit --renderers native --eyes 1 --data-dir "$data" \
  --out-dir "$out" --what guitar-mono-native --no-progress

step "viewer: GL splat renderer and CUDA path through EGL (issue 6)"
python3 benchmarks/viewer_gl_fps.py --scenes guitar guitar-g4 --data-dir "$data" --width 1920 --height 1080 \
  --out-dir "$out" --what viewer-gl-fps-1080p
python3 benchmarks/viewer_gl_fps.py --scenes guitar --sources native --data-dir "$data" --width 2064 --height 2208 \
  --quality-frames 0 --out-dir "$out" --what viewer-native-2064x2208
step "done"
