"""Every kernel plan choice of the package: one table per (backend, op), and nothing else chooses.

A plan is one kernel design for one op on one backend. The C++, CUDA and Triton code never choose a plan: they are
handed its name (the ops' `plan` argument, the Triton launchers' `plan`) and refuse, with the reason, one they cannot
run. The choice is made here, per call, from the first row of the table that matches the inputs and whose plan can
run them. Each row names the measurement behind it (a file in benchmarks/results/) or says that it has none yet.

The plans:
- cuda attention (csrc/cuda/attention/):
  - "tiled": WMMA tiles for 16-bit and TF32, exact SIMT FFMA tiles for float32, online softmax, LayerNorm in the
    forward's epilogue, a dK/dV and a dQ kernel in the backward that recompute the scores. Memory O(B T H).
  - "flash": FlashAttention-2's structure with mma.sync; 16-bit inputs, H <= 128. Memory O(B T H).
  - "gemm": the six products through cuBLAS with fused kernels between them (csrc/attention_gemm.h); keeps the
    softmax (B, Tq, Tk) from forward to backward: memory O(B Tq Tk).
  - "gemm3xtf32": the gemm plan, float32 only, each product split into three TF32 products on the Tensor Cores
    (x = x_hi + x_lo; a_hi b_lo + a_lo b_hi + a_hi b_hi): float32's accuracy at Tensor Core rather than FFMA speed.
- cpu attention (csrc/cpu/): "tiled" (online softmax over key tiles, brgemm tiles, LayerNorm epilogue), and the
  "gemm" and "gemm3xtf32" plans' CPU mirrors (the latter a model of TF32 rounding, for the tests).
- triton attention (kernels/): "flash" (whole-row accumulators, nothing but row statistics through memory) and
  "matmul" (the products as torch GEMMs, softmax, residual and LayerNorm in Triton row kernels).
- cuda lstm (csrc/cuda/lstm/): "fused" (persistent cluster kernels, a layer group's whole recurrence per launch)
  and "stepwise" (a cuBLAS product and an elementwise kernel per step).
- cpu lstm (csrc/cpu/): "fused" (lstm_fused.h: every layer's recurrence in one parallel region, a batch slice per
  thread, the step's product in a register-blocked kernel with the cell in its epilogue) and "stepwise" (lstm.cpp: an
  ATen product and a cell loop per step; the CUDA step kernels' CPU mirror for the tests, in no table row).

Forcing a plan: LSTM_ATTN_PLAN_<BACKEND>_<OP>=<plan>, e.g. LSTM_ATTN_PLAN_CUDA_ATTENTION=flash or
LSTM_ATTN_PLAN_CUDA_LSTM=stepwise, read once, when this module is first imported. A forced plan runs wherever it can;
the table decides elsewhere. That is how the plans are measured against each other. In one process, set
FORCED[(backend, op)] instead.
"""

from __future__ import annotations

import contextlib
import functools
import os
from dataclasses import dataclass
from typing import Callable

import torch

from lstm_attn import cpu_features
from lstm_attn.limits import (ALL_FLOATS as _ALL, FLASH_MAX_HEAD_DIM, FUSED_LSTM_MAX_HIDDEN, GPU_FLOATS as _GPU,
                              GPU_MAX_HEAD_DIM, HALF_FLOATS as _16BIT)


@dataclass(frozen=True)
class Capability:
    """What a plan can run whatever the table says: its dtypes, the largest H, and any question only the device
    can answer (a reason it cannot run there, or None)."""
    dtypes: tuple[torch.dtype, ...]
    max_size: int | None = None
    device_reason: Callable[[torch.dtype, int, torch.device], str | None] | None = None


@dataclass(frozen=True)
class Row:
    plan: str
    dtypes: tuple[torch.dtype, ...]
    max_size: int | None = None  # H: the attention's head dim, the LSTM's hidden size; None: any
    max_keys: int | None = None  # attention's Tk; None: any
    min_queries: int | None = None  # attention's Tq; None: any
    evidence: str = ""  # the measurement behind the row, or why there is none
    # Whether the evidence shows the plan faster than the reference backend (PyTorch's own op) at these inputs: where
    # it does, backend="auto" takes this backend (lstm_attn.backends).
    beats_reference: bool = False


_FP32_PRECISION = getattr(torch._C, "_get_fp32_precision_getter", None)  # per-operator settings (torch >= 2.9)


def cudnn_rnn_allows_tf32() -> bool:
    """Whether cuDNN's RNN may multiply float32 in TF32 (torch.backends.cudnn.rnn.fp32_precision, which
    torch.backends.cudnn.allow_tf32 sets too): the setting that picks the fused CUDA LSTM's float32 path, read as
    csrc/cuda/lstm/lstm.cu reads it. Not the operator-less flag, whose getter raises wherever the RNN and convolution
    settings differ."""
    if _FP32_PRECISION is None:
        return torch.backends.cudnn.allow_tf32
    return _FP32_PRECISION("cuda", "rnn") == "tf32"


@functools.cache
def _cuda_lstm_fused_reason(dtype: torch.dtype, hidden: int, device: torch.device, tf32: bool) -> str | None:
    # The fused kernels' shared memory and cluster size depend on the dtype's path, which for float32 is TF32 or
    # exact FFMA by cudnn_rnn_allows_tf32(): part of the key.
    return torch.ops.lstm_attn.cuda_lstm_fused_unsupported(dtype, hidden, device) or None


def _fused_lstm_device_reason(dtype: torch.dtype, hidden: int, device: torch.device) -> str | None:
    return _cuda_lstm_fused_reason(dtype, hidden, device, cudnn_rnn_allows_tf32())


def _cpu_lstm_avx2_reason(dtype: torch.dtype, hidden: int, device: torch.device) -> str | None:
    return None if cpu_features.cpu_simd() in ("avx2", "avx512") else "plan 'fused-avx2' needs a CPU with AVX2 and FMA"


CAN_RUN: dict[tuple[str, str], dict[str, Capability]] = {
    ("cuda", "attention"): {
        "tiled": Capability(_GPU, GPU_MAX_HEAD_DIM),
        "flash": Capability(_16BIT, FLASH_MAX_HEAD_DIM),
        "gemm": Capability(_GPU, GPU_MAX_HEAD_DIM),
        "gemm3xtf32": Capability((torch.float32,), GPU_MAX_HEAD_DIM),
    },
    ("cpu", "attention"): {
        "tiled": Capability(_ALL),
        "gemm": Capability(_ALL),
        "gemm3xtf32": Capability((torch.float32,)),
    },
    ("triton", "attention"): {
        "flash": Capability(_GPU, GPU_MAX_HEAD_DIM),
        "matmul": Capability(_GPU, GPU_MAX_HEAD_DIM),
    },
    ("cuda", "lstm"): {
        "fused": Capability(_GPU, FUSED_LSTM_MAX_HIDDEN, _fused_lstm_device_reason),
        "stepwise": Capability(_GPU),
    },
    ("cpu", "lstm"): {
        "fused": Capability(_ALL),
        # The fused plan with its float32 kernels capped below what the CPU has: tests and measurements of the
        # AVX2 and baseline kernels on a wider CPU.
        "fused-avx2": Capability(_ALL, device_reason=_cpu_lstm_avx2_reason),
        "fused-sse2": Capability(_ALL),
        "stepwise": Capability(_ALL),
    },
}

# The plans whose forward keeps the softmax (B, Tq, Tk) for the backward: the extension op's `probs` output.
KEEPS_PROBS = ("gemm", "gemm3xtf32")

_RUN5 = "benchmarks/results/bench-nvidia-h200-2026-11-27-run5.json"
_CPU_RUN = "benchmarks/results/cpu-intel-xeon-2026-12-06.json"
_CPU_LSTM_RUN = "benchmarks/results/cpu-intel-xeon-2026-12-06-f2f5d7e.json"

# First matching row whose plan can run wins. A row marked beats_reference is where backend="auto" takes this backend
# over the reference (lstm_attn.backends): its evidence shows the backend faster there. ‡: the H200 rows are eager wall
# times whose CUDA events were recorded without a synchronize (benchmarks/README.md), the only GPU measurement yet.
TABLES: dict[tuple[str, str], tuple[Row, ...]] = {
    # flash, gemm and gemm3xtf32 have not run on a GPU: until a run checks and measures them, every row keeps the
    # plan that has, and they are reached by forcing them. Speedups are over the reference, forward+backward.
    ("cuda", "attention"): (
        Row("tiled", (torch.bfloat16,), 64, beats_reference=True, evidence=f"{_RUN5}‡: 3.66x at T = 256, 2.28x at "
            "T = 1024; flash is the candidate (untested on GPU)"),
        Row("tiled", (torch.bfloat16,), 256, max_keys=256, beats_reference=True, evidence=f"{_RUN5}‡: 2.38x at "
            "H = 128, 2.24x at H = 256, T = 256"),
        Row("tiled", _16BIT, 128, evidence=f"{_RUN5}‡: 0.94x at H = 128, T = 1024; float16 unmeasured; flash is the "
            "candidate (untested on GPU)"),
        Row("tiled", _16BIT, 256, evidence=f"{_RUN5}‡: 0.46x at T = 1024; gemm is the candidate for T >= 1024 "
            "(untested on GPU)"),
        Row("tiled", _16BIT, 512, evidence=f"{_RUN5}‡: 0.77x (T = 256), 0.23x (T = 1024); gemm is the candidate "
            "(untested on GPU)"),
        Row("tiled", (torch.float32,), 64, beats_reference=True, evidence=f"{_RUN5}‡: 3.24x at T = 256, 1.19x at "
            "T = 1024"),
        Row("tiled", (torch.float32,), 512, evidence=f"{_RUN5}‡: 0.12-0.91x at H >= 128; gemm and gemm3xtf32 are the "
            "candidates (untested on GPU)"),
    ),
    ("cpu", "attention"): (
        Row("tiled", _ALL, beats_reference=True, evidence="benchmarks/results/cpu-amd-epyc-2026-11-27.json: 0.96-1.31x "
            "eager PyTorch at T 64-256, H 64 and 128, float32; the model's last step (softmax_pool) 1.3-1.4x in "
            f"{_CPU_RUN}; gemm and gemm3xtf32 mirror the CUDA plans for the tests"),
    ),
    # A single query row (the model's last step) has no GEMM to gain: it takes the flash plan at every H.
    ("triton", "attention"): (
        Row("flash", _GPU, FLASH_MAX_HEAD_DIM, evidence="untested on GPU since the H200 runs: a first guess from "
            f"{_RUN5}, where whole-row accumulators kept the fused backends fast up to H = 128"),
        Row("matmul", _GPU, GPU_MAX_HEAD_DIM, min_queries=16, evidence=f"untested on GPU: a first guess from "
            f"{_RUN5}, where the reference's cuBLAS products beat both fused backends from H = 256 on"),
        Row("flash", _GPU, GPU_MAX_HEAD_DIM, evidence="Tq < 16: no GEMM to gain"),
    ),
    ("cuda", "lstm"): (
        Row("fused", _GPU, FUSED_LSTM_MAX_HIDDEN, evidence="untested on GPU"),
        Row("stepwise", _GPU, evidence="the fallback: every size the fused kernels do not take"),
    ),
    ("cpu", "lstm"): (
        Row("fused", (torch.float32,), 256, beats_reference=True, evidence=f"{_CPU_LSTM_RUN}: "
            "forward+backward 1.87-3.61x oneDNN's LSTM at B 16-256, H 64 and 128 (2 threads, Xeon AVX-512), forward "
            "alone 1.55-2.31x, the model's step 2.66-3.55x the original's; with a caching malloc for both (its "
            "-malloc-cached file) 1.17-2.43x, 1.22-2.31x and 1.95-2.51x. H 129-256 unmeasured, by extension. The AVX2 "
            "kernels (what an AVX2-only CPU runs) forced on the same Xeon (-f2f5837-fused-avx2.json): forward+backward "
            "1.28-2.08x, forward alone 0.71-1.13x, against oneDNN's AVX-512; no AVX2-only CPU measured yet"),
        Row("fused", _ALL, evidence="float64 (for gradcheck), 16-bit and H > 256 run the same structure (16-bit and "
            "float64 in scalar code) unmeasured against oneDNN: auto keeps PyTorch's LSTM there"),
    ),
}

# Plan names that earlier versions read from these variables; set, they are refused with the new name.
_RENAMED = {"LSTM_ATTN_CUDA_PLAN": "LSTM_ATTN_PLAN_CUDA_ATTENTION", "LSTM_ATTN_TRITON_PLAN":
            "LSTM_ATTN_PLAN_TRITON_ATTENTION", "LSTM_ATTN_LSTM_PLAN": "LSTM_ATTN_PLAN_CUDA_LSTM"}


def variable(backend: str, op: str) -> str:
    """The environment variable that forces a plan of `op` on `backend`."""
    return f"LSTM_ATTN_PLAN_{backend.upper()}_{op.upper()}"


def _read_forced(environ=os.environ) -> dict[tuple[str, str], str | None]:
    for old, new in _RENAMED.items():
        if environ.get(old):
            raise ValueError(f"{old} was renamed {new}; set that instead")
    forced = {}
    for key, plans in CAN_RUN.items():
        name = environ.get(variable(*key)) or None
        if name is not None and name not in plans:
            raise ValueError(f"{variable(*key)} must be one of {', '.join(plans)}; got {name!r}")
        forced[key] = name
    return forced


FORCED = _read_forced()


def why_not(backend: str, op: str, plan: str, dtype: torch.dtype, size: int,
            device: torch.device | None = None) -> str | None:
    """Why `plan` cannot run these inputs, or None where it can. The device is asked only where needed and given."""
    cap = CAN_RUN[(backend, op)].get(plan)
    if cap is None:
        return f"{backend} {op} has no plan {plan!r}; its plans are {', '.join(CAN_RUN[(backend, op)])}"
    if dtype not in cap.dtypes:
        return f"plan {plan!r} runs {', '.join(str(d).removeprefix('torch.') for d in cap.dtypes)}, not {dtype}"
    if cap.max_size is not None and size > cap.max_size:
        return f"plan {plan!r} takes H up to {cap.max_size}, got H = {size}"
    if cap.device_reason is not None and device is not None:
        return cap.device_reason(dtype, size, device)
    return None


def can_run(backend: str, op: str, plan: str, dtype: torch.dtype, size: int,
            device: torch.device | None = None) -> bool:
    return why_not(backend, op, plan, dtype, size, device) is None


def choose(backend: str, op: str, dtype: torch.dtype, size: int, *, queries: int | None = None,
           keys: int | None = None, device: torch.device | None = None) -> str:
    """The plan for `op` on `backend` with inputs of this dtype and H (`size`), and for attention Tq and Tk."""
    # Every eager call asks: the answers are kept, keyed by all they depend on (the forced plan, and for the CUDA
    # LSTM the TF32 flag that sets its kernels' path).
    tf32 = cudnn_rnn_allows_tf32() if (backend, op) == ("cuda", "lstm") else None
    return _choose(backend, op, dtype, size, queries, keys, device, FORCED.get((backend, op)), tf32)


@functools.lru_cache(maxsize=4096)
def _choose(backend, op, dtype, size, queries, keys, device, forced, _tf32) -> str:
    if forced is not None and can_run(backend, op, forced, dtype, size, device):
        return forced
    return _row(backend, op, dtype, size, queries, keys, device).plan


def _row(backend, op, dtype, size, queries=None, keys=None, device=None) -> Row:
    for row in TABLES[(backend, op)]:
        if (dtype in row.dtypes and (row.max_size is None or size <= row.max_size)
                and (row.max_keys is None or keys is None or keys <= row.max_keys)
                and (row.min_queries is None or (queries is not None and queries >= row.min_queries))
                and can_run(backend, op, row.plan, dtype, size, device)):
            return row
    raise ValueError(f"no {backend} {op} plan for {dtype} with H = {size}")


@functools.lru_cache(maxsize=1024)
def beats_reference(backend: str, op: str, dtype: torch.dtype, size: int, keys: int | None = None) -> bool:
    """Whether the table's row for these inputs says its plan was measured faster than the reference backend."""
    try:
        return _row(backend, op, dtype, size, keys=keys).beats_reference
    except ValueError:  # no plan takes these inputs: the backend refuses them anyway
        return False


@contextlib.contextmanager
def forcing(backend: str, op: str, plan: str | None):
    """Within the block, `plan` is forced for `op` on `backend` (None: the table decides), as the environment
    variable would force it for a whole process."""
    if plan is not None and plan not in CAN_RUN[(backend, op)]:
        raise ValueError(f"{backend} {op} has no plan {plan!r}; its plans are {', '.join(CAN_RUN[(backend, op)])}")
    saved = FORCED[(backend, op)]
    FORCED[(backend, op)] = plan
    try:
        yield
    finally:
        FORCED[(backend, op)] = saved


def forced_summary() -> dict[str, str]:
    """The plans forced in this process, as "backend.op": plan (for result files); empty where tables decide."""
    return {f"{backend}.{op}": plan for (backend, op), plan in FORCED.items() if plan is not None}
