"""Parity of every fast backend of softmax_pool (the model's exact last-step core) with the reference."""

import itertools
from functools import partial

import pytest
import torch

import lstm_attn
from _backends import fast_backend_params, require_backend
from _cases import DTYPES, check_op_parity, pool_inputs
from lstm_attn import reference_ops

FULL_SHAPES = list(itertools.product((1, 3), (1, 7, 97, 130, 1025), (1, 8, 59, 64, 111, 128, 256, 512)))
INTERPRETER_SHAPES = list(itertools.product((2,), (1, 7, 97), (8, 59, 64, 130)))


def pool_params():
    params = []
    for p in fast_backend_params():
        backend, device = p.values
        shapes = INTERPRETER_SHAPES if (backend, device) == ("triton", "cpu") else FULL_SHAPES
        for shape, dtype in itertools.product(shapes, DTYPES[(backend, device)]):
            dt = str(dtype).removeprefix("torch.")
            params.append(pytest.param(backend, device, shape, dtype, marks=p.marks,
                                       id=f"{p.id}-{dt}-" + "x".join(map(str, shape))))
    return params


@pytest.mark.parametrize("backend, device, shape, dtype", pool_params())
def test_parity_with_reference(backend, device, shape, dtype):
    require_backend(backend, device)
    B, T, H = shape
    inputs = pool_inputs(B, T, H, dtype, device)
    grad_out = torch.randn(B, H, dtype=torch.float64, generator=torch.Generator().manual_seed(1)).to(device)
    check_op_parity(partial(lstm_attn.softmax_pool, backend=backend), reference_ops.softmax_pool, inputs, grad_out,
                    ["x", "u", "c"])


@pytest.mark.parametrize("backend, device", fast_backend_params())
def test_score_offset_does_not_change_the_result(backend, device):
    require_backend(backend, device)
    x, u, c = pool_inputs(3, 20, 16, torch.float32, device)
    a = lstm_attn.softmax_pool(x, u, c, backend=backend)
    b = lstm_attn.softmax_pool(x, u, c + 100.0, backend=backend)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend, device", fast_backend_params())
def test_nan_stays_in_its_batch_row(backend, device):
    require_backend(backend, device)
    x, u, c = [t.requires_grad_(True) for t in pool_inputs(3, 9, 16, torch.float32, device)]
    with torch.no_grad():
        x[1, 4, 2] = float("nan")
    pooled = lstm_attn.softmax_pool(x, u, c, backend=backend)
    pooled.backward(torch.ones_like(pooled))
    assert pooled[1].isnan().all()
    for row in (0, 2):
        assert torch.isfinite(pooled[row]).all()
        for t in (x, u, c):
            assert torch.isfinite(t.grad[row]).all(), "a NaN in batch row 1 leaked into another row's gradient"


@pytest.mark.parametrize("backend, device", fast_backend_params())
def test_backward_is_deterministic(backend, device):
    require_backend(backend, device)
    inputs = pool_inputs(2, 1025, 64, torch.float32, device)
    g = torch.randn(2, 64).to(device)

    def grads():
        leaves = [t.detach().clone().requires_grad_(True) for t in inputs]
        return torch.autograd.grad(lstm_attn.softmax_pool(*leaves, backend=backend), leaves, g)

    for name, a, b in zip("xuc", grads(), grads()):
        assert torch.equal(a, b), f"grad_{name} differs between two identical backward runs"
