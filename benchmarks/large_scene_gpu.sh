#!/usr/bin/env bash
# Issue 9 on the GPU machine in one call: guitar-g24 then guitar-g34 streamed under a 4 GiB budget
# (benchmarks/large_scene.py), gsplat and the native renderer with the whole scene resident in the same run.
#
#   usage: bash benchmarks/large_scene_gpu.sh DATA_DIR        (repo root as cwd; DATA_DIR holds guitar.ply)
#
# Assumes the wheels (tyro, plyfile, gsplat, ...) are installed and PYTHONPATH=/tmp/site:$PWD.
# Steps: the native and gsplat JIT builds start in the background while the chunk files of both scenes are built
# (on the GPU) into $CHUNK_DIR on local disk; then one benchmark process per scene (each writes its JSON after every
# row, so a step cut by its timeout keeps what it measured); then the two results are merged into one JSON + plot.
# Every step has a hard timeout, the whole run a deadline ($LARGE_SCENE_DEADLINE_S seconds, default 470).
# Results: $OUT (default benchmarks/results): <date>-<gpu>-large-scene-guitar-g24.json, ...-guitar-g34.json, the merged
# ...-large-scene.json with its .png (or .svg without matplotlib), and large-scene-gpu.log.
# Env: GSCACHE_REVISION (recorded; no .git here), LARGE_SCENE_BUDGET_MIB (4096), CHUNK_DIR (/tmp/gscache-chunks),
# LARGE_SCENE_A / LARGE_SCENE_B (the two scenes, guitar-g24 / guitar-g34), LARGE_SCENE_ARGS (more arguments to every
# benchmark step, e.g. "--device cpu --renderer torch --width 64 --height 48 --peers torch" for a dry run on a CPU).
set -uo pipefail
data="${1:?usage: bash benchmarks/large_scene_gpu.sh DATA_DIR}"
out="${OUT:-benchmarks/results}"
mkdir -p "$out"
deadline="${LARGE_SCENE_DEADLINE_S:-470}"
budget="${LARGE_SCENE_BUDGET_MIB:-4096}"
chunks="${CHUNK_DIR:-/tmp/gscache-chunks}"
rev="${GSCACHE_REVISION:-unknown}"
scene_a="${LARGE_SCENE_A:-guitar-g24}"
scene_b="${LARGE_SCENE_B:-guitar-g34}"
what_a="large-scene-$(basename "$scene_a" | tr -c 'a-zA-Z0-9\n' '-')"
what_b="large-scene-$(basename "$scene_b" | tr -c 'a-zA-Z0-9\n' '-')"
read -r -a more <<< "${LARGE_SCENE_ARGS:-}"
export PYTHONUNBUFFERED=1 TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}" MAX_JOBS="${MAX_JOBS:-12}"
case ":${PYTHONPATH:-}:" in *":$PWD:"*) ;; *) export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD" ;; esac

step() { echo "=== $* (t=${SECONDS}s, $(date +%T))"; }
# seconds for a step: at most $1, and at most what is left before the deadline minus a reserve $2 for later steps
limit() {
  local left=$((deadline - SECONDS - ${2:-0}))
  ((left < 5)) && left=5
  ((left < $1)) && echo "$left" || echo "$1"
}

write_warmup() {  # a tiny render with one backend: builds its extension (JIT) if needed
  cat > /tmp/gscache-jit-warmup.py <<'EOF'
import sys, time, torch
from renderer import Camera, Splats, intrinsics_from_fov, look_at, render
t = time.perf_counter()
cam = Camera(look_at((0.0, 0.0, -3.0), (0.0, 0.0, 0.0), (0.0, -1.0, 0.0)), intrinsics_from_fov(64, 48, 60.0), 64, 48)
render(Splats.random(1000, device="cuda"), cam, backend=sys.argv[1])
torch.cuda.synchronize()
print(f"{sys.argv[1]} built and ran in {time.perf_counter() - t:.1f} s")
EOF
}

bench() {  # bench SCENE WHAT TIMEOUT [extra args...]
  local scene="$1" what="$2" secs="$3"
  shift 3
  timeout -k 10 "$secs" python3 benchmarks/large_scene.py --scenes "$scene" --gpu-budget-mib "$budget" \
    --data-dir "$data" --chunk-dir "$chunks" --out-dir "$out" --what "$what" --revision "$rev" --no-plot \
    --time-limit-s $((secs - 45)) --row-time-limit-s 45 ${more[@]+"${more[@]}"} "$@"
  echo "rc=$? ($scene)"
}

main() {
  step "machine"
  nvidia-smi -L
  echo "cpus $(nproc); $(free -g | awk '/Mem:/ {print $2 " GiB RAM"}'); /tmp: $(df -h /tmp | awk 'NR==2 {print $4}') free"
  python3 -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__)"

  step "JIT builds in the background (native, gsplat)"
  write_warmup
  timeout -k 5 "$(limit 300 150)" python3 /tmp/gscache-jit-warmup.py native > /tmp/jit-native.log 2>&1 &
  local pid_native=$!
  timeout -k 5 "$(limit 300 150)" python3 /tmp/gscache-jit-warmup.py gsplat > /tmp/jit-gsplat.log 2>&1 &
  local pid_gsplat=$!

  step "chunk files of $scene_a and $scene_b into $chunks (built on the GPU)"
  timeout -k 10 "$(limit 200 240)" python3 benchmarks/large_scene.py --prepare-only --scenes "$scene_a" "$scene_b" \
    --data-dir "$data" --chunk-dir "$chunks" --out-dir /tmp/gscache-prepare --revision "$rev" --no-plot ${more[@]+"${more[@]}"}
  echo "rc=$? (prepare)"
  python3 -c "import json, glob; [print(json.dumps(json.load(open(p))['timings'])) for p in glob.glob('/tmp/gscache-prepare/*.json')]"
  ls -la "$chunks" 2>/dev/null

  step "waiting for the JIT builds"
  wait "$pid_native"; echo "native rc=$?"; tail -3 /tmp/jit-native.log
  wait "$pid_gsplat"; echo "gsplat rc=$?"; tail -3 /tmp/jit-gsplat.log

  step "GPU tests of the streaming renderer (small scenes: async copies, slabs, budget)"
  if python3 -c "import pytest" 2>/dev/null; then
    timeout -k 5 "$(limit 90 300)" python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_large_scene.py 2>&1 | tail -15
  else
    echo "pytest is not installed: skipped"
  fi

  step "$scene_a: streaming LOD off/on (232 timed poses), native + gsplat whole scene (96 poses)"
  bench "$scene_a" "$what_a" "$(limit 200 150)" --lod-modes off on

  step "$scene_b: streaming LOD on/off, native + gsplat whole scene (96 poses each)"
  bench "$scene_b" "$what_b" "$(limit 260 15)" --lod-modes on off --timed-frames "${LARGE_SCENE_B_FRAMES:-96}"

  step "merge and plot"
  local parts=("$out"/*-"$what_a".json "$out"/*-"$what_b".json)
  timeout -k 5 "$(limit 60)" python3 benchmarks/large_scene.py --merge "${parts[@]}" --out-dir "$out" \
    --what large-scene
  echo "rc=$? (merge)"
  ls -la "$out"
  step "done"
}

main 2>&1 | tee -a "$out/large-scene-gpu.log"
