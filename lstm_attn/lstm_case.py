"""The LSTM's benchmark case: what a benchmark suite times for an `lstm` row, and what it records beside it.

    case = lstm_case("cuda", B=256, T=256, H=128, dtype=torch.bfloat16, mode="graph")
    case.run()        # one forward + backward (in graph mode, one replay of a captured one)
    case.results()    # output, h_n, c_n and the gradients of x and every weight from the last run
    case.flops        # the LSTM's matrix-product FLOPs per run

Providers:
  reference      PyTorch's LSTM, lstm_attn.reference.lstm: cuDNN on a GPU (the peer), oneDNN on a CPU
  cuda           lstm_attn.lstm(backend="cuda"): the fused kernels where they run, else the step-by-step plan
  cuda-stepwise  lstm_attn.lstm(backend="cuda") with LSTM_ATTN_LSTM_PLAN=stepwise: the fallback
  cpu            lstm_attn.lstm(backend="cpu"): the op's CPU kernels
float32 runs with TF32 as `tf32` says, for cuDNN and for the fused kernels alike (torch.backends.cudnn.allow_tf32,
and torch.backends.cuda.matmul.allow_tf32 for the products around the recurrence); both flags are restored after
each call. FLOPs count the LSTM's matrix products: forward 8 B T H (I_l + H) per layer, backward twice that (the
convention of lstm_attn.bench.model_step).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

import lstm_attn
from lstm_attn import reference

PROVIDERS = ("reference", "cuda", "cuda-stepwise", "cpu")
MODES = ("eager", "graph")
PLAN_VARIABLE = "LSTM_ATTN_LSTM_PLAN"


@dataclass(frozen=True)
class LstmCase:
    run: Callable[[], None]
    results: Callable[[], list[Tensor]]
    flops: int


def lstm_flops(B: int, T: int, H: int, layers: int, input_size: int) -> int:
    return 3 * sum(8 * B * T * H * ((input_size if layer == 0 else H) + H) for layer in range(layers))


@contextlib.contextmanager
def _settings(tf32: bool, plan: str | None):
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32, os.environ.get(PLAN_VARIABLE)
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = tf32
    if plan is not None:
        os.environ[PLAN_VARIABLE] = plan
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved[:2]
        if plan is not None:
            if saved[2] is None:
                del os.environ[PLAN_VARIABLE]
            else:
                os.environ[PLAN_VARIABLE] = saved[2]


def lstm_case(provider: str, B: int, T: int, H: int, *, dtype: torch.dtype = torch.float32, tf32: bool = True,
              layers: int = 2, input_size: int = 8, mode: str = "eager", device="cuda", seed: int = 0) -> LstmCase:
    """A forward + backward of a `layers`-layer LSTM (batch_first, zero initial states, no dropout) on x (B, T,
    input_size) with nn.LSTM's initial weights from `seed`, for a timing harness (see the module's docstring)."""
    if provider not in PROVIDERS:
        raise ValueError(f"provider must be one of {', '.join(PROVIDERS)}, got {provider!r}")
    if mode not in MODES:
        raise ValueError(f"mode must be 'eager' or 'graph', got {mode!r}")
    if mode == "graph" and torch.device(device).type != "cuda":
        raise ValueError("mode='graph' captures a CUDA graph: it needs device='cuda'")
    torch.manual_seed(seed)
    module = torch.nn.LSTM(input_size, H, layers, batch_first=True)
    weights = [w.detach().to(device, dtype).requires_grad_(True) for w in module._flat_weights]
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(B, T, input_size, generator=g).to(device, dtype).requires_grad_(True)
    grads_out = [torch.randn(shape, generator=g).to(device, dtype) for shape in ((B, T, H), (layers, B, H),
                                                                                (layers, B, H))]
    leaves = [x, *weights]
    backend = "cuda" if provider.startswith("cuda") else provider
    settings = lambda: _settings(tf32, "stepwise" if provider == "cuda-stepwise" else None)  # noqa: E731

    def forward_backward() -> list[Tensor]:
        if provider == "reference":
            output, (h_n, c_n) = reference.lstm(x, weights)
        else:
            output, (h_n, c_n) = lstm_attn.lstm(x, weights, backend=backend)
        return [output, h_n, c_n, *torch.autograd.grad((output, h_n, c_n), leaves, grads_out)]

    last: list[list[Tensor]] = [[]]
    if mode == "eager":
        def run() -> None:
            with settings():
                last[0] = forward_backward()
    else:
        with settings():
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(3):
                    forward_backward()
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                last[0] = forward_backward()
        run = graph.replay
    return LstmCase(run, lambda: last[0], lstm_flops(B, T, H, layers, input_size))


def cudnn_lstm_kernels(B: int, T: int, H: int, *, dtype: torch.dtype = torch.float32, tf32: bool = True,
                       layers: int = 2, input_size: int = 8) -> list[str]:
    """The names of the CUDA kernels one cuDNN LSTM forward + backward launches (torch.profiler), for the result
    file: they say which algorithm PyTorch ran (persistent or per-step)."""
    case = lstm_case("reference", B, T, H, dtype=dtype, tf32=tf32, layers=layers, input_size=input_size)
    case.run()  # cuDNN's plans and workspaces are made on the first call, outside the profile
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        case.run()
        torch.cuda.synchronize()
    return sorted({event.name for event in prof.events() if event.device_type == torch.autograd.DeviceType.CUDA})
