"""lstm_attn's Triton kernels (installed as lstm_attn.kernels): kernels, their launchers, and a plain
autograd.Function per op for eager calls.

Launchers allocate and launch, with no torch arithmetic between the flash plan's kernels. Each takes traced=True
inside the torch.library.triton_op bodies of lstm_attn.ops (launches through wrap_triton, so torch.compile and
export trace them); eager calls (the autograd.Functions) launch through per-shape replays (_launch.py).

Importing this package imports triton; without triton the ImportError propagates (lstm_attn.ops reports it as
the reason the "triton" backend is unavailable). Set TRITON_INTERPRET=1 before the import to run the kernels
on CPU tensors in Triton's interpreter.
"""

from ._common import check_launch
from .attention_layernorm import AttentionLayerNormFunction, attention_layernorm_bwd, attention_layernorm_fwd
from .softmax_pool import SoftmaxPoolFunction, softmax_pool_bwd, softmax_pool_fwd

__all__ = ["AttentionLayerNormFunction", "SoftmaxPoolFunction", "attention_layernorm_bwd", "attention_layernorm_fwd",
           "check_launch", "softmax_pool_bwd", "softmax_pool_fwd"]
