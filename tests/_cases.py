"""Inputs and float64 references for the parity tests of both ops."""

from __future__ import annotations

import itertools

import pytest
import torch

from _backends import fast_backend_params
from lstm_attn import reference_ops
from lstm_attn.testing import LOW_PRECISION, assert_parity

# The awkward sizes: T = 1, odd and non-power-of-two H and T, Tq = 1 (the model's last step) and Tq = Tk.
FULL_SHAPES = [(B, Tq, Tk, H) for B, Tk, H in itertools.product((1, 3), (1, 7, 97, 130), (1, 8, 59, 64, 111, 128, 256, 512))
               for Tq in sorted({1, Tk})]
# Triton's interpreter runs every program in Python: a smaller grid keeps CI inside its budget.
INTERPRETER_SHAPES = [(2, Tq, Tk, H) for Tk, H in itertools.product((1, 7, 97), (8, 59, 64, 130)) for Tq in sorted({1, Tk})]

DTYPES = {
    ("cpu", "cpu"): (torch.float32, torch.float64, torch.bfloat16, torch.float16),
    ("triton", "cpu"): (torch.float32, torch.bfloat16),
    ("triton", "cuda"): (torch.float32, torch.bfloat16, torch.float16),
    ("cuda", "cuda"): (torch.float32, torch.bfloat16, torch.float16),
}


def parity_params(shapes_for_interpreter=INTERPRETER_SHAPES, full_shapes=FULL_SHAPES):
    """pytest params (backend, device, shape, dtype) for every fast backend, each with its own grid."""
    params = []
    for p in fast_backend_params():
        backend, device = p.values
        shapes = shapes_for_interpreter if (backend, device) == ("triton", "cpu") else full_shapes
        for shape, dtype in itertools.product(shapes, DTYPES[(backend, device)]):
            dt = str(dtype).removeprefix("torch.")
            params.append(pytest.param(backend, device, shape, dtype, marks=p.marks,
                                       id=f"{p.id}-{dt}-" + "x".join(map(str, shape))))
    return params


def attention_layernorm_inputs(B, Tq, Tk, H, dtype, device, seed=0):
    g = torch.Generator().manual_seed(seed)

    def randn(*shape, scale=1.0, shift=0.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale + shift).to(device, dtype)

    return (randn(B, Tq, H), randn(B, Tk, H), randn(B, Tk, H), randn(B, Tq, H),
            randn(H, scale=0.5, shift=1.0), randn(H, scale=0.5))


def pool_inputs(B, T, H, dtype, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    # u scaled like the model's scale * Wk^T q, so the softmax is neither flat nor one-hot.
    x = torch.randn(B, T, H, generator=g, dtype=torch.float64)
    u = torch.randn(B, H, generator=g, dtype=torch.float64) * H**-0.5
    c = torch.randn(B, generator=g, dtype=torch.float64)
    return [t.to(device, dtype) for t in (x, u, c)]


def check_op_parity(op, ref_op, inputs, grad_out, names=None):
    """Forward and every gradient of op(*inputs) against ref_op(*inputs) in float64 (and in the inputs' dtype
    when that is a low precision, for the 2x rule)."""
    names = names or [f"input{i}" for i in range(len(inputs))]
    dtype = inputs[0].dtype

    def run(fn, tensors):
        leaves = [t.detach().clone().requires_grad_(True) for t in tensors]
        out = fn(*leaves)
        grads = torch.autograd.grad(out, leaves, grad_out.to(out.dtype))
        return [out, *grads]

    ours = run(op, inputs)
    ref64 = run(ref_op, [t.double() for t in inputs])
    lowp = run(ref_op, inputs) if dtype in LOW_PRECISION else [None] * len(ours)
    for name, a, r, lp in zip(["out", *(f"grad_{n}" for n in names)], ours, ref64, lowp):
        assert a.dtype == dtype, f"{name} has dtype {a.dtype}, expected {dtype}"
        assert_parity(name, a, r, lp)


ATTENTION_LAYERNORM_NAMES = ["q", "k", "v", "residual", "weight", "bias"]
reference_attention_layernorm = reference_ops.attention_layernorm
