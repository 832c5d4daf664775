"""lstm_attn's Triton kernels (installed as lstm_attn.kernels): the launchers that lstm_attn.ops wraps in
torch.library.triton_ops. Launchers allocate, launch through wrap_triton and, for grad_weight/grad_bias, sum
per-program partials with torch: nothing depends on data, so torch.compile traces them.

Importing this package imports triton; without triton the ImportError propagates (lstm_attn.ops reports it as
the reason the "triton" backend is unavailable). Set TRITON_INTERPRET=1 before the import to run the kernels
on CPU tensors in Triton's interpreter.
"""

from .attention_layernorm import attention_layernorm_bwd, attention_layernorm_fwd
from .softmax_pool import softmax_pool_bwd, softmax_pool_fwd

__all__ = ["attention_layernorm_bwd", "attention_layernorm_fwd", "softmax_pool_bwd", "softmax_pool_fwd"]
