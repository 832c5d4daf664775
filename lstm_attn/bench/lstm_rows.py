"""The lstm case: lstm_attn.lstm forward+backward against PyTorch's own LSTM (cuDNN on a GPU, oneDNN on a CPU).

A row is a 2-layer LSTM (batch_first, zero initial states, no dropout, input size 8) at (B, T, H): pass "fwd+bwd",
one forward and the gradients of the output, h_n and c_n with respect to x and every weight; pass "fwd", the forward
alone under torch.no_grad (inference). Providers:
  reference      lstm_attn.reference_ops.lstm, PyTorch's LSTM: the peer; its rows name the kernels cuDNN ran, which
                 say whether PyTorch chose the persistent algorithm or the per-step one
  cuda           lstm_attn.lstm(backend="cuda"): the fused kernels where they run, else the step-by-step plan
  cuda-stepwise  the same with the stepwise plan forced: the fallback alone
  cpu            lstm_attn.lstm(backend="cpu"): the op's CPU kernels
Dtype labels are lstm_attn.bench.cases's: "float32" with TF32 off for cuDNN and ours alike, "float32-tf32" with it
on (PyTorch's default for cuDNN's LSTM), "bfloat16", "float16". Parity, on the first rows of the batch: the rule of
lstm_attn.testing against PyTorch's LSTM in float64, with twice PyTorch's own error in the same setting allowed.
FLOPs count the matrix products: forward 8 B T H (I_l + H) per layer, backward twice that.
"""

from __future__ import annotations

import torch

import lstm_attn
from lstm_attn import plans, reference_ops
from lstm_attn.bench.cases import DTYPES, PARITY_ROWS, input_sets, precision
from lstm_attn.bench.group import Candidate, Group, Outputs, Runner, Work
from lstm_attn.bench.options import LSTM_CASE, LSTM_INPUT_SIZE, LSTM_LAYERS

CASE = LSTM_CASE
PASSES = ("fwd+bwd", "fwd")
LAYERS, INPUT_SIZE = LSTM_LAYERS, LSTM_INPUT_SIZE
DEFAULT_PROVIDERS = {"cuda": ("reference", "cuda", "cuda-stepwise"), "cpu": ("reference", "cpu")}


def lstm_work(B: int, T: int, H: int, itemsize: int, pass_: str = "fwd+bwd") -> Work:
    flops = (3 if pass_ == "fwd+bwd" else 1) * sum(8 * B * T * H * ((INPUT_SIZE if layer == 0 else H) + H) for layer in range(LAYERS))
    params = sum(4 * H * ((INPUT_SIZE if layer == 0 else H) + H) + 8 * H for layer in range(LAYERS))
    # x read and its gradient written, the output's gradient read and the output written; weights read, their
    # gradients written.
    return Work(flops, itemsize * (2 * B * T * INPUT_SIZE + 2 * B * T * H + 2 * params))


class _Inputs:
    def __init__(self, B, T, H, dtype, device, generator):
        module = torch.nn.LSTM(INPUT_SIZE, H, LAYERS, batch_first=True)
        self.weights = [w.detach().to(device, dtype).requires_grad_(True) for w in module._flat_weights]
        self.x = torch.randn(B, T, INPUT_SIZE, generator=generator, device=device).to(dtype).requires_grad_(True)
        self.grads_out = [torch.randn(shape, generator=generator, device=device).to(dtype)
                          for shape in ((B, T, H), (LAYERS, B, H), (LAYERS, B, H))]

    def wide(self) -> "_Inputs":
        """The same inputs in float64 on the CPU (cuDNN's float64 LSTM need not exist; the checked rows are few)."""
        wide = object.__new__(_Inputs)
        wide.weights = [w.detach().cpu().double().requires_grad_(True) for w in self.weights]
        wide.x = self.x.detach().cpu().double().requires_grad_(True)
        wide.grads_out = [g.cpu().double() for g in self.grads_out]
        return wide


def _call(provider: str, inputs: _Inputs, pass_: str = "fwd+bwd") -> list[torch.Tensor]:
    if pass_ == "fwd":
        with torch.no_grad():
            return _forward(provider, inputs)
    output, h_n, c_n = _forward(provider, inputs)
    leaves = [inputs.x, *inputs.weights]
    return [output, h_n, c_n, *torch.autograd.grad((output, h_n, c_n), leaves, inputs.grads_out)]


def _forward(provider: str, inputs: _Inputs) -> list[torch.Tensor]:
    if provider == "reference":
        output, (h_n, c_n) = reference_ops.lstm(inputs.x, inputs.weights)
    else:
        with plans.forcing("cuda", "lstm", "stepwise" if provider == "cuda-stepwise" else None):
            output, (h_n, c_n) = lstm_attn.lstm(inputs.x, inputs.weights,
                                                backend="cuda" if provider.startswith("cuda") else provider)
    return [output, h_n, c_n]


def _outputs(provider: str, inputs: _Inputs, pass_: str = "fwd+bwd") -> Outputs:
    names = ["output", "h_n", "c_n", "grad x", *(f"grad weights[{i}]" for i in range(len(inputs.weights)))]
    return {name: t.detach() for name, t in zip(names, _call(provider, inputs, pass_))}


def cudnn_kernels(inputs: _Inputs) -> str:
    """The kernels one PyTorch LSTM forward+backward launched on the GPU (torch.profiler), shortest names first."""
    _call("reference", inputs)  # cuDNN's plans and workspaces are made on the first call, outside the profile
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        _call("reference", inputs)
        torch.cuda.synchronize()
    names = sorted({e.name for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA}, key=len)
    return "cuDNN kernels: " + ", ".join(n[:60] for n in names[:4]) + (" …" if len(names) > 4 else "")


def _unavailable(provider: str, device: torch.device) -> str | None:
    if provider == "reference":
        return None
    backend = "cuda" if provider.startswith("cuda") else provider
    status = lstm_attn.available_backends(device)[backend]
    return None if status.available else status.reason


def lstm_group(dtype_label: str, B: int, T: int, H: int, providers: list[str], device: torch.device, seed: int,
               timings: tuple[str, ...] = ("eager",), pass_: str = "fwd+bwd") -> Group:
    dtype = DTYPES[dtype_label]
    work = lstm_work(B, T, H, torch.finfo(dtype).bits // 8, pass_)
    torch.manual_seed(seed)
    generator = torch.Generator(device).manual_seed(seed)
    sets = [_Inputs(B, T, H, dtype, device, generator) for _ in range(input_sets(work.bytes, device))]
    checked = _Inputs(min(B, PARITY_ROWS), T, H, dtype, device, generator)

    def candidate(name: str) -> Candidate:
        runner = lambda: Runner(lambda i: _call(name, sets[i], pass_), lambda: _outputs(name, checked, pass_))  # noqa: E731
        describe = (lambda: cudnn_kernels(checked)) if name == "reference" and device.type == "cuda" else None
        return Candidate(name, "peer" if name == "reference" else "ours", runner,
                         skip_reason=_unavailable(name, device), checked=name != "reference", describe=describe)

    def expected():
        return ({k: v.to(device) for k, v in _outputs("reference", checked.wide(), pass_).items()},
                _outputs("reference", checked, pass_))

    return Group(CASE, pass_, dtype, {"B": B, "T": T, "H": H, "input_size": INPUT_SIZE, "layers": LAYERS}, work,
                 "reference", ("reference",), [candidate(n) for n in providers], expected, n_sets=len(sets),
                 dtype_label=dtype_label, timings=timings, context=lambda: precision(dtype_label))

