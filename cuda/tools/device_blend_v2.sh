#!/usr/bin/env bash
# One GPU-machine run for the blend-v2 change: carried wheels, gsplat's JIT build in the background while the native
# GPU tests run, then (only if they pass) the bench protocol and the training-step profile. Logs and JSON go to $OUT.
# Usage: bash cuda/tools/device_blend_v2.sh REVISION
set -uo pipefail
rev="$1"
out="${OUT:-out_device}"
mkdir -p "$out"
export TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=16 PYTHONUNBUFFERED=1
budget="${BUDGET_S:-322}"  # the whole script must end within this many seconds
t0=$SECONDS
left() { local s=$((budget - $1 - SECONDS + t0)); echo $((s > 5 ? s : 5)); }  # seconds left, keeping $1 spare
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD
(python3 -c "from gsplat.cuda._backend import _C; print('gsplat built', _C)" >"$out/gsplat_build.log" 2>&1) &
gpid=$!
python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_native.py >"$out/pytest.log" 2>&1
trc=$?
tail -5 "$out/pytest.log"
echo "pytest rc=$trc at $((SECONDS - t0))s"
wait "$gpid"
echo "gsplat build done at $((SECONDS - t0))s: $(tail -1 "$out/gsplat_build.log")"
if [ "$trc" -ne 0 ]; then
    echo "tests failed: no bench"
    exit 1
fi
timeout "$(left 45)" python3 -m gscache bench --scenes guitar playbot guitar-g8 guitar-g12 --paths orbit \
    --renderers native gsplat-unpacked gsplat-packed --data-dir .benchdata --out-dir "$out" \
    --what orbit-native-vs-gsplat-v2 --revision "$rev" --no-progress >"$out/bench.log" 2>&1
echo "bench rc=$? at $((SECONDS - t0))s"
tail -20 "$out/bench.log"
timeout "$(left 0)" python3 cuda/tools/profile_native.py --data-dir .benchdata --scenes "" --renderers native,gsplat-unpacked \
    --train --json "$out/train_guitar_sh3_1920x1080.json" >"$out/train.log" 2>&1
echo "train rc=$? at $((SECONDS - t0))s"
tail -4 "$out/train.log"
