"""lstm_attn: fused attention + residual + LayerNorm and LSTM kernels behind the original LSTMWithAttention API."""

import importlib

__version__ = "0.1.0"

# Every public name is loaded on first use: `import lstm_attn` imports neither torch nor Lightning, so the
# `lstm-attn` command (lstm_attn.cli) parses its options and answers --help and --version at once. The first use
# of any name below, or `import lstm_attn.ops`, registers the ops in torch.ops.lstm_attn.
_LAZY = {
    "available_backends": "lstm_attn.backends",
    "attention_layernorm": "lstm_attn.functional",
    "lstm": "lstm_attn.functional",
    "softmax_pool": "lstm_attn.functional",
    "empty_cache": "lstm_attn.functional",
    "AttentionLayer": "lstm_attn.modules",
    "LSTMWithAttention": "lstm_attn.modules",
}

__all__ = [*_LAZY, "__version__"]


def __getattr__(name):
    if name in _LAZY:
        value = globals()[name] = getattr(importlib.import_module(_LAZY[name]), name)
        return value
    # The submodules the package once imported eagerly (lstm_attn.backends, lstm_attn.ops, ...) are there on first
    # use too, for code that reaches them as attributes after `import lstm_attn`.
    if not name.startswith("__"):
        try:
            return importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{name}":
                raise
    raise AttributeError(f"module 'lstm_attn' has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *_LAZY])
