"""lstm_attn: fused attention + residual + LayerNorm kernels behind the seed's LSTMWithAttention API."""

from lstm_attn.backends import available_backends
from lstm_attn.functional import attention_layernorm, softmax_pool

__version__ = "0.1.0"

__all__ = ["attention_layernorm", "available_backends", "softmax_pool", "__version__"]
