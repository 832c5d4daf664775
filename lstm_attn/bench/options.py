"""The options of `lstm-attn bench` and `lstm-attn profile`, and the names and sizes of the benchmark cases they list.

Nothing here imports torch, so `--help` answers at once and a bad option is refused before anything loads. The
case modules (cases, lstm_rows, model_step, scaling) take their names and fixed sizes from here; the dtype and
provider names are the keys of their tables, which tests/test_bench.py holds equal to the lists below.
"""

from __future__ import annotations

import argparse

# attention_layernorm (lstm_attn.bench.cases)
OP_CASE = "attention_layernorm"
OP_PASSES = ("fwd", "bwd", "fwd+bwd")
OP_DTYPES = ("float32", "float32-tf32", "bfloat16", "float16", "float64")
OP_PROVIDERS = ("reference", "sdpa", "compile", "cpu", "cuda", "triton")
OP_DEFAULT_PROVIDERS = {"cuda": ("reference", "sdpa", "compile", "triton", "cuda"),
                        "cpu": ("reference", "sdpa", "compile", "cpu")}
# lstm (lstm_attn.bench.lstm_rows)
LSTM_CASE = "lstm"
LSTM_LAYERS, LSTM_INPUT_SIZE = 2, 8
# model_step (lstm_attn.bench.model_step)
MODEL_CASE = "model_step"
MODEL_INPUT_SIZE, MODEL_HIDDEN, MODEL_LAYERS = 8, 128, 2
MODEL_DTYPES = ("float32", "bfloat16-autocast")
# model_scaling (lstm_attn.bench.scaling)
SCALING_CASE = "model_scaling"
SCALING_INPUT_SIZE, SCALING_HIDDEN, SCALING_LAYERS, SCALING_BATCH = 8, 64, 2, 16

CASES = (OP_CASE, LSTM_CASE, MODEL_CASE, SCALING_CASE)
ELEMENTS = 2**25  # B*T*H per tensor of the GPU sweep: about 32M, where an H200 is busy with kernels, not the host

# The sweep's defaults per device type. On a GPU every (T, H) gets B = ELEMENTS / (T * H): the same bytes per call at
# every shape, 16 to 2048 sequences. The CPU keeps B*T = 8192. --time-budget guards the GPU check's time.
SWEEP_DEFAULTS = {
    "cuda": dict(elements=ELEMENTS, tokens=None, T="256,1024,4096", H="64,128,256,512",
                 dtypes="float32,float32-tf32,bfloat16,float16", timings="graph,eager", host_shape="1x16x64",
                 model_shapes="256x256,256x1024", model_dtypes="float32,bfloat16-autocast",
                 lstm_shapes=",".join(f"{B}x{T}x{H}" for B in (32, 256) for T in (256, 1024) for H in (64, 128, 256))),
    "cpu": dict(elements=None, tokens=8192, T="64,128,256", H="64,128", dtypes="float32", timings="eager",
                host_shape="1x16x64", model_shapes="32x256", model_dtypes="float32", lstm_shapes="32x256x128"),
}
SWEEP_QUICK = {
    "cuda": dict(elements=2**22, tokens=None, T="256", H="128", dtypes="float32,bfloat16", timings="graph,eager",
                 host_shape="1x16x64", model_shapes="64x256", model_dtypes="float32,bfloat16-autocast",
                 lstm_shapes="32x256x128"),
    # The CPU goal's shape alone: with torch.compile's first compilation it still fits in a minute on 2 cores.
    "cpu": dict(elements=None, tokens=8192, T="256", H="128", dtypes="float32", timings="eager",
                host_shape="1x16x64", model_shapes="16x128", model_dtypes="float32", lstm_shapes="8x64x32"),
}
PROFILE_DEFAULTS = {
    # The goal shapes, without torch.compile (its compile time would take the GPU check's budget, and the sweep
    # already places it).
    "cuda": dict(tokens=16384, T="256,1024", H="64,128,256,512", dtypes="float32,bfloat16",
                 backends="reference,sdpa,triton,cuda"),
    "cpu": dict(tokens=8192, T="256", H="128", dtypes="float32", backends="reference,cpu"),
}


def add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    lists = "comma-separated"
    parser.add_argument("--device", choices=("cuda", "cpu"), help="default: cuda when a GPU is visible, else cpu")
    parser.add_argument("--cases", default=OP_CASE, help=f"{lists}: {', '.join(CASES)} (default: %(default)s)")
    defaults = {kind: ",".join(names) for kind, names in OP_DEFAULT_PROVIDERS.items()}
    parser.add_argument("--backends", help=f"{lists}, from {', '.join(OP_PROVIDERS)} (default: cuda: "
                        f"{defaults['cuda']}; cpu: {defaults['cpu']})")
    parser.add_argument("--elements", type=int, help=f"B*T*H per tensor of every op shape, "
                        f"B = elements / (T*H) (default on cuda: {ELEMENTS})")
    parser.add_argument("--tokens", type=int, help="B*T of every op shape, instead of --elements "
                        "(default on cpu: 8192)")
    parser.add_argument("--T", dest="T", help=f"{lists} sequence lengths (default: cuda 256,1024,4096; cpu 64,128,256)")
    parser.add_argument("--H", dest="H", help=f"{lists} hidden sizes (default: cuda 64,128,256,512; cpu 64,128)")
    parser.add_argument("--dtypes", help=f"{lists}, from {', '.join(OP_DTYPES)}; float32 runs with TF32 off, "
                        "float32-tf32 with it on (default: cuda float32,float32-tf32,bfloat16,float16; cpu float32)")
    parser.add_argument("--timings", help=f"{lists}, from graph, eager (default: cuda graph,eager; cpu eager): "
                        "device time from CUDA-graph replay, and synchronised wall time per call")
    parser.add_argument("--host-shape", help="BxTxH of the host-cost rows (time to issue a call on an idle "
                        "device), or none (default: 1x16x64)")
    parser.add_argument("--passes", default="fwd+bwd", help=f"{lists}, from {', '.join(OP_PASSES)}; the "
                        f"{LSTM_CASE} case takes fwd (inference) and fwd+bwd (default: %(default)s)")
    parser.add_argument("--model-shapes", help=f"{lists} BxT (H {MODEL_HIDDEN}) or BxTxH of the model case, input "
                        f"{MODEL_INPUT_SIZE}, {MODEL_LAYERS} layers (default: cuda 256x256,256x1024; cpu 32x256)")
    parser.add_argument("--model-dtypes", help=f"{lists}, from {', '.join(MODEL_DTYPES)}")
    parser.add_argument("--lstm-shapes", help=f"{lists} BxTxH of the {LSTM_CASE} case, {LSTM_LAYERS} layers, "
                        f"input {LSTM_INPUT_SIZE}, in --dtypes (default: cuda B 32,256 x T 256,1024 x H "
                        "64,128,256; cpu 32x256x128)")
    parser.add_argument("--scaling-T", default="256,16384", help=f"{SCALING_CASE}: the first and the largest T, "
                        "doubling in between (default: %(default)s)")
    parser.add_argument("--scaling-shape", default=f"{SCALING_BATCH}x{SCALING_HIDDEN}", help=f"{SCALING_CASE}: BxH, "
                        f"input {SCALING_INPUT_SIZE}, {SCALING_LAYERS} layers (default: %(default)s)")
    parser.add_argument("--time-cap", type=float, default=60.0, help=f"{SCALING_CASE}: seconds "
                        "one step may take before a provider stops growing T (default: %(default)s)")
    parser.add_argument("--quick", action="store_true", help="a short sweep, under a minute on CPU: T 256, H 128, "
                        "model shapes 16x128 (cuda: 64x256)")
    parser.add_argument("--out", default=".", help="result file (*.json), or a folder for <device>-<date>.json "
                        "(default: the current folder)")
    _add_limits(parser, "start no new group after this; the file lists the groups left out",
                "CPU threads for torch (default: torch's choice); the result file records the number used")


def add_profile_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", choices=("cuda", "cpu"), help="default: cuda when a GPU is visible, else cpu")
    parser.add_argument("--backends", help=f"comma-separated, from {', '.join(OP_PROVIDERS)} (default: cuda: "
                        f"{PROFILE_DEFAULTS['cuda']['backends']}; cpu: {PROFILE_DEFAULTS['cpu']['backends']})")
    parser.add_argument("--tokens", type=int, help="B*T of every shape (default: cuda 16384, "
                        "cpu 8192)")
    parser.add_argument("--T", dest="T", help="comma-separated sequence lengths (default: cuda 256,1024; cpu 256)")
    parser.add_argument("--H", dest="H", help="comma-separated hidden sizes (default: cuda 64,128,256,512; cpu 128)")
    parser.add_argument("--dtypes", help=f"comma-separated, from {', '.join(OP_DTYPES)} (default: cuda "
                        "float32,bfloat16; cpu float32)")
    parser.add_argument("--iters", type=int, default=20,
                        help="calls timed and profiled per row (default: %(default)s)")
    parser.add_argument("--out", default=".", help="result file (*.json), or a folder for "
                        "profile-<device>-<date>.json (default: the current folder)")
    _add_limits(parser, "start no new row after this", "CPU threads for torch (default: torch's choice)")


def _add_limits(parser: argparse.ArgumentParser, budget_help: str, threads_help: str) -> None:
    parser.add_argument("--time-budget", type=float, help=f"seconds: {budget_help}")
    parser.add_argument("--threads", type=int, help=threads_help)
    parser.add_argument("--seed", type=int, default=0)


def names_in(text: str, option: str, known) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise ValueError(f"{option} is empty")
    for n in names:
        if n not in known:
            raise ValueError(f"{option} has unknown value {n!r}; choose from {', '.join(known)}")
    return names


def positive_ints(text: str, what: str) -> list[int]:
    values = []
    for item in text.split(","):
        try:
            value = int(item)
        except ValueError:
            raise ValueError(f"{what} must be comma-separated positive integers, got {text!r}") from None
        if value <= 0:
            raise ValueError(f"{what} must be positive, got {value}")
        values.append(value)
    return values


def sequence_lengths(tokens: int, T_text: str) -> list[int]:
    """--T, each length a divisor of --tokens (B = tokens / T must be whole)."""
    if tokens <= 0:
        raise ValueError(f"--tokens must be positive, got {tokens}")
    Ts = positive_ints(str(T_text), "--T")
    for T in Ts:
        if tokens % T:
            raise ValueError(f"--tokens {tokens} is not a multiple of T = {T}: B = tokens / T must be whole")
    return Ts


def check_limits(time_budget: float | None, threads: int | None) -> None:
    if time_budget is not None and time_budget <= 0:
        raise ValueError(f"--time-budget must be positive seconds, got {time_budget}")
    if threads is not None and threads <= 0:
        raise ValueError(f"--threads must be positive, got {threads}")
