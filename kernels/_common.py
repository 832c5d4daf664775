"""What the kernel modules share: launch-time choices (head-dim block, sequence bucket, float32 dot precision),
the autotuner tables' plumbing, and the two device helpers every kernel calls for products and for rounding.

Launchers run inside torch.library.triton_op bodies, which torch.compile traces with symbolic sizes: the helpers
here only compare sizes (a guard each), never take them apart bit by bit.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from lstm_attn.limits import GPU_FLOATS, GPU_MAX_HEAD_DIM

# Both are read once, when the kernels are defined: Triton itself decides at @triton.jit time whether a kernel is
# interpreted, so switching either later would not switch the kernels.
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
# LSTM_ATTN_TRITON_AUTOTUNE=0 keeps only the first (default) config of each table: one compile per kernel variant,
# for short GPU checks where benchmarking every config would cost more than the check itself.
AUTOTUNE = os.environ.get("LSTM_ATTN_TRITON_AUTOTUNE", "1") != "0"

# The limits of every GPU backend, lstm_attn.limits's: one place for Python, the Triton guards included.
SUPPORTED_DTYPES = GPU_FLOATS
MAX_HEAD_DIM = GPU_MAX_HEAD_DIM
# Every block dimension that reaches tl.dot must be at least 16 on a GPU, so the smallest head-dim block is 16.
HEAD_DIM_BLOCKS = (16, 32, 64, 128, 256, 512)


def _power_of_two_at_least(n, lowest: int, highest: int) -> int:
    if type(n) is int:  # eager calls: one step instead of the loop below, which symbolic sizes need
        return min(highest, max(lowest, 1 << (n - 1).bit_length()))
    block = lowest
    while block < n and block < highest:
        block *= 2
    return block


def check_launch(op: str, dtype: torch.dtype, **sizes) -> None:
    """The checks a direct call of a torch.ops.lstm_attn.triton_* op needs before any launch (the public functions,
    the only way to the eager autograd.Functions, have checked all this and more): a dtype the kernels implement and
    sizes they can tile."""
    if dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"{op}: the Triton kernels support {', '.join(map(str, SUPPORTED_DTYPES))}, not {dtype}")
    for name, size in sizes.items():
        if size < 1:
            raise ValueError(f"{op}: {name} must be at least 1, got {name} = {size}")
    if sizes["H"] > MAX_HEAD_DIM:
        raise ValueError(f"{op}: the Triton kernels support H <= {MAX_HEAD_DIM}, got H = {sizes['H']}")


def cdiv(a, b):
    """ceil(a / b) for sizes, plain or symbolic: triton.cdiv is a constexpr function (Triton 3.6 and 3.9), whose
    call from host code costs microseconds of argument unwrapping."""
    return (a + b - 1) // b


def head_dim_block(H) -> int:
    """The power of two >= H that a row's tile spans (the columns past H are masked)."""
    return _power_of_two_at_least(H, HEAD_DIM_BLOCKS[0], MAX_HEAD_DIM)


def seq_bucket(T) -> int:
    """Autotuning key for a sequence length: a power of two, so the best config is found once per bucket rather
    than once per length. Never below 16, the shortest block: shorter lengths all tune alike."""
    return _power_of_two_at_least(T, 16, 1 << 16)


def tf32_allowed() -> bool:
    """torch.backends.cuda.matmul.allow_tf32, read without the property's deprecation path (3 us against 0.2:
    the eager launchers read it on every call)."""
    getter = getattr(torch._C, "_get_cublas_allow_tf32", None)
    return getter() if getter is not None else torch.backends.cuda.matmul.allow_tf32


def alignment(*tensors) -> int:
    """Which of the tensors start on a 16-byte boundary, as bits: Triton specializes each pointer argument on it,
    so a replay's key must hold it."""
    bits = 0
    for t in tensors:
        bits = bits << 1 | (t.data_ptr() % 16 == 0)
    return bits


def launch_key(q, k, tensors) -> tuple:
    """A replay's key (see _launch.py) for launches on q (B, Tq, H) and k (B, Tk, H) whose pointer arguments
    from outside (the rest are fresh allocations, always aligned) are `tensors`: the device, dtype, sizes, TF32
    flag (float32 only) and alignment."""
    tf32 = q.dtype == torch.float32 and tf32_allowed()
    return q.device, q.dtype, *q.shape, k.shape[1], tf32, alignment(*tensors)


def dot_precision(dtype: torch.dtype) -> str:
    """How float32 products use the Tensor Cores: as TF32 when torch lets its own float32 matmuls do so, else as
    three TF32 products (a = a_hi + a_lo; a_hi b_hi + a_hi b_lo + a_lo b_hi), accurate to about 1e-6 relative.
    Triton's exact "ieee" product runs on FMA units holding whole operand rows per thread: ptxas (sm_90) spills
    kilobytes per thread for it from H = 64 on, so it is not offered. 16-bit inputs ignore the setting."""
    if dtype == torch.float32 and not tf32_allowed():
        return "tf32x3"
    return "tf32"


def gpu_arch() -> str:
    """The GPU architecture Triton compiles for, as "sm_90": the key of the pinned autotuning winners."""
    from triton.runtime.driver import driver

    return f"sm_{driver.active.get_current_target().arch}"


def _pinned_pruner(name: str, launch_class):
    """An early_config_prune that keeps only the winner pinned for this GPU architecture, dtype and launch class in
    kernels/tuned.py, when there is one and it is still in the table; otherwise every config (then Triton tunes)."""
    from .tuned import PINNED

    def prune(configs, named_args, **kwargs):
        dtype = next(str(a.dtype).removeprefix("torch.") for a in named_args.values() if hasattr(a, "dtype"))
        pinned = PINNED.get((name, gpu_arch(), dtype, launch_class))
        if pinned is not None:
            for config in configs:
                if pinned.items() <= config.all_kwargs().items():
                    return [config]
        return configs

    return prune


def autotuners(kernel, table: dict, interpreter_config: triton.Config, key: list[str], name: str) -> dict:
    """One autotuner per launch class (head-dim block, and for some kernels the dtype's width) over the same jitted
    kernel, so each class benchmarks only the configs whose tiles fit it (the dtype is part of every autotuner's
    key already). `name` keys the pinned winners (kernels/tuned.py). The interpreter cannot benchmark: it gets a
    single config, large so that few programs run in Python."""
    if INTERPRET:
        single = triton.autotune(configs=[interpreter_config], key=[])(kernel)
        return dict.fromkeys(table, single)
    if not AUTOTUNE:
        return {launch_class: triton.autotune(configs=configs[:1], key=key)(kernel)
                for launch_class, configs in table.items()}
    return {launch_class: triton.autotune(configs=configs, key=key,
                                          prune_configs_by={"early_config_prune": _pinned_pruner(name, launch_class)}
                                          )(kernel)
            for launch_class, configs in table.items()}


# The kernels' two points of contact with the interpreter's limits: tl.dot and float32 -> 16-bit rounding. On a GPU
# both are the plain Triton operations.
if INTERPRET:
    @triton.jit
    def mma(a, b, INPUT_PRECISION: tl.constexpr):
        # The interpreter keeps bfloat16 as its uint16 bits and tl.dot multiplies those as integers
        # (triton-lang/triton#11584). Products of 16-bit floats are exact in float32, so multiplying the upcast
        # operands with float32 accumulation is the GPU's arithmetic.
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")

    @triton.jit
    def to_dtype(x, dtype: tl.constexpr):
        # The interpreter truncates float32 -> bfloat16 where the GPU rounds to nearest even; round the bits here
        # (NaN is left to the plain cast, which keeps it NaN).
        if dtype == tl.bfloat16:
            bits = x.to(tl.uint32, bitcast=True)
            bits = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
            return tl.where(x == x, bits.to(tl.uint16).to(tl.bfloat16, bitcast=True), x.to(tl.bfloat16))
        return x.to(dtype)
else:
    @triton.jit
    def mma(a, b, INPUT_PRECISION: tl.constexpr):
        return tl.dot(a, b, input_precision=INPUT_PRECISION)

    @triton.jit
    def to_dtype(x, dtype: tl.constexpr):
        return x.to(dtype)
