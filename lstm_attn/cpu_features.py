"""What this machine's CPU can do, where it decides what runs: probed once per process, never read off its name.

x86 hosts of one kind differ in ways that change which code paths PyTorch can take (AVX2 against AVX-512,
oneDNN with or without a bfloat16 or float16 LSTM primitive). The package asks here instead of assuming, and
falls back or refuses with the reason; `describe()` lists the answers for result files and bug reports.
"""

from __future__ import annotations

import functools

import torch


@functools.cache
def _cpu_autocast_lstm_error(dtype: torch.dtype) -> str | None:
    lstm = torch.nn.LSTM(2, 4, batch_first=True)
    x = torch.zeros(1, 2, 2)
    try:
        with torch.autocast("cpu", dtype=dtype):
            out, _ = lstm(x)
        out.float().sum().backward()
    except RuntimeError as exc:
        # oneDNN's first sentence ("could not create a primitive descriptor for the LSTM forward propagation
        # primitive") says it; the rest is advice about its verbose mode.
        return str(exc).split(". ")[0].splitlines()[0]
    return None


@torch.compiler.assume_constant_result
def cpu_autocast_lstm_error(dtype: torch.dtype) -> str | None:
    """Why nn.LSTM cannot run under torch.autocast("cpu", dtype) here, or None where it can.

    Under CPU autocast PyTorch runs the LSTM through oneDNN in `dtype`; oneDNN builds that primitive only
    on CPUs with the instructions for it (AVX-512 BF16/FP16 or AMX), and raises on the others (AVX2-only AMD
    EPYC, for one). The answer is a property of the host: a tiny LSTM is tried once and the result kept.
    """
    return _cpu_autocast_lstm_error(dtype)


def cpu_simd() -> str:
    """The widest vector instruction set of this CPU that torch dispatches to: "avx512", "avx2" or "default". The
    fused CPU LSTM picks its float32 kernels from the same cpuid bits (AVX-512 F/BW/VL/DQ; AVX2 with FMA; else
    SSE2); its plans "fused-avx2" and "fused-sse2" cap them below what the CPU has."""
    return torch.backends.cpu.get_cpu_capability().lower()


def describe() -> dict:
    """The CPU facts the package depends on, as plain values (recorded with every CPU benchmark)."""
    return {
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_simd": cpu_simd(),
        "torch_threads": torch.get_num_threads(),
        "autocast_lstm": {
            str(dtype).removeprefix("torch."): cpu_autocast_lstm_error(dtype) or "supported"
            for dtype in (torch.bfloat16, torch.float16)
        },
    }
