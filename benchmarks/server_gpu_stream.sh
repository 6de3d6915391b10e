#!/usr/bin/env bash
# Issue 7 on the GPU machine: the render server streaming stereo 2064x2208 JPEG frames of guitar-g8 along the `head`
# path, measured end to end over loopback by `python3 -m server.client` (frames/s received, motion-to-photon p50/p99,
# errors; 1 client, then 8 concurrent clients). Finishes in about 2-3 minutes with a cold native build.
#
#   DATA_DIR=.benchdata GSCACHE_REVISION=<sha> bash benchmarks/server_gpu_stream.sh
#
# Steps (each under a hard timeout; the whole call stays under 5 minutes):
#   1. wheels from .whl/ into /tmp/site when fastapi/uvicorn/websockets/tyro/plyfile do not import;
#   2. probe: torchvision's GPU JPEG (nvJPEG) on this machine, and its time for one 4128x2208 frame; then the `gpu`
#      tests of tests/test_server_stream.py (JPEG frames over /stream decode to the library's render; GPU_TESTS=0
#      skips them);
#   3. `gscache serve --bench-scene guitar-g8 --backend native --device cuda` on 127.0.0.1 (builds the native
#      extension on first use: 60-90 s, cached under build/ while the machine stays warm; a prebuilt
#      $PREBUILT_DIR/gscache_native.so or $GSCACHE_NATIVE_LIB skips it), waiting for /health;
#   4. the client: a 1-client closed-loop case (latency without queueing), then 1 and 8 clients sending head poses at
#      120 Hz -> $OUT/<date>-<gpu>-guitar-g8-head-stream.json + .png;
#   5. SIGINT to the server (graceful: streams closed with 1001, threads joined), then the same 1-client case with
#      --stream-pipeline-depth 1 (no render/encode overlap) for comparison -> ...-depth1.json + .png
#      (COMPARE_DEPTH1=0 skips it; it is also skipped when less than 80 s of the budget is left).
# $OUT gets the JSON and plots and one log (server_gpu_stream.log, with the servers' logs appended).
# Environment: DATA_DIR (holds guitar.ply; default .benchdata, else ../shared/data/playcanvas_splats), OUT (default
# benchmarks/results), GSCACHE_REVISION, RATE_HZ (120), POSES (480 per client), WARMUP (16), CLOSED_LOOP_POSES (120),
# CLIENTS ("1 8"), BUDGET_S (280), PYTHON (python3); for a dry run on a CPU machine: SCENE_ID (guitar-g8), BACKEND
# (native), DEVICE (cuda), WIDTH (2064), HEIGHT (2208).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
START=$(date +%s)
out="${OUT:-benchmarks/results}"
mkdir -p "$out"
log="$out/server_gpu_stream.log"
exec > >(tee -a "$log") 2>&1
tee_pid=$!
trap 'exec 1>&- 2>&-; wait "$tee_pid" 2>/dev/null' EXIT  # the log is complete before $OUT is collected
py="${PYTHON:-python3}"
data="${DATA_DIR:-.benchdata}"
[ -f "$data/guitar.ply" ] || data="../shared/data/playcanvas_splats"
revision="${GSCACHE_REVISION:-unknown}"
rate="${RATE_HZ:-120}"
poses="${POSES:-480}"
clients="${CLIENTS:-1 8}"
budget="${BUDGET_S:-280}"
warmup="${WARMUP:-16}"
closed="${CLOSED_LOOP_POSES:-120}"
scene="${SCENE_ID:-guitar-g8}"
backend="${BACKEND:-native}"
device="${DEVICE:-cuda}"
width="${WIDTH:-2064}"
height="${HEIGHT:-2208}"
export PYTHONUNBUFFERED=1 COLUMNS=160 MAX_JOBS="${MAX_JOBS:-16}"
export GSCACHE_CACHE_DIR="${GSCACHE_CACHE_DIR:-$PWD/build/gscache-cache}"
export TORCH_EXTENSIONS_DIR="${TORCH_EXTENSIONS_DIR:-$PWD/build/torch-extensions}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
step() { echo "=== $* ($(date +%T), $(( $(date +%s) - START )) s)"; }
left() { echo $(( budget - ($(date +%s) - START) )); }

step "server_gpu_stream.sh: revision $revision, data $data, out $out"
if ! "$py" -c "import fastapi, uvicorn, websockets, tyro, plyfile" 2>/dev/null; then
  timeout 120 "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    .whl/*.whl || { echo "wheel install failed"; exit 1; }
  export PYTHONPATH="/tmp/site:$PYTHONPATH"
fi
prebuilt="${PREBUILT_DIR:-.prebuilt}/gscache_native.so"
if [ -z "${GSCACHE_NATIVE_LIB:-}" ] && [ -f "$prebuilt" ]; then
  export GSCACHE_NATIVE_LIB="$PWD/$prebuilt"
  echo "native: prebuilt $GSCACHE_NATIVE_LIB"
fi
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader

step "probe: GPU JPEG (torchvision nvJPEG) of one stereo 4128x2208 frame"
timeout 90 "$py" - <<'EOF'
import time, torch, torchvision, torchvision.io as tvio
print(f"torch {torch.__version__}, torchvision {torchvision.__version__}, {torch.cuda.get_device_name()}")
g = torch.Generator(device="cuda").manual_seed(0)
smooth = torch.nn.functional.interpolate(torch.rand(1, 3, 138, 258, device="cuda", generator=g), size=(2208, 4128),
                                         mode="bilinear")[0]
img = (smooth * 255).to(torch.uint8).contiguous()
for _ in range(3):
    data = tvio.encode_jpeg(img, quality=90)
torch.cuda.synchronize()
times = []
for _ in range(20):
    t = time.perf_counter()
    data = tvio.encode_jpeg(img, quality=90).cpu()
    times.append((time.perf_counter() - t) * 1e3)
times.sort()
print(f"nvJPEG q90 4128x2208 (smooth test image): median {times[10]:.2f} ms, min {times[0]:.2f} ms, "
      f"{data.numel()} bytes")
EOF
[ $? -eq 0 ] || echo "WARNING: GPU JPEG probe failed: the server will fall back to simplejpeg on the CPU"

if [ "${GPU_TESTS:-1}" = 1 ]; then
  step "GPU tests of the stream path (nvJPEG on planar frames, render-thread stream; torch backend, no build)"
  timeout 150 "$py" -m pytest -q -p no:cacheprovider -m gpu tests/test_server_stream.py 2>&1 | tail -15
fi

port() { "$py" -c "import socket; s=socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])"; }

# serve DEPTH LOGFILE: start `gscache serve` in the background (pid in $server_pid), wait for /health
serve() {
  local depth="$1" slog="$2" limit
  limit=$(( $(left) > 20 ? $(left) : 20 ))
  PORT=$(port)
  URL="http://127.0.0.1:$PORT"
  timeout --foreground --signal=INT --kill-after=20 "$limit" "$py" -m gscache serve --bench-scene "$scene" \
    --data-dir "$data" --backend "$backend" --device "$device" --host 127.0.0.1 --port "$PORT" --max-streams 8 \
    --max-queued-renders 16 --stream-pipeline-depth "$depth" --log-level warning >"$slog" 2>&1 &
  server_pid=$!
  "$py" - "$URL" "$server_pid" "$(( limit > 200 ? 200 : limit ))" <<'EOF'
import json, os, sys, time, urllib.request
url, pid, limit = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
start = time.monotonic()
while time.monotonic() - start < limit:
    try:
        os.kill(pid, 0)
    except OSError:
        sys.exit("the server exited before it answered /health")
    try:
        with urllib.request.urlopen(url + "/health", timeout=2) as r:
            print(f"up after {time.monotonic() - start:.1f} s: {json.load(r)}")
            sys.exit(0)
    except OSError:
        time.sleep(0.5)
sys.exit(f"no /health answer within {limit:.0f} s")
EOF
}

# stop LOGFILE: SIGINT (graceful), wait up to 30 s, then kill; append the server's log. `timeout --foreground` passes
# the SIGINT to the server once (without --foreground it also signals its process group: a second SIGINT, which
# uvicorn takes as "force exit" and skips the graceful shutdown)
stop() {
  local slog="$1" i child
  kill -INT "$server_pid" 2>/dev/null
  for i in $(seq 60); do kill -0 "$server_pid" 2>/dev/null || break; sleep 0.5; done
  if kill -0 "$server_pid" 2>/dev/null; then
    echo "server did not stop in 30 s: killing it"
    child=$(ps -o pid= --ppid "$server_pid" 2>/dev/null | tr -d ' ')
    [ -n "$child" ] && kill -KILL "$child" 2>/dev/null
    kill -KILL "$server_pid" 2>/dev/null
  fi
  wait "$server_pid"; echo "server exit status $? (130: graceful after SIGINT)"
  echo "--- server log ($slog)"; tail -n 60 "$slog"; echo "--- end of server log"
}

rc=0
slog=$(mktemp /tmp/gscache-serve.XXXXXX.log)
step "serve $scene ($backend on $device; pipeline depth 2)"
if serve 2 "$slog"; then
  step "client: closed loop, then ${clients} client(s) at ${rate} Hz, ${poses} head poses each"
  # shellcheck disable=SC2086
  timeout --kill-after=10 "$(( $(left) > 150 ? 150 : ($(left) > 20 ? $(left) : 20) ))" "$py" -m server.client \
    --server "$URL" --clients $clients --closed-loop-poses "$closed" --rate-hz "$rate" --poses "$poses" \
    --warmup "$warmup" --path head --width "$width" --height "$height" --format jpeg --quality 90 --timeout-s 20 \
    --out-dir "$out" --what "$scene-head-stream" --revision "$revision"
  rc=$?
  echo "client exit status $rc (1: some client counted errors)"
else
  echo "server did not come up"; rc=2
fi
stop "$slog"

if [ "${COMPARE_DEPTH1:-1}" = 1 ] && [ "$(left)" -gt 80 ]; then
  slog1=$(mktemp /tmp/gscache-serve.XXXXXX.log)
  step "serve again with --stream-pipeline-depth 1 (render, encode and send one after another)"
  if serve 1 "$slog1"; then
    timeout --kill-after=10 "$(( $(left) > 60 ? 60 : $(left) ))" "$py" -m server.client --server "$URL" \
      --clients 1 --rate-hz "$rate" --poses "$poses" --warmup "$warmup" --path head --width "$width" \
      --height "$height" --format jpeg --quality 90 --timeout-s 20 --out-dir "$out" \
      --what "$scene-head-stream-depth1" --revision "$revision"
    echo "client exit status $?"
  fi
  stop "$slog1"
fi
step "done (rc $rc); files in $out:"
ls -la "$out"
exit $rc
