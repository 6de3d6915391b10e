#!/usr/bin/env bash
# One batched GPU-machine session: build the extension, run the native tests, compute-sanitizer (memcheck and
# racecheck) on a fixture render, and a quick timing. Logs go to $OUT (or ./out_device). Usage:
#   bash cuda/tools/device_check.sh [bench sizes, default 100000,1000000]
set -uo pipefail
out="${OUT:-out_device}"
mkdir -p "$out"
export GSCACHE_CACHE_DIR="${GSCACHE_CACHE_DIR:-/tmp/gscache_cache}" PYTHONUNBUFFERED=1
sizes="${1:-100000,1000000}"
summary="$out/summary.txt"
: >"$summary"
step() {  # step NAME TIMEOUT CMD...
    local name="$1" limit="$2"
    shift 2
    local t0=$SECONDS
    timeout "$limit" "$@" >"$out/$name.log" 2>&1
    local rc=$?
    echo "$name rc=$rc ${SECONDS}s total, $((SECONDS - t0))s" | tee -a "$summary"
    tail -n 4 "$out/$name.log" | sed "s/^/  [$name] /" | tee -a "$summary"
}
nvidia-smi -L | tee -a "$summary"
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$summary"
step build 240 env GSCACHE_NATIVE_VERBOSE=1 python3 -c "from renderer.native import load_native; load_native(); print('built')"
step pytest 150 python3 -m pytest -q -p no:cacheprovider tests/test_native.py -k "not host_emulation" -rfs --maxfail=10
step memcheck 90 compute-sanitizer --tool memcheck --leak-check no --error-exitcode 3 python3 cuda/tools/native_smoke.py
step bench 90 python3 cuda/tools/bench_native.py --sizes "$sizes" --json "$out/bench.json"
step racecheck 90 compute-sanitizer --tool racecheck --error-exitcode 3 python3 cuda/tools/native_smoke.py
cat "$out/bench.log" >>"$summary"
