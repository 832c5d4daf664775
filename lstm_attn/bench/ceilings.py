"""The device's own ceilings, measured at the start of a run: memory bandwidth and matrix rate.

Each row's GB/s and TFLOP/s are reported as a fraction of these, so a number says how close a kernel
comes to what this very device did a minute earlier, not to a datasheet.
"""

from __future__ import annotations

import torch

from lstm_attn.bench.cases import DTYPES, precision
from lstm_attn.bench.timing import Budget, measure_eager, measure_graph

# Sizes large enough to reach steady state, small enough to stay well under five seconds in all.
_COPY_BYTES = {"cuda": 2**30, "cpu": 2**28}
_MATMUL_N = {"cuda": 8192, "cpu": 2048}
_QUICK_DIVISOR = 4
_BUDGET = Budget(warmup_ms=20, rep_ms=100, min_reps=3, max_reps=50)


def _device_time(run, device: torch.device):
    # The rows' device time is graph replay on a GPU; the ceilings are measured the same way.
    return (measure_graph if device.type == "cuda" else measure_eager)(run, device, budget=_BUDGET)


def measure_ceilings(device: torch.device, dtype_labels: list[str], quick: bool = False) -> dict:
    """Copy bandwidth and, per dtype label of lstm_attn.bench.cases (TF32 on or off for float32), matmul rate."""
    copy_bytes = _COPY_BYTES[device.type] // (_QUICK_DIVISOR if quick else 1)
    src = torch.empty(copy_bytes, dtype=torch.uint8, device=device).random_()
    dst = torch.empty_like(src)
    copy = _device_time(lambda i: dst.copy_(src), device)
    del src, dst

    n = _MATMUL_N[device.type] // (_QUICK_DIVISOR if quick else 1)
    matmul = {}
    for label in dtype_labels:
        a = torch.randn(n, n, device=device).to(DTYPES[label])
        b = torch.randn(n, n, device=device).to(DTYPES[label])
        with precision(label):
            t = _device_time(lambda i: torch.mm(a, b), device)
        matmul[label] = 2 * n**3 / (t.p50 * 1e-3) / 1e12
    return {
        "copy_gbps": 2 * copy_bytes / (copy.p50 * 1e-3) / 1e9,
        "matmul_tflops": matmul,
        "method": (f"copy: median time of dst.copy_(src) on {copy_bytes / 2**20:.0f} MiB, counting bytes read + "
                   f"written; matmul: median time of torch.mm on {n}x{n} matrices, 2*n^3 FLOPs, per dtype label "
                   f"(float32 with TF32 off, float32-tf32 with it on); "
                   f"{'CUDA-graph replay' if device.type == 'cuda' else 'wall time'}"),
    }
