for f in .gl/*.deb; do dpkg -x $f /; done; ldconfig; export __EGL_VENDOR_LIBRARY_FILENAMES=/usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json
# One GPU-machine run for issue 6's viewer target (the viewer's CUDA path within 10% of `gscache bench`): build the
# native extension, run the viewer's display-path tests (tests/test_viewer_interop.py: the GPU ones write known
# frames through CUDA-GL interop and through CUDA memory shared with GL into an EGL context on the CUDA GPU and read
# them back), split the display overhead (benchmarks/viewer_overhead.py), then measure the viewer's CUDA path against
# `gscache bench` (stereo 2064x2208 per eye, guitar, guitar-g4, guitar-g8). Needs the carried .gl/*.deb and
# .whl/*.whl. Writes to $OUT: summary.txt, pytest.log and the result JSONs + PNGs.
#   usage: bash benchmarks/viewer_interop_gpu.sh DATA_DIR     (DATA_DIR holds guitar.ply; GSCACHE_REVISION in env)
set -uo pipefail
data="${1:?usage: viewer_interop_gpu.sh DATA_DIR}"
out="${OUT:-out_device}"
mkdir -p "$out"
summary="$out/summary.txt"
: >"$summary"
t0=$SECONDS
budget="${BUDGET_S:-235}"  # the whole script ends within this many seconds
left() { local s=$((budget - $1 - SECONDS + t0)); echo $((s > 10 ? s : 10)); }  # seconds left, keeping $1 spare
cap() { local l; l=$(left "$2"); echo $((l < $1 ? l : $1)); }  # min(CAP, seconds left keeping SPARE)
log() { echo "$*" | tee -a "$summary"; }
export PYTHONUNBUFFERED=1 TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}" MAX_JOBS="${MAX_JOBS:-16}"
export GSCACHE_CACHE_DIR="${GSCACHE_CACHE_DIR:-/tmp/gscache_cache}"
timeout 40 python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    .whl/*.whl >/dev/null 2>&1 || log "pip install of the carried wheels failed"
export PYTHONPATH=/tmp/site:$PWD
rev="${GSCACHE_REVISION:-unknown}"
log "revision $rev; $(nvidia-smi -L 2>&1 | head -1)"
log "$(python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" 2>&1 | tail -1)"
log "$(timeout 30 python3 -c "
from viewer.gl_context import standalone_context
c = standalone_context('egl'); print('EGL:', c.info['GL_RENDERER'], c.info['GL_VERSION'])" 2>&1 | tail -1)"

step() {  # step NAME LIMIT_S CMD... : run with a hard timeout, log rc and the tail
    local name="$1" limit="$2" s=$SECONDS
    shift 2
    timeout "$limit" "$@" >"/tmp/$name.log" 2>&1
    local rc=$?
    log "== $name rc=$rc in $((SECONDS - s)) s (at $((SECONDS - t0)) s)"
    tail -n "${TAIL:-6}" "/tmp/$name.log" | sed "s/^/  [$name] /" | tee -a "$summary"
    return $rc
}

step build "$(cap 150 100)" python3 -c "from renderer.native import load_native; load_native(); print('native extension built')"
TAIL=12 step pytest "$(cap 150 60)" python3 -m pytest -q -p no:cacheprovider -rs tests/test_viewer_interop.py tests/test_frame_cache.py
cp /tmp/pytest.log "$out/pytest.log"
TAIL=34 step overhead "$(cap 200 150)" python3 benchmarks/viewer_overhead.py --scenes guitar guitar-g4 guitar-g8 \
    --data-dir "$data" --revision "$rev" --out-dir "$out"
TAIL=14 step vs_bench "$(left 8)" python3 benchmarks/viewer_gl_fps.py --vs-bench --scenes guitar guitar-g4 guitar-g8 \
    --width 2064 --height 2208 --data-dir "$data" --uploads auto --quality-frames 2 --revision "$rev" \
    --out-dir "$out" --what viewer-vs-bench-2064x2208
python3 - "$out" <<'EOF' 2>&1 | tee -a "$summary"
import json, pathlib, sys
for path in sorted(pathlib.Path(sys.argv[1]).glob("*viewer-vs-bench*.json")):
    for r in json.loads(path.read_text())["rows"]:
        extra = (f" = {r['fps_ratio_vs_bench']:.3f} x bench, upload {r['upload']} {r['upload_note']!r}, "
                 f"queued {r['queued_ms_median']:.3f} ms, PSNR {r['psnr_min']}") if "fps_ratio_vs_bench" in r else ""
        print(f"{r['scene']:10s} {r['renderer']:18s} {r['ms_median']:8.3f} ms {r['fps']:9.1f} FPS{extra}")
EOF
log "done in $((SECONDS - t0)) s"
