"""What each backend's kernels take, written once for Python: dtypes and the largest sizes.

csrc/kernel_limits.h holds the same numbers for the C++ and CUDA guards, and the Triton kernels read them from here;
tests/test_plans.py checks that the header and this file agree. Everything above the kernels refuses what lies
outside these limits before any kernel runs (lstm_attn.validation, lstm_attn.backends, lstm_attn.plans).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

ALL_FLOATS = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
GPU_FLOATS = (torch.float32, torch.bfloat16, torch.float16)
HALF_FLOATS = (torch.bfloat16, torch.float16)

# The largest head dim of the GPU attention and softmax_pool kernels (CUDA and Triton; kMaxHeadDim).
GPU_MAX_HEAD_DIM = 512
# The largest head dim of the CUDA flash attention plan (kFlashMaxHeadDim).
FLASH_MAX_HEAD_DIM = 128
# The largest hidden size of the fused CUDA LSTM kernels (kFusedLstmMaxHidden); the stepwise plan takes any.
FUSED_LSTM_MAX_HIDDEN = 256


@dataclass(frozen=True)
class Limits:
    dtypes: tuple[torch.dtype, ...]
    max_head_dim: int | None  # attention_layernorm and softmax_pool; None: any. The LSTM takes any hidden size.


BACKENDS = {
    "reference": Limits(ALL_FLOATS, None),
    "cpu": Limits(ALL_FLOATS, None),
    "cuda": Limits(GPU_FLOATS, GPU_MAX_HEAD_DIM),
    "triton": Limits(GPU_FLOATS, GPU_MAX_HEAD_DIM),
}
