"""The optional dependencies, by the extra of pyproject.toml that installs them. The core is torch and
pytorch-lightning; a feature that needs more imports it through `require`, so that a missing one is one line
naming the extra to install, never a traceback."""

from __future__ import annotations

import importlib
from types import ModuleType

EXTRA_OF = {
    "pandas": "train", "statsmodels": "train",
    "matplotlib": "bench",
    "onnx": "onnx", "onnxscript": "onnx", "onnxruntime": "onnx",
    "triton": "triton",
}


class MissingExtra(ImportError):
    """An optional dependency is not installed; the message names the extra that installs it."""


def install_hint(module: str) -> str:
    return f"pip install 'lstm_attn[{EXTRA_OF[module.split('.')[0]]}]'"


def require(module: str, what: str) -> ModuleType:
    """`module`, imported; MissingExtra saying that `what` needs it, and how to install it, where it is missing."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        top = module.split(".")[0]
        raise MissingExtra(f"{what} needs {top}, which is not installed: {install_hint(top)}") from exc
