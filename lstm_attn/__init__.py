"""lstm_attn: fused attention + residual + LayerNorm and LSTM kernels behind the seed's LSTMWithAttention API."""

from lstm_attn.backends import available_backends
from lstm_attn.functional import attention_layernorm, lstm, softmax_pool

__version__ = "0.1.0"

__all__ = ["AttentionLayer", "LSTMWithAttention", "attention_layernorm", "available_backends", "lstm", "softmax_pool",
           "__version__"]


def __getattr__(name):
    # The model classes import Lightning: loaded on first use, so `import lstm_attn` and `lstm-attn report` stay light.
    if name in ("LSTMWithAttention", "AttentionLayer"):
        from lstm_attn import modules

        return getattr(modules, name)
    raise AttributeError(f"module 'lstm_attn' has no attribute {name!r}")
