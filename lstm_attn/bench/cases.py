"""The op case: attention_layernorm's passes, the providers that compute it, their inputs, its FLOP/byte model.

Providers are our backends ("cpu", "cuda", "triton", through lstm_attn.attention_layernorm) and the peers a
user would pick instead:
  reference  the seed's eager arithmetic, lstm_attn.reference_ops.attention_layernorm
  sdpa       F.scaled_dot_product_attention, then + residual and F.layer_norm; its rows name the SDPA kernel
             PyTorch chose (flash, efficient, cuDNN, math)
  compile    torch.compile of the reference, compiled afresh for each shape and dtype with static shapes and
             warmed up before it is timed, as a user who compiles for their one shape gets it
PROVIDERS is the sweep's table of them; a test registers a deliberately wrong one there.

Dtype labels: "float32" runs with TF32 off everywhere (torch.backends.cuda.matmul.allow_tf32 and cuDNN's flag),
"float32-tf32" with both on, for every provider alike; "bfloat16" and "float16" leave the flags as they are.
"""

from __future__ import annotations

import contextlib
import functools
import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

import lstm_attn
from lstm_attn import backends, reference_ops
from lstm_attn.bench.env import cache_bytes
from lstm_attn.bench.group import Candidate, Group, Outputs, Runner, Work
from lstm_attn.bench.options import OP_CASE, OP_DEFAULT_PROVIDERS, OP_PASSES

CASE, PASSES = OP_CASE, OP_PASSES
DTYPES = {"float32": torch.float32, "float32-tf32": torch.float32, "bfloat16": torch.bfloat16,
          "float16": torch.float16, "float64": torch.float64}
TF32_FLAGS = {"float32": False, "float32-tf32": True}  # labels that set TF32; the others leave it alone
REFERENCE = "reference"
PEERS = ("reference", "sdpa", "compile")
GRAD_NAMES = ("grad_q", "grad_k", "grad_v", "grad_residual", "grad_weight", "grad_bias")
MAX_INPUT_SETS = 8
# Parity is checked on the first rows of the batch: every kernel here treats batch rows alike and apart, and the
# float64 reference of a whole device-bound call (B*T*T scores, twice for the backward) would not fit.
PARITY_ROWS = 4

# LayerNorm and residual FLOPs per element of (B, Tq, H): small beside attention's 4*Tk per element, but counted.
# fwd: residual add 1, mean 1, variance 2, normalize 2, affine 2.
LN_FWD_FLOPS = 8
# bwd: recompute xhat 3, g = grad_out*weight 1, g*xhat 1, two row means 2, dy 4, grad_weight 2, grad_bias 1,
# delta = rowsum(attn*dO) 2.
LN_BWD_FLOPS = 16


def op_work(pass_: str, B: int, Tq: int, Tk: int, H: int, itemsize: int) -> Work:
    """The FLOP and byte model of attention_layernorm, per pass.

    FLOPs, flash-attention's convention: the forward's two matrix products cost 4*B*Tq*Tk*H; the backward
    counts 2.5 times that (its four products plus the recomputation of q k^T), whether or not an
    implementation recomputes. LayerNorm and residual add LN_FWD_FLOPS / LN_BWD_FLOPS per element.
    Bytes, the op's minimum (itemsize bytes per element; weight and bias share the inputs' dtype):
      fwd reads q, k, v, residual, weight, bias and writes out: 3*B*Tq*H + 2*B*Tk*H + 2*H elements.
      bwd reads grad_out, q, k, v, residual, weight and writes grad_q, grad_k, grad_v, grad_residual,
      grad_weight, grad_bias: 5*B*Tq*H + 4*B*Tk*H + 3*H elements. What a backend saves for its backward
      (attn, row statistics) is its choice, not the op's, and is not counted.
      fwd+bwd is the sum of the two.
    """
    if pass_ not in PASSES:
        raise ValueError(f"pass must be one of {PASSES}, got {pass_!r}")
    attention = 4 * B * Tq * Tk * H
    q_elems, k_elems = B * Tq * H, B * Tk * H
    fwd = Work(attention + LN_FWD_FLOPS * q_elems, itemsize * (3 * q_elems + 2 * k_elems + 2 * H))
    bwd = Work(attention * 5 // 2 + LN_BWD_FLOPS * q_elems, itemsize * (5 * q_elems + 4 * k_elems + 3 * H))
    if pass_ == "fwd":
        return fwd
    if pass_ == "bwd":
        return bwd
    return Work(fwd.flops + bwd.flops, fwd.bytes + bwd.bytes)


def sdpa_layernorm(q, k, v, residual, weight, bias, eps=1e-5):
    """The peer built from PyTorch's own fused pieces. SDPA's fused kernels want (B, heads, T, H): one head."""
    H = q.shape[-1]
    attn = F.scaled_dot_product_attention(q.unsqueeze(1), k.unsqueeze(1), v.unsqueeze(1), scale=H**-0.5)
    return F.layer_norm(attn.squeeze(1) + residual, (H,), weight, bias, eps)


def sdpa_kernel(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> str:
    """The SDPA kernel PyTorch picks for these (B, T, H) tensors as sdpa_layernorm passes them."""
    choice = torch._fused_sdp_choice(q.unsqueeze(1), k.unsqueeze(1), v.unsqueeze(1), scale=q.shape[-1] ** -0.5)
    try:
        return torch.nn.attention.SDPBackend(choice).name
    except ValueError:
        return f"unknown ({choice})"


@contextlib.contextmanager
def precision(label: str):
    """The TF32 flags a dtype label stands for, for the whole group (every provider and the reference)."""
    if label not in TF32_FLAGS:
        yield
        return
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = TF32_FLAGS[label]
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _compiled_reference():
    # Compiled afresh for each group, static shapes: what a user compiling for their shape runs. The reset drops
    # the graphs of earlier shapes, so the recompile limit never sends a later shape back to eager.
    torch._dynamo.reset()
    return torch.compile(reference_ops.attention_layernorm, dynamic=False)


def _always(device, dtype, H) -> str | None:
    return None


def _backend_unavailable(name: str):
    def reason(device: torch.device, dtype: torch.dtype, H: int) -> str | None:
        if name == "triton" and device.type == "cpu":
            return "Triton runs on CPU only in its interpreter (TRITON_INTERPRET=1), which is never timed"
        try:
            backends.resolve(name, device, dtype, H)
        except (RuntimeError, ValueError) as exc:
            return str(exc)
        return None
    return reason


@dataclass(frozen=True)
class Provider:
    name: str
    kind: str  # "ours" or "peer"
    build: Callable[[], Callable]  # a callable (q, k, v, residual, weight, bias) -> out, fresh for each group
    unavailable: Callable[[torch.device, torch.dtype, int], str | None]


def _ours(name: str) -> Provider:
    return Provider(name, "ours", lambda: functools.partial(lstm_attn.attention_layernorm, backend=name),
                    _backend_unavailable(name))


PROVIDERS: dict[str, Provider] = {
    "reference": Provider("reference", "peer", lambda: reference_ops.attention_layernorm, _always),
    "sdpa": Provider("sdpa", "peer", lambda: sdpa_layernorm, _always),
    "compile": Provider("compile", "peer", _compiled_reference, _always),
    **{name: _ours(name) for name in ("cpu", "cuda", "triton")},
}
DEFAULT_PROVIDERS = OP_DEFAULT_PROVIDERS


@dataclass(frozen=True)
class OpInputs:
    args: tuple[torch.Tensor, ...]  # q, k, v, residual, weight, bias
    grad_out: torch.Tensor


def make_inputs(B: int, T: int, H: int, dtype: torch.dtype, device: torch.device, requires_grad: bool,
                generator: torch.Generator) -> OpInputs:
    def randn(*shape, mean=0.0, std=1.0):
        t = torch.randn(*shape, generator=generator, device=device, dtype=torch.float32) * std + mean
        return t.to(dtype).requires_grad_(requires_grad)

    q, k, v, residual = (randn(B, T, H) for _ in range(4))
    weight, bias = randn(H, mean=1.0, std=0.1), randn(H, std=0.1)
    return OpInputs((q, k, v, residual, weight, bias), randn(B, T, H).detach())


def _outputs(fn: Callable, pass_: str, inputs: OpInputs) -> Outputs:
    out = fn(*inputs.args)
    if pass_ == "fwd":
        return {"out": out.detach()}
    grads = torch.autograd.grad(out, inputs.args, inputs.grad_out)
    return {"out": out.detach(), **dict(zip(GRAD_NAMES, grads))}


def _expected(pass_: str, inputs: OpInputs) -> tuple[Outputs, Outputs]:
    wide = OpInputs(tuple(a.detach().double().requires_grad_(pass_ != "fwd") for a in inputs.args),
                    inputs.grad_out.double())
    return _outputs(reference_ops.attention_layernorm, pass_, wide), _outputs(reference_ops.attention_layernorm, pass_, inputs)


def op_runner(fn: Callable, pass_: str, sets: list[OpInputs], checked: OpInputs | None = None) -> Runner:
    """The timed call of a pass on sets[i]; parity on `checked` (default sets[0]). bwd runs the forward untimed
    in setup, then times the backward alone (without retain_graph: the backward frees what the forward saved,
    as in training)."""
    outputs = lambda: _outputs(fn, pass_, checked or sets[0])  # noqa: E731
    if pass_ == "fwd":
        return Runner(lambda i: fn(*sets[i].args), outputs)
    if pass_ == "fwd+bwd":
        return Runner(lambda i: torch.autograd.grad(fn(*sets[i].args), sets[i].args, sets[i].grad_out), outputs)
    pending = [None] * len(sets)

    def forward(i):
        pending[i] = fn(*sets[i].args)

    def backward(i):
        out, pending[i] = pending[i], None
        return torch.autograd.grad(out, sets[i].args, sets[i].grad_out)

    return Runner(backward, outputs, setup=forward)


def input_sets(work_bytes: int, device: torch.device) -> int:
    """How many input sets to rotate through so that together they exceed twice the last-level cache."""
    return max(1, min(MAX_INPUT_SETS, math.ceil(2 * cache_bytes(device) / max(work_bytes, 1))))


def op_group(pass_: str, dtype_label: str, B: int, T: int, H: int, providers: list[str],
             device: torch.device, seed: int, timings: tuple[str, ...] = ("eager",)) -> Group:
    dtype = DTYPES[dtype_label]
    work = op_work(pass_, B, T, T, H, torch.finfo(dtype).bits // 8)
    generator = torch.Generator(device).manual_seed(seed)
    sets = [make_inputs(B, T, H, dtype, device, pass_ != "fwd", generator)
            for _ in range(input_sets(work.bytes, device))]
    checked = sets[0] if B <= PARITY_ROWS else make_inputs(PARITY_ROWS, T, H, dtype, device, pass_ != "fwd",
                                                           generator)

    def candidate(name: str) -> Candidate:
        p = PROVIDERS[name]
        describe = (lambda: f"SDPA kernel: {sdpa_kernel(*sets[0].args[:3])}") if name == "sdpa" else None
        return Candidate(name, p.kind, lambda: op_runner(p.build(), pass_, sets, checked),
                         skip_reason=p.unavailable(device, dtype, H), checked=name != REFERENCE, describe=describe)

    return Group(CASE, pass_, dtype, {"B": B, "T": T, "H": H}, work, REFERENCE, PEERS,
                 [candidate(name) for name in providers], lambda: _expected(pass_, checked), n_sets=len(sets),
                 dtype_label=dtype_label, timings=timings, context=lambda: precision(dtype_label))
