"""Which implementation runs: the backends, what each supports, and the choice behind backend="auto".

The modules and the public functions ask this module for a backend by name; none of them knows which
kernel runs underneath.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from lstm_attn import cpu_features, limits, ops, plans, reference_ops

BACKENDS = ("reference", "cpu", "cuda", "triton")

# The order "auto" tries on each device type: fastest first.
AUTO_ORDER = {"cuda": ("cuda", "triton", "reference"), "cpu": ("cpu", "reference")}

# "auto" walks the order of the device and the op and takes the first backend that can run the inputs and, but for the
# reference, whose plan table (lstm_attn/plans.py) marks them beats_reference: a measurement, named on the row,
# showed it faster than the reference there. On a GPU that is so far the cuda backend's attention at a few shapes;
# on a CPU the cpu backend's attention and its float32 LSTM.
AUTO_LSTM_ORDER = {"cuda": ("cuda", "reference"), "cpu": ("cpu", "reference")}

# Backends seen to fail on a given GPU architecture: "auto" skips them there and available_backends says why.
# Filled from real runs only (see benchmarks/device_check.sh); key (backend, "sm_XY").
KNOWN_FAILURES: dict[tuple[str, str], str] = {}



@dataclass(frozen=True)
class BackendStatus:
    available: bool
    reason: str = ""

    def __repr__(self) -> str:
        return "available" if self.available else f"unavailable: {self.reason}"


@dataclass(frozen=True)
class Backend:
    name: str
    status: Callable[[torch.device], BackendStatus]
    attention_layernorm: Callable
    softmax_pool: Callable
    lstm: Callable | None = None  # lstm_attn.lstm's implementation, if the backend has one

    def unsupported_reason(self, dtype: torch.dtype, head_dim: int, op: str = "attention") -> str | None:
        if op == "lstm" and self.lstm is None:
            return f"backend {self.name!r} has no LSTM kernels"
        dtypes, max_head_dim = limits.BACKENDS[self.name].dtypes, limits.BACKENDS[self.name].max_head_dim
        if dtype not in dtypes:
            return f"backend {self.name!r} supports {', '.join(map(str, dtypes))}, not {dtype}"
        # The CUDA LSTM serves any H: past its fused kernels' sizes it runs step by step.
        if op == "attention" and max_head_dim is not None and head_dim > max_head_dim:
            return f"backend {self.name!r} supports H up to {max_head_dim}, got H = {head_dim}"
        return None


def _arch(device: torch.device) -> str:
    major, minor = torch.cuda.get_device_capability(device)
    return f"sm_{major}{minor}"


def _reference_status(device: torch.device) -> BackendStatus:
    return BackendStatus(True)


def _cpu_status(device: torch.device) -> BackendStatus:
    if ops.EXTENSION_ERROR:
        return BackendStatus(False, ops.EXTENSION_ERROR)
    if device.type != "cpu":
        return BackendStatus(False, f"runs on CPU tensors, not {device.type}")
    return BackendStatus(True)


def _cuda_device_reason(device: torch.device) -> str | None:
    if device.type != "cuda":
        return f"runs on CUDA tensors, not {device.type}"
    if not torch.cuda.is_available():
        return "no CUDA GPU is visible to torch"
    return None


# Read once at import: torch.compile traces the backend choice, and cannot trace this query into a graph.
_CUDA_KERNELS_BUILT = ops.EXTENSION_ERROR is None and torch._C._dispatch_has_kernel_for_dispatch_key(
    "lstm_attn::attention_layernorm_fwd", "CUDA")


def _known_failure(backend: str, device: torch.device) -> str | None:
    return KNOWN_FAILURES.get((backend, _arch(device))) if KNOWN_FAILURES else None


def _cuda_status(device: torch.device) -> BackendStatus:
    if ops.EXTENSION_ERROR:
        return BackendStatus(False, ops.EXTENSION_ERROR)
    if not _CUDA_KERNELS_BUILT:
        return BackendStatus(False, "the extension was built without CUDA kernels (no nvcc or a CPU-only torch "
                                    "at build time; LSTM_ATTN_CUDA=1 makes the build require them)")
    reason = _cuda_device_reason(device)
    if reason:
        return BackendStatus(False, reason)
    failure = _known_failure("cuda", device)
    return BackendStatus(False, failure) if failure else BackendStatus(True)


def triton_interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _triton_status(device: torch.device) -> BackendStatus:
    if ops.TRITON_ERROR:
        return BackendStatus(False, ops.TRITON_ERROR)
    if device.type == "cpu" and triton_interpreting():
        return BackendStatus(True)
    reason = _cuda_device_reason(device)
    if reason:
        return BackendStatus(False, reason + " (CPU tensors need TRITON_INTERPRET=1 set before import)")
    failure = _known_failure("triton", device)
    return BackendStatus(False, failure) if failure else BackendStatus(True)


def _extension_attention_layernorm(q, k, v, residual, weight, bias, eps, scale):
    plan = plans.choose(q.device.type, "attention", q.dtype, q.shape[-1], queries=q.shape[-2], keys=k.shape[-2])
    return torch.ops.lstm_attn.attention_layernorm_fwd(q, k, v, residual, weight, bias, eps, scale, plan)[0]


def _extension_softmax_pool(x, u, c):
    return torch.ops.lstm_attn.softmax_pool_fwd(x, u, c)[0]


# Triton: torch.compile and export trace the triton_op registrations; eager calls take a plain autograd.Function
# over the same launchers and kernels (bitwise the same results), at a fraction of the custom-op layers' host cost.
def _triton_attention_layernorm(q, k, v, residual, weight, bias, eps, scale):
    plan = plans.choose("triton", "attention", q.dtype, q.shape[-1], queries=q.shape[-2], keys=k.shape[-2])
    if torch.compiler.is_compiling():
        return torch.ops.lstm_attn.triton_attention_layernorm_fwd(q, k, v, residual, weight, bias, eps, scale,
                                                                  plan)[0]
    return ops.triton_kernels.AttentionLayerNormFunction.apply(q, k, v, residual, weight, bias, eps, scale, plan)


def _triton_softmax_pool(x, u, c):
    if torch.compiler.is_compiling():
        return torch.ops.lstm_attn.triton_softmax_pool_fwd(x, u, c)[0]
    return ops.triton_kernels.SoftmaxPoolFunction.apply(x, u, c)


def _dropout_mask(x: Tensor, layers: int, hidden_size: int, p: float, training: bool) -> Tensor | None:
    """The inter-layer dropout mask (layers - 1, T, B, H): what nn.LSTM's dropout draws, layer after layer, on each
    layer's time-major output, so that on CPU the same seed gives the same mask (torch.dropout of ones: 0 or
    1 / (1 - p))."""
    if not training or p == 0 or layers == 1:
        return None
    B, T = x.shape[:2]
    return torch.stack([torch.dropout(x.new_ones(T, B, hidden_size), p, True) for _ in range(layers - 1)])


_warned_autocast_fallback: set[torch.dtype] = set()

# Under torch.compile, PyTorch's CPU LSTM runs outside the graph, as it does in a compiled model that calls an
# nn.LSTM (Dynamo leaves RNN modules to eager: torch._dynamo.config.allow_rnn is off). Traced, Inductor's lowering of
# its oneDNN layer op fails whenever the input needs no gradient (torch 2.13: "expected Tensor() for op:
# torch.ops.aten.mkldnn_rnn_layer.default"). cuDNN's traces: on a GPU the call stays in the graph. torch.export,
# which compiles nothing, keeps it in its graph too.
_eager_reference_lstm = torch.compiler.disable(reference_ops.lstm, recursive=True)


def _reference_lstm(x, weights, h0, c0, dropout, training):
    """PyTorch's LSTM, or, under CPU autocast on a CPU whose oneDNN has no LSTM in the autocast dtype, PyTorch's LSTM
    with autocast off, in the weights' dtype. The original model raises there; ours trains, with the rest of the
    model (the Linear layers, the attention) still under autocast. Said once per process and dtype."""
    if x.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
        dtype = torch.get_autocast_dtype("cpu")
        reason = cpu_features.cpu_autocast_lstm_error(dtype)
        if reason is not None:
            if dtype not in _warned_autocast_fallback:
                _warned_autocast_fallback.add(dtype)
                warnings.warn(f"this CPU cannot run nn.LSTM under {dtype} autocast (oneDNN: {reason}); "
                              f"LSTMWithAttention runs its LSTM in {weights[0].dtype} there and keeps "
                              f"autocast for the rest of the model", RuntimeWarning)
            with torch.autocast("cpu", enabled=False):
                dtype = weights[0].dtype
                return reference_ops.lstm(x.to(dtype), weights, None if h0 is None else h0.to(dtype),
                                          None if c0 is None else c0.to(dtype), dropout, training)
    if x.device.type == "cpu" and torch.compiler.is_compiling() and not torch.compiler.is_exporting():
        return _eager_reference_lstm(x, weights, h0, c0, dropout, training)
    return reference_ops.lstm(x, weights, h0, c0, dropout, training)


def _extension_lstm(x, weights, h0, c0, dropout, training):
    # PyTorch's autocast has no rule for this op: it runs in the autocast dtype (where torch's own LSTM would run in
    # float16 on CUDA whatever the autocast dtype), the casts staying in the autograd graph.
    if torch.is_autocast_enabled(x.device.type):
        dtype = torch.get_autocast_dtype(x.device.type)
        x, h0, c0 = (None if t is None else t.to(dtype) for t in (x, h0, c0))
        weights = [w.to(dtype) for w in weights]
    L, B, H = len(weights) // 4, x.shape[0], weights[1].shape[1]
    zeros = x.new_zeros(L, B, H)
    plan = plans.choose(x.device.type, "lstm", x.dtype, H, device=x.device)
    output, h_n, c_n, *_ = torch.ops.lstm_attn.lstm_fwd(x, weights, zeros if h0 is None else h0,
                                                        zeros if c0 is None else c0,
                                                        _dropout_mask(x, L, H, dropout, training), False, plan)
    return output, (h_n, c_n)


_REGISTRY = {
    b.name: b
    for b in (
        Backend("reference", _reference_status, reference_ops.attention_layernorm, reference_ops.softmax_pool,
                _reference_lstm),
        Backend("cpu", _cpu_status, _extension_attention_layernorm, _extension_softmax_pool, _extension_lstm),
        Backend("cuda", _cuda_status, _extension_attention_layernorm, _extension_softmax_pool, _extension_lstm),
        Backend("triton", _triton_status, _triton_attention_layernorm, _triton_softmax_pool),
    )
}


def _as_device(device) -> torch.device:
    device = torch.device(device)
    if device.type == "cuda" and device.index is None and torch.cuda.is_available():
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def available_backends(device="cpu") -> dict[str, BackendStatus]:
    """Every backend's status on `device`: available, or why not (not built, no GPU, known to fail here)."""
    device = _as_device(device)
    return {name: backend.status(device) for name, backend in _REGISTRY.items()}


def check_backend_name(backend: str) -> None:
    if backend != "auto" and backend not in _REGISTRY:
        raise ValueError(f"backend must be 'auto' or one of {', '.join(map(repr, BACKENDS))}; got {backend!r}")


# resolve's answers by (backend, device, dtype, head_dim, op, keys). Nothing a choice depends on changes in a running
# process (what was built, the devices, KNOWN_FAILURES), and every eager op call asks: on the triton path the
# uncached choice cost about a tenth of the call's host time.
_RESOLVED: dict[tuple, Backend] = {}


def resolve(backend: str, device, dtype: torch.dtype, head_dim: int, op: str = "attention",
            keys: int | None = None) -> Backend:
    """The backend that will run for these inputs; a clear error if the one asked for cannot.

    op: "attention" (attention_layernorm and softmax_pool; head_dim is H, keys the sequence length Tk where known) or
    "lstm" (head_dim is the hidden size).
    """
    key = (backend, device, dtype, head_dim, op, keys)
    chosen = _RESOLVED.get(key)
    if chosen is None:
        chosen = _RESOLVED[key] = _resolve(backend, device, dtype, head_dim, op, keys)
    return chosen


def _resolve(backend: str, device, dtype: torch.dtype, head_dim: int, op: str, keys: int | None) -> Backend:
    check_backend_name(backend)
    device = _as_device(device)
    if backend == "auto":
        order = AUTO_LSTM_ORDER if op == "lstm" else AUTO_ORDER
        for name in order.get(device.type, ("reference",)):
            candidate = _REGISTRY[name]
            if name != "reference" and not plans.beats_reference(name, op, dtype, head_dim, keys):
                continue
            if candidate.status(device).available and candidate.unsupported_reason(dtype, head_dim, op) is None:
                return candidate
        return _REGISTRY["reference"]
    chosen = _REGISTRY[backend]
    status = chosen.status(device)
    if not status.available:
        raise RuntimeError(f"backend={backend!r} is not available on {device}: {status.reason}")
    reason = chosen.unsupported_reason(dtype, head_dim, op)
    if reason:
        raise ValueError(reason)
    return chosen


def has_lstm(backend: str) -> bool:
    return _REGISTRY[backend].lstm is not None
