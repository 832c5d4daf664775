#!/usr/bin/env bash
# The one GPU check, in one go: build the extension, list its kernels' static resources, memcheck one small CUDA
# forward+backward, run the GPU-marked tests, the benchmark sweep (device time from CUDA-graph replay, eager wall
# time and host cost per provider) and the model baselines, and print the summary table last. Sized for about 7
# minutes on an H200 through --time-budget: the sweep starts no group after its share of the budget and lists
# the groups it left out.
#
#   benchmarks/device_check.sh [OUT]        (or OUT=... in the environment; default ./device-check-out)
#
# Writes into OUT (ncu.log with NCU=1): device_check.log, kernels.md and kernels-<gpu>-<date>.json (static
# resources), pytest-gpu.log, sanitizer.log, bench-<gpu>-<date>.json, model-<gpu>-<date>.json,
# scaling-<gpu>-<date>.json (model_scaling: time and peak memory against T),
# profile-<gpu>-<date>.json (host/device split and heaviest kernels per call), summary-<gpu>-<date>.md and its
# per-device -speedup.png and -tflops.png.
# Every step runs under `timeout`; a step that fails or runs out of time is reported and the next one runs.
# The exit status is 0 only if every step passed. Without a GPU it says so, runs the CPU parts (build, a quick
# CPU sweep, the report) and exits 0 if those passed.
#
# Environment: BUDGET_S (default 420) seconds for the whole script; PYTHON (default python3); MAX_JOBS (16);
# CHECKS_ONLY=1 skips the sweep and the model baselines (a re-check of correctness after a fix); NCU=1 adds an
# Nsight Compute report (speed of light, occupancy, launch statistics) of every attention kernel of one
# forward+backward per backend and dtype at T=1024 H=512 and T=256 H=64, into ncu.log (about a minute);
# TORCH_CUDA_ARCH_LIST (default: this GPU's); LSTM_ATTN_GIT_COMMIT, recorded in the results (the device's copy
# of the tree may have no .git); PLANS=1 adds sweeps with each CUDA and Triton kernel plan forced (with
# CHECKS_ONLY=1 they replace the default measurements).
set -uo pipefail

SELF="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$(basename "${BASH_SOURCE[0]}")"
REPO="$(dirname "$(dirname "$SELF")")"
PY="${PYTHON:-python3}"

# Internal steps, run by the script itself under `timeout` (which cannot run shell functions).
case "${1:-}" in
__build)
    trap 'exit 130' INT  # out of time: stop here, do not fall through to the in-place build
    # --no-index: the GPU machine has no network, so pip must never try to fetch; --no-build-isolation builds
    # against the torch installed there.
    if PIP_BREAK_SYSTEM_PACKAGES=1 "$PY" -m pip install --no-build-isolation --no-deps --no-index -e "$REPO"; then
        exit 0
    fi
    echo "pip's editable install failed; building in place instead"
    cd "$REPO" && "$PY" setup.py build_ext --inplace || exit 1
    # In place, lstm_attn.kernels (installed from kernels/ by the package-dir mapping) needs a link.
    [ -e lstm_attn/kernels ] || ln -s ../kernels lstm_attn/kernels
    exit 0 ;;
__memcheck)
    # Every CUDA kernel plan on tails in every dimension, and the fused LSTM in the four cluster sizes its
    # configurations use (1, 2, 4, 8 blocks).
    exec "$PY" - <<'PY'
import os

import torch
import lstm_attn

status = lstm_attn.available_backends("cuda")["cuda"]
assert status.available, f"backend 'cuda' is unavailable: {status.reason}"
torch.manual_seed(0)


def t(dtype, *shape):
    return torch.randn(*shape, device="cuda", dtype=dtype, requires_grad=True)


shapes = ((2, 37, 53, 64), (1, 130, 130, 128), (2, 70, 97, 59), (0, 4, 4, 64))
for plan, dtypes in {"tiled": (torch.float32, torch.bfloat16), "flash": (torch.bfloat16, torch.float16),
                     "gemm": (torch.float32, torch.bfloat16), "gemm3xtf32": (torch.float32,)}.items():
    for dtype in dtypes:
        for B, Tq, Tk, H in shapes:
            if plan == "flash" and H > 128:
                continue
            q, k, v, residual = t(dtype, B, Tq, H), t(dtype, B, Tk, H), t(dtype, B, Tk, H), t(dtype, B, Tq, H)
            out = torch.ops.lstm_attn.attention_layernorm_fwd(q, k, v, residual, t(dtype, H), t(dtype, H), 1e-5,
                                                              H**-0.5, plan)[0]
            out.backward(torch.randn_like(out))
for dtype in (torch.float32, torch.bfloat16):
    x, u, c = t(dtype, 3, 41, 64), t(dtype, 3, 64), t(dtype, 3)
    pooled = lstm_attn.softmax_pool(x, u, c, backend="cuda")
    pooled.backward(torch.randn_like(pooled))
lstm_attn.plans.FORCED[("cuda", "lstm")] = "fused"
for dtype, H in ((torch.bfloat16, 64), (torch.float32, 64), (torch.bfloat16, 128), (torch.float32, 256)):
    module = torch.nn.LSTM(8, H, 2, batch_first=True)
    weights = [w.detach().to("cuda", dtype).requires_grad_(True) for w in module._flat_weights]
    output, (h_n, c_n) = lstm_attn.lstm(t(dtype, 20, 5, 8), weights, backend="cuda")
    (output.float().sum() + h_n.float().sum() + c_n.float().sum()).backward()
torch.cuda.synchronize()
print("sanitizer workload: every attention plan, softmax_pool and the fused LSTM ran forward+backward on 'cuda'")
PY
    ;;
__ncu_workload)
    # One forward+backward per (backend, dtype) on the slowest goal shape and the smallest, for Nsight Compute.
    exec "$PY" - <<'PY'
import torch
import lstm_attn

torch.manual_seed(0)
for T, H in ((1024, 512), (256, 64)):
    for dtype in (torch.float32, torch.bfloat16):
        for backend in ("cuda", "triton"):
            if not lstm_attn.available_backends("cuda")[backend].available:
                continue
            q, k, v, residual = (torch.randn(16384 // T, T, H, device="cuda", dtype=dtype, requires_grad=True)
                                 for _ in range(4))
            weight, bias = (torch.randn(H, device="cuda", dtype=dtype, requires_grad=True) for _ in range(2))
            out = lstm_attn.attention_layernorm(q, k, v, residual, weight, bias, backend=backend)
            out.backward(torch.randn_like(out))
torch.cuda.synchronize()
print("ncu workload: attention_layernorm forward+backward ran on cuda and triton")
PY
    ;;
esac

OUT="${1:-${OUT:-$PWD/device-check-out}}"
mkdir -p "$OUT" || { echo "cannot create the output folder $OUT"; exit 2; }
OUT="$(cd "$OUT" && pwd)"
BUDGET_S="${BUDGET_S:-420}"
export PYTHONUNBUFFERED=1 MAX_JOBS="${MAX_JOBS:-16}"
# Each Triton config compiles in seconds; benchmarking every config of every kernel for every shape would take
# most of the budget, so by default a check uses each table's first (Hopper default) config. The results record it.
export LSTM_ATTN_TRITON_AUTOTUNE="${LSTM_ATTN_TRITON_AUTOTUNE:-0}"
exec > >(tee -a "$OUT/device_check.log") 2>&1
TEE_PID=$!
cd "$REPO" || exit 2

RESULTS=()
FAILED=0

# limit_for CAP RESERVE: seconds a step may take, at most CAP, leaving RESERVE of the budget for the steps after it.
limit_for() {
    local left=$((BUDGET_S - SECONDS - $2))
    echo $(($1 < left ? $1 : left))
}

# step NAME CAP RESERVE LOG CMD...: run CMD under `timeout` for limit_for CAP RESERVE seconds; LOG is a file in
# OUT that gets the step's output too ("-" for none).
step() {
    local name="$1" cap="$2" reserve="$3" log="$4"
    shift 4
    local limit
    limit=$(limit_for "$cap" "$reserve")
    if ((limit < 15)); then
        echo "== $name: skipped, the time budget is spent"
        RESULTS+=("$name: SKIPPED (time budget spent)")
        FAILED=1
        return 1
    fi
    echo "== [${SECONDS}s] $name (limit ${limit}s)"
    local start=$SECONDS rc
    if [ "$log" = "-" ]; then
        timeout --signal=INT --kill-after=10 "$limit" "$@"
    else
        timeout --signal=INT --kill-after=10 "$limit" "$@" 2>&1 | tee "$OUT/$log"
    fi
    rc=$?
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

echo "== device_check.sh in $REPO, output in $OUT, budget ${BUDGET_S}s, $(date -u +%Y-%m-%dT%H:%M:%SZ)"
HAS_GPU=0
if "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    HAS_GPU=1
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
    export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-$("$PY" -c \
        "import torch; print('%d.%d' % torch.cuda.get_device_capability())")}" LSTM_ATTN_CUDA=1
else
    echo "== no CUDA GPU is visible to torch: running the CPU parts only (build, quick CPU sweep, report)"
fi
"$PY" -c "import sys, torch; print('python', sys.version.split()[0], '| torch', torch.__version__, '| CUDA', \
torch.version.cuda)"
"$PY" -c "import triton; print('triton', triton.__version__)" 2>/dev/null || echo "triton: not importable"

# Each step keeps back seconds for the steps after it: the benchmarks (sweep, model baselines, model scaling,
# profile and report, 220 s;
# none with CHECKS_ONLY=1) and the GPU tests (100 s). When time runs short the sanitizers are cut first.
BENCH_RESERVE=$([ "${CHECKS_ONLY:-0}" = 1 ] && echo 0 || echo 220)
TEST_RESERVE=100
step "build" 200 "$BENCH_RESERVE" - "$SELF" __build
step "import" 30 "$BENCH_RESERVE" - "$PY" -c "import lstm_attn; print({k: repr(v) for k, v in \
lstm_attn.available_backends('cuda' if $HAS_GPU else 'cpu').items()})"

DEVICE=$([ $HAS_GPU = 1 ] && echo cuda || echo cpu)
SLUG=$("$PY" -c "from lstm_attn.bench.env import device_slug; print(device_slug('$DEVICE'))" 2>/dev/null \
    || echo "$DEVICE-unknown")
DATE=$(date -u +%Y-%m-%d)
BENCH_JSON="$OUT/bench-$SLUG-$DATE.json"
MODEL_JSON="$OUT/model-$SLUG-$DATE.json"
PROFILE_JSON="$OUT/profile-$SLUG-$DATE.json"
SCALING_JSON="$OUT/scaling-$SLUG-$DATE.json"
LSTM_JSON="$OUT/lstm-$SLUG-$DATE.json"
STEM="summary-$SLUG-$DATE"
# Registers, shared memory, spills and blocks per SM of every CUDA kernel of this build (from the binary).
[ $HAS_GPU = 1 ] && step "kernel resources" 60 "$BENCH_RESERVE" kernels.md "$PY" -m lstm_attn.cli kernels \
    --json "$OUT/kernels-$SLUG-$DATE.json"

if [ $HAS_GPU = 1 ]; then
    SANITIZER="$(command -v compute-sanitizer || echo "${CUDA_HOME:-/usr/local/cuda}/bin/compute-sanitizer")"
    [ -x "$SANITIZER" ] || echo "compute-sanitizer not found (looked on PATH and at $SANITIZER)"
    # Without the caching allocator every tensor is its own allocation, so memcheck sees out-of-bounds accesses
    # that would otherwise land inside a larger cached block.
    step "compute-sanitizer memcheck" 90 $((BENCH_RESERVE + TEST_RESERVE)) sanitizer.log env PYTORCH_NO_CUDA_MEMORY_CACHING=1 \
        "$SANITIZER" --tool memcheck --error-exitcode 1 --print-limit 20 bash "$SELF" __memcheck
    # racecheck (shared-memory hazards: a missing __syncthreads) and synccheck (barriers: the flash backward's
    # ordered dQ, the LSTM's cluster barriers) are slower; they run where the budget allows.
    for tool in racecheck synccheck; do
        step "compute-sanitizer $tool" 90 $((BENCH_RESERVE + TEST_RESERVE + 30)) - bash -c "env \
            PYTORCH_NO_CUDA_MEMORY_CACHING=1 '$SANITIZER' --tool $tool --error-exitcode 1 --print-limit 20 \
            bash '$SELF' __memcheck 2>&1 | tee -a '$OUT/sanitizer.log'"
    done
    # Spread over processes (pytest-xdist, where installed): most of this step is compiling Triton kernels, one
    # at a time per process; a CUDA fault also stays inside the worker that met it.
    XDIST=$("$PY" -c "import xdist" 2>/dev/null && echo "-n 8" || true)
    step "pytest -m gpu" 150 "$BENCH_RESERVE" pytest-gpu.log "$PY" -m pytest tests -m gpu -q -rs -p no:cacheprovider $XDIST
    # Each bench starts no new group some seconds before its limit, so it ends on its own with its JSON written
    # (it also rewrites the file after every group, so a kill loses one group at most).
    [ "${CHECKS_ONLY:-0}" = 1 ] && RESULTS+=("sweep, model baselines and profile: not run (CHECKS_ONLY=1)")
    [ "${CHECKS_ONLY:-0}" = 1 ] || {
    limit=$(limit_for 150 150)
    step "sweep" 150 150 - "$PY" -m lstm_attn.cli bench --device cuda --out "$BENCH_JSON" \
        --time-budget $((limit > 50 ? limit - 35 : 15))
    # The fused LSTM against cuDNN (issue 15), graph and eager, B 32,256 x T 256,1024 x H 64,128,256.
    limit=$(limit_for 60 85)
    step "lstm" 60 85 - "$PY" -m lstm_attn.cli bench --device cuda --cases lstm --dtypes float32-tf32,bfloat16 \
        --out "$LSTM_JSON" --time-budget $((limit > 30 ? limit - 20 : 10))
    limit=$(limit_for 60 65)
    step "model baselines" 60 65 - "$PY" -m lstm_attn.cli bench --device cuda --cases model_step \
        --out "$MODEL_JSON" --time-budget $((limit > 35 ? limit - 20 : 15))
    # Time and peak memory of a training step against T, seed beside ours (each point checked first); the
    # time cap stops a provider growing T when one step would outlast the budget.
    limit=$(limit_for 60 25)
    step "model scaling" 60 25 - "$PY" -m lstm_attn.cli bench --device cuda --cases model_scaling \
        --out "$SCALING_JSON" --time-cap 5 --time-budget $((limit > 30 ? limit - 20 : 10))
    # Where the time of the sweep's calls goes (host or device, which kernels): the smallest and largest H.
    limit=$(limit_for 45 25)
    step "profile" 45 25 - "$PY" -m lstm_attn.cli profile --device cuda --T 256,1024 --H 64,512 --iters 10 \
        --out "$PROFILE_JSON" --time-budget $((limit > 25 ? limit - 15 : 10))
    }
    # PLANS=1: each CUDA plan and each Triton plan forced on the attention sweep's shapes (in place of the
    # measurements above: run with CHECKS_ONLY=1 and PLANS=1), to set lstm_attn/plans.py's tables from
    # numbers.
    [ "${PLANS:-0}" = 1 ] && {
    for plan in tiled flash gemm gemm3xtf32; do
        limit=$(limit_for 60 30)
        step "sweep, cuda plan $plan" 60 30 - env LSTM_ATTN_PLAN_CUDA_ATTENTION=$plan "$PY" -m lstm_attn.cli bench \
            --device cuda --backends reference,sdpa,cuda --out "$OUT/plan-cuda-$plan-$SLUG-$DATE.json" \
            --time-budget $((limit > 30 ? limit - 20 : 10))
    done
    for plan in flash matmul; do
        limit=$(limit_for 60 30)
        step "sweep, triton plan $plan" 60 30 - env LSTM_ATTN_PLAN_TRITON_ATTENTION=$plan "$PY" -m lstm_attn.cli bench \
            --device cuda --backends reference,sdpa,triton --out "$OUT/plan-triton-$plan-$SLUG-$DATE.json" \
            --time-budget $((limit > 30 ? limit - 20 : 10))
    done
    }
    [ "${NCU:-0}" = 1 ] && {
    NCU_BIN="$(command -v ncu || echo "${CUDA_HOME:-/usr/local/cuda}/bin/ncu")"
    # The report after it needs some 20 s.
    step "ncu" 120 25 ncu.log "$NCU_BIN" --kernel-name regex:"attention|layernorm|softmax|lstm" --section SpeedOfLight \
        --section Occupancy --section LaunchStats bash "$SELF" __ncu_workload
    }
else
    step "sweep (quick, CPU)" 120 15 - "$PY" -m lstm_attn.cli bench --device cpu --quick --out "$BENCH_JSON"
fi

JSONS=()
for f in "$BENCH_JSON" "$LSTM_JSON" "$MODEL_JSON" "$SCALING_JSON" "$PROFILE_JSON" "$OUT"/plan-*.json; do
    [ -f "$f" ] && JSONS+=("$f")
done
if ((${#JSONS[@]})); then
    step "report" 30 0 - "$PY" -m lstm_attn.cli report "${JSONS[@]}" --out "$OUT" --stem "$STEM" --quiet
elif [ "${CHECKS_ONLY:-0}" = 1 ]; then
    RESULTS+=("report: not run (CHECKS_ONLY=1 writes no benchmark file)")
else
    RESULTS+=("report: SKIPPED (no result file was written)")
    FAILED=1
fi

echo
echo "== steps (${SECONDS}s in all; outputs in $OUT)"
printf '  %s\n' "${RESULTS[@]}"
[ $HAS_GPU = 1 ] || echo "  no GPU here: the GPU steps (sanitizers, GPU tests, GPU sweep, model baselines, profile, ncu) did not run"
if [ -f "$OUT/$STEM.md" ]; then
    echo
    cat "$OUT/$STEM.md"
fi
exec >&- 2>&-
wait "$TEE_PID"  # the log is complete when the script ends
exit $FAILED
