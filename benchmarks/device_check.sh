#!/usr/bin/env bash
# The GPU check in three stages, each one call of the device tool that fits a 15-minute lease beside the others, each
# useful alone, each writing its own files into OUT, named <what>-<gpu>-<date>-<commit>.<ext> (at most 8 files: the
# tool brings back no more):
#
#   stage1  build, then the GPU tests of the kernels that have never run (the fused LSTM, the flash, gemm and
#           gemm3xtf32 plans, the CUDA-graph step, the tile boundaries), then the rest of the GPU suite.
#           Files: stage1 log, pytest-new and pytest-rest logs.
#   stage2  compute-sanitizer memcheck, racecheck and synccheck over benchmarks/device_workloads.py's small workload
#           through every kernel family (tails, padded LSTM units, TF32 on and off). Files: stage2 log, sanitizer log.
#   stage3  measurement, most wanted first: the fused LSTM against cuDNN, the attention sweep with each plan forced,
#           the peers on the same shapes, the model's training step and its scaling, Nsight Compute over every kernel
#           family, then the report. Files: stage3 log, the summary, the Nsight Compute report and its details as
#           CSV, and one .tar.gz of the result JSONs and plots.
#
#   benchmarks/device_check.sh STAGE [OUT]     (OUT defaults to ./device-check-out)
#
# Environment: BUDGET_S (default 285) seconds for the whole stage: run it with the device tool's timeout_s 15 s
# above that; LSTM_ATTN_GIT_COMMIT, the commit the file names carry (the device's copy of the tree has no .git);
# PYTHON (default python3); MAX_JOBS (default: the machine's cores); PARTS: which of the stage's parts to run, comma-
# separated (default all; stage 1: pytest-new, pytest-rest; stage 2: memcheck, racecheck, synccheck; stage 3: lstm,
# plans, peers, model, scaling, ncu), so that a later call can run what a stage left out; DRY_RUN=1: the plumbing of a
# stage without a GPU (tests/test_device_check.py runs it): the file names, the imports, the workloads' and the
# sweeps' arguments, the test selection, the report over fake rows, and the time budget below.
#
# Time. Each step runs under `timeout`, for at most its cap and never into the minimum that the steps after it need
# (PARTS_OF_STAGE below: name, minimum, cap in seconds); a step that fails or runs out of time is reported and the
# next one runs. Steps marked warm-only are skipped when a cold build leaves them too little. A stage on a machine
# without this source's build (a fresh machine, or a changed csrc/) builds first; a warm machine's build from an
# earlier stage is kept (its stamp in .cache/device-build). DRY_RUN checks that a stage fits BUDGET_S in the worst
# case, a cold build (COLD_BUILD_S below) and every other step at its minimum, and that a warm stage gives every step
# its minimum. The exit status is 0 only if every step that ran passed.
set -uo pipefail

SELF="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$(basename "${BASH_SOURCE[0]}")"
REPO="$(dirname "$(dirname "$SELF")")"
PY="${PYTHON:-python3}"
STAGE="${1:-}"
case "$STAGE" in
stage1 | stage2 | stage3) ;;
*)
    echo "usage: $0 stage1|stage2|stage3 [OUT]" >&2
    exit 2 ;;
esac
OUT="${2:-${OUT:-$PWD/device-check-out}}"
mkdir -p "$OUT" || { echo "cannot create the output folder $OUT"; exit 2; }
OUT="$(cd "$OUT" && pwd)"
BUDGET_S="${BUDGET_S:-285}"
DRY_RUN="${DRY_RUN:-0}"
cd "$REPO" || exit 2

# A cold build on the lent machine's 16 cores, from the compile times of its 34 translation units measured one at a
# time here (benchmarks/results/build-times-2026-12-06-bf6ab98.md): 516 s of CPU in all, the longest unit 51 s
# (softmax_pool.cu); 16 jobs in ninja's order finish in 70 s, setup.py's start and the link took 3 s: 73 s expected,
# 120 s allowed for a slower machine. Stage 2's trimmed build (head dims 64 and 128, 25 units): 64 s expected, 100 s
# allowed.
COLD_BUILD_S=120
COLD_TRIMMED_BUILD_S=100
SETUP_S=20  # the stage's own start (GPU and version lines, the slug) and its packing at the end

# Each stage's parts, in the order they run: name:minimum:cap[:warm-only], in seconds. Before them the build (its
# minimum is its cold time), after them stage 3's report.
case "$STAGE" in
stage1) BUILD_S=$COLD_BUILD_S PARTS_OF_STAGE=(pytest-new:60:150 pytest-rest:60:200) ;;
stage2) BUILD_S=$COLD_TRIMMED_BUILD_S PARTS_OF_STAGE=(memcheck:40:90 racecheck:40:90 synccheck:30:60) ;;
stage3) BUILD_S=$COLD_BUILD_S
    PARTS_OF_STAGE=(lstm:25:45 plans:60:120 peers:40:90:warm-only model:20:40 scaling:10:25 ncu:40:80:warm-only) ;;
esac
NAMES=$(printf '%s,' "${PARTS_OF_STAGE[@]%%:*}")
PARTS="${PARTS:-${NAMES%,}}"
for part in ${PARTS//,/ }; do
    [[ ",$NAMES" == *",$part,"* ]] || { echo "PARTS: $STAGE has no part '$part'; its parts: ${NAMES%,}" >&2; exit 2; }
done
# Whether part $1 is to run.
wanted() { [[ ",$PARTS," == *",$1,"* ]]; }
STEPS=("build:$BUILD_S:200")
for part in "${PARTS_OF_STAGE[@]}"; do
    wanted "${part%%:*}" && STEPS+=("$part")
done
[ "$STAGE" = stage3 ] && STEPS+=("report:15:30")

field() { local IFS=:; read -r -a f <<<"$1"; echo "${f[$2]:-}"; }
step_index() {
    local i
    for i in "${!STEPS[@]}"; do [ "$(field "${STEPS[$i]}" 0)" = "$1" ] && { echo "$i"; return; }; done
    echo "no step $1 in stage $STAGE" >&2
    exit 2
}
# The seconds that the steps after step $1 need at least (their minimums; warm-only ones too when $2 is "warm").
reserve_after() {
    local i sum=0
    for ((i = $1 + 1; i < ${#STEPS[@]}; i++)); do
        [ "$(field "${STEPS[$i]}" 3)" = warm-only ] && [ "$2" != warm ] && continue
        sum=$((sum + $(field "${STEPS[$i]}" 1)))
    done
    echo "$sum"
}

# The worst cases: a cold build, then every step at its minimum (warm-only steps left out), must fit; and on a warm
# machine (the build a few seconds) every step must get its minimum.
check_budget() {
    local cold=$SETUP_S warm=$((SETUP_S + 10)) s ok=0
    for s in "${STEPS[@]}"; do
        [ "$(field "$s" 0)" = build ] && continue
        warm=$((warm + $(field "$s" 1)))
        [ "$(field "$s" 3)" = warm-only ] || cold=$((cold + $(field "$s" 1)))
    done
    cold=$((cold + $(field "${STEPS[0]}" 1)))
    echo "== time budget of $STAGE: ${BUDGET_S}s; a cold machine (its build allowed $(field "${STEPS[0]}" 1)s) needs" \
        "${cold}s of minimums, a warm one ${warm}s"
    ((cold <= BUDGET_S)) || { echo "   the cold worst case does not fit BUDGET_S=$BUDGET_S"; ok=1; }
    ((warm <= BUDGET_S)) || { echo "   a warm machine cannot give every step its minimum in BUDGET_S=$BUDGET_S"; ok=1; }
    return $ok
}

RESULTS=()
FAILED=0
COLD=0  # set once this stage had to build: warm-only steps may then be left out

# The seconds step $1 may run: its cap, less whatever the steps after it need at least, and the packing at the end.
limit_for() {
    local i mode=warm limit cap
    i=$(step_index "$1")
    ((COLD)) && mode=cold
    limit=$((BUDGET_S - SECONDS - SETUP_S / 2 - $(reserve_after "$i" "$mode")))
    cap=$(field "${STEPS[$i]}" 2)
    echo $((limit < cap ? limit : cap))
}

# step NAME LOG CMD...: run CMD under `timeout` for limit_for NAME seconds; LOG is a file in OUT that gets the step's
# output too ("-" for none). In DRY_RUN, CMD is what the dry run does for the step.
step() {
    local name="$1" log="$2"
    shift 2
    local i min limit
    i=$(step_index "$name")
    min=$(field "${STEPS[$i]}" 1)
    limit=$(limit_for "$name")
    if [ "$(field "${STEPS[$i]}" 3)" = warm-only ] && ((limit < min)); then
        echo "== $name: skipped: after the cold build, the budget leaves it ${limit}s of the ${min}s it needs"
        RESULTS+=("$name: SKIPPED (needs a warm machine: run this stage again at once with PARTS=$name)")
        return 0
    fi
    if ((limit < 10)); then
        echo "== $name: skipped, the time budget is spent"
        RESULTS+=("$name: SKIPPED (time budget spent)")
        FAILED=1
        return 1
    fi
    echo "== [${SECONDS}s] $name (limit ${limit}s)"
    local start=$SECONDS rc
    if [ "$log" = "-" ]; then
        timeout --signal=INT --kill-after=10 "$limit" "$@"
        rc=$?
    else
        timeout --signal=INT --kill-after=10 "$limit" "$@" 2>&1 | tee -a "$OUT/$log"
        rc=${PIPESTATUS[0]}
    fi
    local took=$((SECONDS - start))
    if ((rc == 0)); then
        RESULTS+=("$name: ok (${took}s)")
    elif ((rc == 124 || rc == 137)); then
        RESULTS+=("$name: TIMED OUT after ${took}s")
        FAILED=1
    else
        RESULTS+=("$name: FAILED with status $rc (${took}s)")
        FAILED=1
    fi
    return "$rc"
}

export PYTHONUNBUFFERED=1 PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
# Each Triton config compiles in seconds; benchmarking every config of every kernel for every shape would take most
# of a stage, so a check uses each table's first (Hopper default) config. The results record it.
export LSTM_ATTN_TRITON_AUTOTUNE="${LSTM_ATTN_TRITON_AUTOTUNE:-0}"
COMMIT="${LSTM_ATTN_GIT_COMMIT:-$(git -C "$REPO" rev-parse --short=7 HEAD 2>/dev/null || echo nocommit)}"
export LSTM_ATTN_GIT_COMMIT="$COMMIT"
if ((DRY_RUN)); then
    DEVICE=cpu
    BUDGET_LINE=$(check_budget) || { echo "$BUDGET_LINE"; exit 1; }
else
    DEVICE=cuda
fi
# One Python start for the stage's facts: the device as a file-name slug ("none" where the GPU is missing), the
# torch version (part of the build's stamp) and the versions line.
FACTS=$("$PY" - "$DEVICE" <<'PY'
import sys

import torch

from lstm_attn.bench.env import device_slug

try:
    import triton
    triton_version = triton.__version__
except ImportError:
    triton_version = "not importable"
device = sys.argv[1]
print(device_slug(device) if device == "cpu" or torch.cuda.is_available() else "none", torch.__version__)
print(f"python {sys.version.split()[0]} | torch {torch.__version__} | CUDA {torch.version.cuda} | "
      f"triton {triton_version}")
PY
)
read -r SLUG TORCH_VERSION <<<"${FACTS%%$'\n'*}"
TAG="${SLUG:-unknown}-$(date -u +%Y-%m-%d)-${COMMIT:0:7}"
exec > >(tee -a "$OUT/$STAGE-$TAG.log") 2>&1
TEE_PID=$!

echo "== device_check.sh $STAGE in $REPO, output in $OUT, budget ${BUDGET_S}s, $(date -u +%Y-%m-%dT%H:%M:%SZ)"
echo "${FACTS#*$'\n'}"
if ((DRY_RUN)); then
    echo "== DRY_RUN: the plumbing only; nothing runs on a GPU"
    echo "$BUDGET_LINE"
elif [ "$SLUG" = none ]; then
    echo "== no CUDA GPU is visible to torch: the stages need one (DRY_RUN=1 runs their plumbing without)"
    exit 2
else
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm \
        --format=csv
fi

# --- build ---------------------------------------------------------------------------------------------------------

BUILD_DIR="$REPO/.cache/device-build"
# Stage 2 needs only the head dims of its workload, which a fresh machine builds faster.
if [ "$STAGE" = stage2 ]; then HEAD_DIMS=64,128; else HEAD_DIMS=all; fi
# What a build is of: the sources, the build script, the torch it compiles against, the head dims.
source_stamp() {
    {
        find csrc -type f | LC_ALL=C sort | xargs sha256sum
        sha256sum setup.py
        echo "torch $TORCH_VERSION"
    } | sha256sum | cut -c1-16
}
# Whether the build in place is of this source, with at least the head dims this stage needs.
build_current() {
    local stamp dims
    [ -f "$BUILD_DIR/stamp" ] && ls lstm_attn/_C*.so >/dev/null 2>&1 || return 1
    read -r stamp dims <"$BUILD_DIR/stamp"
    [ "$stamp" = "$(source_stamp)" ] && { [ "$dims" = all ] || [ "$dims" = "$HEAD_DIMS" ]; }
}
build() {
    trap 'exit 130' INT
    local dims=()
    [ "$HEAD_DIMS" = all ] || dims=(LSTM_ATTN_HEAD_DIMS="$HEAD_DIMS")
    # In place, with a build folder that outlives the call: a warm machine recompiles only what changed. No pip:
    # its editable install builds in a fresh folder every time. lstm_attn.kernels is the kernels/ folder
    # (pyproject.toml's package-dir), made importable from the tree by a link.
    env "${dims[@]}" LSTM_ATTN_CUDA=1 TORCH_CUDA_ARCH_LIST="$ARCH" MAX_JOBS="${MAX_JOBS:-$(nproc)}" \
        "$PY" setup.py -q build_ext --inplace --build-temp "$BUILD_DIR/tmp" || return 1
    ln -sfn ../kernels lstm_attn/kernels
    echo "$(source_stamp) $HEAD_DIMS" >"$BUILD_DIR/stamp"
}
mkdir -p "$BUILD_DIR"
export -f build source_stamp
export BUILD_DIR HEAD_DIMS PY TORCH_VERSION
BUILD_FAILED=0
if ((DRY_RUN)); then
    step build - bash -c 'echo "build: would build in place, head dims $HEAD_DIMS, source stamp $(source_stamp)"'
elif build_current; then
    echo "== build: this source's build is in place (stamp $(cut -d' ' -f1 "$BUILD_DIR/stamp")); kept"
    ln -sfn ../kernels lstm_attn/kernels
    RESULTS+=("build: kept (warm machine)")
else
    COLD=1
    ARCH="${TORCH_CUDA_ARCH_LIST:-$("$PY" -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())")}"
    export ARCH
    step build - bash -c build || { echo "the build failed: nothing else can run"; BUILD_FAILED=1; }
fi
if ((!DRY_RUN && !BUILD_FAILED)); then
    "$PY" -c "import lstm_attn; print({k: repr(v) for k, v in lstm_attn.available_backends('cuda').items()})"
fi

# --- the stages ----------------------------------------------------------------------------------------------------

# Stage 1's two test selections: the files of the kernels that have never run, less the tiled plan's parity rows
# (it has run); then every other GPU test. DRY_RUN checks that together they are the GPU suite, once each.
NEW_FILES=(tests/test_lstm.py tests/test_cuda_graph.py tests/test_attention_plans.py)
NEW_K="not tiled-cuda"
REST_K="not ($(printf '%s or ' "${NEW_FILES[@]##*/}" | sed 's/ or $//')) or tiled-cuda"

stage1() {
    local opts=(-m gpu -q -rfEs -p no:cacheprovider --durations=15)
    # A fault stays in the pytest-xdist worker that met it; a hung kernel fails its test after the timeout, and the
    # worker that then exits takes the kernel down with its CUDA context.
    "$PY" -c "import xdist" 2>/dev/null && opts+=(-n 8)
    "$PY" -c "import pytest_timeout" 2>/dev/null && opts+=(--timeout=120 --timeout-method=thread)
    if ((DRY_RUN)); then
        wanted pytest-new && step pytest-new - "$PY" - "${NEW_FILES[@]}" <<PY
import contextlib
import io
import sys

import pytest

class Selected:
    def pytest_collection_finish(self, session):
        self.ids = {item.nodeid for item in session.items}

def collect(*args):
    plugin = Selected()
    with contextlib.redirect_stdout(io.StringIO()):
        status = pytest.main(["--collect-only", "-q", "-p", "no:cacheprovider", "-m", "gpu", *args], plugins=[plugin])
    assert status == 0, args
    return plugin.ids

new = collect(*sys.argv[1:], "-k", "$NEW_K")
rest = collect("tests", "-k", "$REST_K")
every = collect("tests")
assert new and rest and not new & rest and new | rest == every, (len(new), len(rest), len(every))
print(f"pytest selections: {len(new)} GPU tests of the new kernels first, then the other {len(rest)}, "
      f"{len(every)} in all")
PY
        wanted pytest-rest && step pytest-rest - echo "pytest-rest: its selection is checked with pytest-new's"
        return
    fi
    wanted pytest-new && step pytest-new "pytest-new-$TAG.log" "$PY" -m pytest "${opts[@]}" "${NEW_FILES[@]}" \
        -k "$NEW_K"
    wanted pytest-rest && step pytest-rest "pytest-rest-$TAG.log" "$PY" -m pytest "${opts[@]}" tests -k "$REST_K"
}

stage2() {
    local tool
    if ((DRY_RUN)); then
        # The workload's plumbing once, through the log as the tools' output goes.
        for tool in memcheck racecheck synccheck; do
            wanted "$tool" && { step "$tool" "sanitizer-$TAG.log" "$PY" benchmarks/device_workloads.py sanitizer \
                --dry-run; break; }
        done
        return
    fi
    local sanitizer
    sanitizer="$(command -v compute-sanitizer || echo "${CUDA_HOME:-/usr/local/cuda}/bin/compute-sanitizer")"
    # Without the caching allocator every tensor is its own allocation, so memcheck sees out-of-bounds accesses that
    # would otherwise land inside a larger cached block. racecheck finds shared-memory hazards (a missing barrier),
    # synccheck misused barriers (the LSTM's cluster barriers, the flash backward's ordered dQ).
    for tool in memcheck racecheck synccheck; do
        wanted "$tool" && step "$tool" "sanitizer-$TAG.log" env PYTORCH_NO_CUDA_MEMORY_CACHING=1 "$sanitizer" \
            --tool "$tool" --error-exitcode 1 --print-limit 20 "$PY" benchmarks/device_workloads.py sanitizer
    done
}

# Stage 3's result files, and their cases, of the parts that run one sweep (plan_sweeps.py names its own).
declare -A RESULT_FILE=([lstm]="lstm-$TAG.json" [peers]="peers-$TAG.json" [model]="model-$TAG.json"
    [scaling]="scaling-$TAG.json")
declare -A RESULT_CASE=([lstm]=lstm [peers]=attention_layernorm [model]=model_step [scaling]=model_scaling)

stage3() {
    local results="$OUT/results-$TAG"  # packed into one file at the end
    mkdir -p "$results"
    local bench=("$PY" -m lstm_attn.cli bench --device "$DEVICE")
    # A sweep starts no new group after its time budget; a group can take this long, so the budget stops short.
    sweep_budget() { local limit; limit=$(limit_for "$1"); echo $((limit > 30 ? limit - 15 : 15)); }
    if ((DRY_RUN)); then
        wanted plans && step plans - "$PY" benchmarks/plan_sweeps.py --out-dir "$results" \
            --tag "$TAG" --time-budget 60 --dry-run
        wanted ncu && step ncu - "$PY" benchmarks/device_workloads.py ncu --dry-run
        # The report below reads fake rows, one file for each result this stage writes.
        local fakes=() part
        for part in "${!RESULT_FILE[@]}"; do
            wanted "$part" && fakes+=("$results/${RESULT_FILE[$part]}:${RESULT_CASE[$part]}")
        done
        ((${#fakes[@]} == 0)) || "$PY" benchmarks/fake_results.py "${fakes[@]}" || FAILED=1
    else
        # The goal's shape (B = T = 256, H = 128) first, then T and H around it, then a small batch.
        wanted lstm && step lstm - "${bench[@]}" --cases lstm --dtypes float32-tf32,bfloat16 \
            --lstm-shapes 256x256x128,256x1024x128,256x256x64,256x256x256,32x256x128,32x1024x128 \
            --out "$results/${RESULT_FILE[lstm]}" --time-budget "$(sweep_budget lstm)"
        wanted plans && step plans - "$PY" benchmarks/plan_sweeps.py --out-dir "$results" \
            --tag "$TAG" --time-budget "$(sweep_budget plans)"
        # The peers of the plan sweeps' rows, with ours as the tables choose: the same shapes, graph-timed, and the
        # host cost of a call.
        wanted peers && step peers - "${bench[@]}" --timings graph \
            --out "$results/${RESULT_FILE[peers]}" --time-budget "$(sweep_budget peers)"
        wanted model && step model - "${bench[@]}" --cases model_step \
            --out "$results/${RESULT_FILE[model]}" --time-budget "$(sweep_budget model)"
        # The time cap stops a provider growing T once one step would outlast the budget.
        wanted scaling && step scaling - "${bench[@]}" --cases model_scaling --time-cap 5 \
            --out "$results/${RESULT_FILE[scaling]}" --time-budget "$(sweep_budget scaling)"
        if wanted ncu; then
            local ncu
            ncu="$(command -v ncu || echo "${CUDA_HOME:-/usr/local/cuda}/bin/ncu")"
            # Our kernels (lstm_attn::) and Triton's (named *_kernel), each once, with the clocks as found; the
            # sections that say where a kernel's time goes (speed of light, occupancy, launch, warp stall reasons),
            # few enough to profile the workload's ~70 kernels in about a minute.
            step ncu - "$ncu" --clock-control none --kernel-name-base demangled \
                --kernel-name "regex:lstm_attn::|_kernel\$|reduce_partials" --section SpeedOfLight \
                --section Occupancy --section LaunchStats --section WarpStateStats --launch-count 150 \
                --export "$OUT/ncu-$TAG" --force-overwrite "$PY" benchmarks/device_workloads.py ncu \
                && "$ncu" --import "$OUT/ncu-$TAG.ncu-rep" --page details --csv >"$OUT/ncu-details-$TAG.csv"
        fi
    fi
    local jsons=("$results"/*.json)
    if [ -e "${jsons[0]}" ]; then
        step report - "$PY" -m lstm_attn.cli report "${jsons[@]}" --out "$results" --stem "summary-$TAG" --quiet
        [ -f "$results/summary-$TAG.md" ] && cp "$results/summary-$TAG.md" "$OUT/"
    else
        RESULTS+=("report: SKIPPED (no result file was written)")
        FAILED=1
    fi
    # One file for every JSON and plot: the device tool brings back at most 8 files.
    tar -czf "$OUT/results-$TAG.tar.gz" -C "$OUT" "results-$TAG" && rm -rf "$results"
}

((BUILD_FAILED)) || "$STAGE"

echo
echo "== steps of $STAGE (${SECONDS}s in all; outputs in $OUT)"
printf '  %s\n' "${RESULTS[@]}"
echo "== files in $OUT:"
ls -la "$OUT" | tail -n +2
files=$(find "$OUT" -mindepth 1 -maxdepth 1 | wc -l)
((files <= 8)) || { echo "   $files entries: the device tool brings back 8 at most"; FAILED=1; }
exec >&- 2>&-
wait "$TEE_PID"  # the log is complete when the script ends
exit $FAILED
