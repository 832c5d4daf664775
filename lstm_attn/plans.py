"""Which kernel plan the `cuda` backend runs attention_layernorm with: one table, chosen per call by (dtype, H, Tk).

The plans (the extension op's `plan` argument; csrc/checks.h):
- "tiled": the first CUDA design (csrc/cuda/attention/tiled/): WMMA tiles for 16-bit and TF32, exact SIMT FFMA tiles
  for float32, online softmax, LayerNorm in the forward's epilogue; a dK/dV and a dQ kernel in the backward, which
  recompute the scores. Memory O(B * T * H).
- "flash": FlashAttention-2's structure with mma.sync (csrc/cuda/attention/flash/): 16-bit inputs, H <= 128.
  Memory O(B * T * H).
- "gemm": the six products through cuBLAS with fused kernels between them (csrc/attention_gemm.h). Keeps the softmax
  (B, Tq, Tk) from forward to backward: memory O(B * Tq * Tk).
- "gemm3xtf32": the gemm plan, float32 only, with each product split into three TF32 products on the Tensor Cores
  (x = x_hi + x_lo; a_hi b_lo + a_lo b_hi + a_hi b_hi): float32's accuracy (the 1e-5 parity rule) where one TF32
  product is not, at Tensor Core rather than FFMA speed. Never chosen by the table until a GPU run shows it both
  within the rule and faster; LSTM_ATTN_CUDA_PLAN=gemm3xtf32 turns it on, unsetting it turns it off.

Each row says what chose it and which plan is the candidate to replace it once a GPU run has checked and measured
that plan (none of flash, gemm and gemm3xtf32 has run on a GPU yet). Boundaries in Tk are left open (None) until a
measurement sets them. LSTM_ATTN_CUDA_PLAN=tiled|flash|gemm|gemm3xtf32, read at import, forces one plan wherever it
can run (the table decides elsewhere): how the plans are measured against each other.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

PLANS = ("tiled", "flash", "gemm", "gemm3xtf32")
# The plans whose forward keeps the softmax (B, Tq, Tk) for the backward: the op's `probs` output (csrc's is_gemm).
KEEPS_PROBS = ("gemm", "gemm3xtf32")
_16BIT = (torch.bfloat16, torch.float16)

# What each plan can run, whatever the table says: dtypes and the largest H.
CAN_RUN = {
    "tiled": ((torch.float32, *_16BIT), 512),
    "flash": (_16BIT, 128),
    "gemm": ((torch.float32, *_16BIT), 512),
    "gemm3xtf32": ((torch.float32,), 512),
}


@dataclass(frozen=True)
class Row:
    dtypes: tuple[torch.dtype, ...]
    max_head_dim: int
    max_keys: int | None  # None: any Tk
    plan: str
    why: str


# First matching row wins. Measurements: benchmarks/results/bench-nvidia-h200-2026-11-27-run5.json (run 5, H200,
# forward+backward, 16k tokens; "x ref" is the speedup over the reference).
CUDA_PLANS = (
    # flash and gemm have not run on a GPU: until a run checks and measures them (device_check.sh with PLANS=1),
    # every row keeps the plan that has, and they are reached through LSTM_ATTN_CUDA_PLAN alone.
    Row(_16BIT, 128, None, "tiled", "run 5: 0.94-3.66x ref (T = 256, 1024), under SDPA at T = 1024, H = 128; "
        "flash is the candidate"),
    Row(_16BIT, 256, None, "tiled", "run 5: 2.24x ref at T = 256, 0.46x at T = 1024; gemm is the candidate for "
        "T >= 1024"),
    Row(_16BIT, 512, None, "tiled", "run 5: 0.23x ref (T = 1024) and 0.77x (T = 256); gemm is the candidate"),
    Row((torch.float32,), 64, None, "tiled", "run 5: 3.24x ref at T = 256, 1.19x at T = 1024"),
    Row((torch.float32,), 512, None, "tiled", "run 5: 0.12-0.91x ref at H >= 128; gemm and gemm3xtf32 are "
        "the candidates"),
)


def _forced_plan() -> str | None:
    forced = os.environ.get("LSTM_ATTN_CUDA_PLAN") or None
    if forced is not None and forced not in PLANS:
        raise ValueError(f"LSTM_ATTN_CUDA_PLAN must be one of {', '.join(PLANS)}; got {forced!r}")
    return forced


FORCED = _forced_plan()


def can_run(plan: str, dtype: torch.dtype, head_dim: int) -> bool:
    dtypes, max_head_dim = CAN_RUN[plan]
    return dtype in dtypes and head_dim <= max_head_dim


def cuda_plan(dtype: torch.dtype, head_dim: int, keys: int) -> str:
    """The plan for inputs of this dtype, head dim H and key length Tk."""
    if FORCED is not None and can_run(FORCED, dtype, head_dim):
        return FORCED
    for row in CUDA_PLANS:
        if dtype in row.dtypes and head_dim <= row.max_head_dim and (row.max_keys is None or keys <= row.max_keys):
            return row.plan
    raise ValueError(f"no CUDA plan for {dtype} with H = {head_dim}: the cuda backend takes float32, bfloat16 and "
                     f"float16 up to H = {max(row.max_head_dim for row in CUDA_PLANS)}")
