#!/usr/bin/env bash
# The project's one GPU check, for one H100/H200 without network (python3, torch, triton, nvcc present):
#
#   benchmarks/device_check.sh [--tier smoke|bench|all] OUT_DIR          (default: all)
#
# Every tier first installs the project (`pip install -e .`, which builds qrerank._topk with nvcc found
# through CUDA_HOME or PATH; the step fails loudly when the extension does not import), after installing
# the wheels of .whl/ (benchmarks/download_gpu_wheels.sh) into the scratch directory when that folder is
# present. Step limits in seconds, sized for a fresh machine (first Triton compiles included):
#   every tier   wheels 10 (when .whl/ is present), install 80 (nvcc alone took 25 s on 2 cores)
#   smoke        gpu_tests 95: every GPU test, pytest -n 4; parity 35: bf16 end to end at the 0.6B shape
#   bench        kernels 25, topk 25, e2e 70 (0.6B, --quick), serving 70
# all: 410 s of limits (under 7 minutes); smoke alone 220 s, bench alone 280 s. A step that fails or runs
# out of time is reported and the next one runs; the benchmarks write their JSON as they go, and pytest
# stopped at its limit still writes its junit report.
#
# Work happens in a scratch directory (kept, its path printed); OUT_DIR receives exactly three files:
# summary.md (the table, also printed last), summary.json (steps, tests, figures, every benchmark's JSON)
# and device_check.tar.gz (every log, JSON and junit report). Nothing here changes the card's settings.
# For a machine without network: run benchmarks/download_gpu_wheels.sh where pip works, bring .whl/ along
# (it is git-ignored), and give the whole command about 8 minutes (410 s of steps, install and setup).
set -uo pipefail

tier=all
if [[ ${1:-} == --tier ]]; then
    tier=${2:-}
    shift 2 || true
fi
if [[ ! $tier =~ ^(smoke|bench|all)$ || $# -ne 1 ]]; then
    echo "usage: benchmarks/device_check.sh [--tier smoke|bench|all] OUT_DIR" >&2
    exit 2
fi
mkdir -p "$1" && OUT=$(cd "$1" && pwd) || exit 2
cd "$(dirname "$0")/.." || exit 2
SCRATCH=$(mktemp -d "${TMPDIR:-/tmp}/qrerank-device-check.XXXXXX") || exit 2
export PY=python3 PYTHONUNBUFFERED=1 SCRATCH
printf '' > "$SCRATCH/steps.tsv"
echo "device_check: tier $tier, scratch $SCRATCH, results to $OUT"

record() {  # record NAME RC SECONDS LIMIT DETAIL: one line of steps.tsv
    printf '%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "${5//$'\t'/ }" >> "$SCRATCH/steps.tsv"
}

step() {  # step NAME SECONDS SIGNAL COMMAND...: run with a time limit, log to NAME.log, record rc and time
    local name=$1 limit=$2 signal=$3 start=$SECONDS rc detail=""
    shift 3
    echo "=== $name (limit ${limit}s): $*"
    timeout --signal="$signal" --kill-after=15 "$limit" "$@" > "$SCRATCH/$name.log" 2>&1
    rc=$?
    # the last line a failing step printed is its reason, as far as one line can say
    [[ $rc -ne 0 ]] && detail=$(grep -v '^\s*$' "$SCRATCH/$name.log" | tail -n 1 | cut -c 1-200)
    record "$name" "$rc" "$((SECONDS - start))" "$limit" "$detail"
    tail -n 25 "$SCRATCH/$name.log"
    echo "--- $name: rc=$rc in $((SECONDS - start))s"
}

install_wheels() {  # the .whl/ folder into $SCRATCH/site (first on PYTHONPATH for every later step)
    "$PY" -m pip install --quiet --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$SCRATCH/site" .whl/*.whl
}
export -f install_wheels

install_project() {
    if [[ -n ${CUDA_HOME:-} && -x $CUDA_HOME/bin/nvcc ]]; then
        echo "nvcc: $CUDA_HOME/bin/nvcc (CUDA_HOME)"
    elif command -v nvcc > /dev/null; then
        echo "nvcc: $(command -v nvcc) (PATH)"
    else
        echo "FAILED: no nvcc (CUDA_HOME=${CUDA_HOME:-unset}, none on PATH): qrerank._topk cannot be built"
        return 1
    fi
    local setuptools
    setuptools=$("$PY" -c "import setuptools; print(setuptools.__version__, setuptools.__file__)" 2>&1)
    echo "setuptools: $setuptools"
    if ! "$PY" -m pip install --no-index --no-build-isolation --no-deps -e .; then  # offline: nothing to fetch
        echo "FAILED: pip install -e . (setuptools ${setuptools%% *}; pyproject.toml's license string needs >= 77)"
        return 1
    fi
    if ! "$PY" -c "import qrerank._topk"; then
        echo "FAILED: qrerank._topk does not import after the install: the CUDA top-k extension was not built"
        return 1
    fi
    echo "qrerank._topk imports"
}
export -f install_project

serving_missing() {  # the modules `qrerank serve` and bench_serving.py need that are not installed
    "$PY" - << 'EOF'
import importlib.util

try:  # what `qrerank serve` imports
    import qrerank.serving.app, qrerank.serving.server  # noqa: F401, E401
except ModuleNotFoundError as error:
    print(error.name)
else:
    print(" ".join(name for name in ("prometheus_client",) if importlib.util.find_spec(name) is None))
EOF
}

# The machine's facts, before anything can fail
if [[ -z ${CUDA_HOME:-} ]] && ! command -v nvcc > /dev/null && [[ -x /usr/local/cuda/bin/nvcc ]]; then
    export CUDA_HOME=/usr/local/cuda
fi
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,clocks.max.mem,power.limit,driver_version --format=csv \
    > "$SCRATCH/gpu.csv" 2>&1
cat "$SCRATCH/gpu.csv"
if [[ -d .whl ]] && compgen -G '.whl/*.whl' > /dev/null; then
    step wheels 10 TERM bash -c install_wheels
    export PYTHONPATH="$SCRATCH/site${PYTHONPATH:+:$PYTHONPATH}"
else
    record wheels skipped 0 0 "no .whl/ folder (benchmarks/download_gpu_wheels.sh)"
fi
{
    date -u '+%Y-%m-%d %H:%M UTC'
    "$PY" -c "import sys, torch, triton; print('python', sys.version.split()[0], '| torch', torch.__version__, \
'cuda', torch.version.cuda, '| triton', triton.__version__, '| cuda available', torch.cuda.is_available())"
    "$PY" -m pip list 2> /dev/null | grep -Ei '^(transformers|sentence-transformers|numpy|setuptools|pytest-xdist) '
    "${CUDA_HOME:+$CUDA_HOME/bin/}nvcc" --version 2>&1 | tail -n 2
} > "$SCRATCH/environment.txt" 2>&1
cat "$SCRATCH/environment.txt"

step install 80 TERM bash -c install_project
if [[ $tier != bench ]]; then
    # SIGINT: pytest stops like on Ctrl-C and still writes the junit report of the tests that ran
    step gpu_tests 95 INT "$PY" -m pytest -q -n 4 -p no:cacheprovider --junitxml="$SCRATCH/gpu_tests.xml" \
        tests/test_gpu.py tests/test_kernel_attention.py tests/test_kernel_norms.py tests/test_topk_gpu.py
    step parity 35 TERM "$PY" benchmarks/parity_gpu.py --json "$SCRATCH/parity.json" \
        --checkpoints "$SCRATCH/checkpoints"
fi
if [[ $tier != smoke ]]; then
    step kernels 25 TERM "$PY" benchmarks/bench_kernels.py --json "$SCRATCH/kernels.json"
    step topk 25 TERM "$PY" benchmarks/bench_topk.py --json "$SCRATCH/topk.json"
    step e2e 70 TERM "$PY" benchmarks/bench_gpu.py --quick --json "$SCRATCH/e2e.json" \
        --checkpoints "$SCRATCH/checkpoints"
    missing=$(serving_missing)
    if [[ -n $missing ]]; then
        record serving skipped 0 70 "${missing// /, } not installed (.whl/: benchmarks/download_gpu_wheels.sh)"
        echo "=== serving skipped: $missing not installed"
    else
        step serving 70 TERM "$PY" benchmarks/bench_serving.py --preset 0.6B --device cuda --requests 128 \
            --json "$SCRATCH/serving.json"
    fi
fi

"$PY" benchmarks/summarize.py "$SCRATCH" > "$SCRATCH/summary.log" 2>&1 || cat "$SCRATCH/summary.log"
cp "$SCRATCH/summary.md" "$SCRATCH/summary.json" "$OUT/" 2> /dev/null
(cd "$SCRATCH" && tar -czf "$OUT/device_check.tar.gz" --exclude=./site --exclude=./checkpoints .)
echo
cat "$OUT/summary.md" 2> /dev/null || echo "no summary: see $SCRATCH/summary.log"
