#!/usr/bin/env bash
# The project's one GPU check, for one H100/H200 with no network, in under 6 minutes (step limits sum to 530 s):
# install, GPU tests, kernel / top-k / end-to-end / serving benchmarks, then one summary table (printed
# last). Full figures go to RESULTS_DIR as JSON, with each step's log.
#
#   benchmarks/device_check.sh RESULTS_DIR
#
# Each step has its own time limit, so one that hangs cannot eat the others' time; a failing step is
# reported in the table and the rest still run. Nothing here changes the card's settings.
set -uo pipefail
OUT=${1:?usage: benchmarks/device_check.sh RESULTS_DIR}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
cd "$(dirname "$0")/.."
: > "$OUT/steps.txt"

step() {  # step NAME SECONDS COMMAND...: run with a time limit, log to $OUT/NAME.log, record rc and time
    local name=$1 limit=$2 start=$SECONDS rc
    shift 2
    echo "=== $name (limit ${limit}s): $*"
    timeout --kill-after=10 "$limit" "$@" > "$OUT/$name.log" 2>&1
    rc=$?
    echo "$name $rc $((SECONDS - start))" >> "$OUT/steps.txt"
    tail -n 25 "$OUT/$name.log"
    echo "--- $name: rc=$rc in $((SECONDS - start))s"
}

nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,clocks.max.mem,power.limit --format=csv > "$OUT/gpu.csv" 2>&1
cat "$OUT/gpu.csv"
python -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"

step install 90 python -m pip install --no-build-isolation --no-deps -e .
step gpu_tests 150 python -m pytest -q -p no:cacheprovider --junitxml="$OUT/gpu_tests.xml" \
    tests/test_gpu.py tests/test_kernel_attention.py tests/test_kernel_norms.py tests/test_topk_gpu.py
step kernels 45 python benchmarks/bench_kernels.py --json "$OUT/kernels.json"
step topk 45 python benchmarks/bench_topk.py --json "$OUT/topk.json"
step e2e 150 python benchmarks/bench_gpu.py --json "$OUT/e2e.json"
step serving 50 python benchmarks/bench_serving.py --preset 0.6B --device cuda --requests 128 --json "$OUT/serving.json"

python benchmarks/summarize.py "$OUT"
