"""Parity of every fast backend of attention_layernorm with the seed's arithmetic, forward and all six gradients."""

from functools import partial

import pytest
import torch

import lstm_attn
from _backends import fast_backend_params, require_backend
from _cases import (ATTENTION_LAYERNORM_NAMES, attention_layernorm_inputs, check_op_parity, parity_params,
                    reference_attention_layernorm)


@pytest.mark.parametrize("backend, device, shape, dtype", parity_params())
def test_parity_with_reference(backend, device, shape, dtype):
    require_backend(backend, device)
    B, Tq, Tk, H = shape
    inputs = attention_layernorm_inputs(B, Tq, Tk, H, dtype, device)
    grad_out = torch.randn(B, Tq, H, dtype=torch.float64, generator=torch.Generator().manual_seed(1)).to(device)
    check_op_parity(partial(lstm_attn.attention_layernorm, backend=backend), reference_attention_layernorm, inputs,
                    grad_out, ATTENTION_LAYERNORM_NAMES)


def _cpu_tile_shapes():
    """(B, Tq, Tk) on, just past and beyond every tile of the CPU kernels, with the tile sizes they report: the
    forward's query blocks, the backward's query blocks, the key tiles (the online softmax's rescale between them)
    and the backward's key chunks (B below the task count splits a batch's keys, and sums dQ over them)."""
    from lstm_attn import ops

    if ops.EXTENSION_ERROR:
        return [(1, 1, 1)]  # the test fails in require_backend, naming the reason
    q_block, bwd_q_block, key_tile, min_tasks = torch.ops.lstm_attn.cpu_attention_tiles()
    Tqs = sorted({1, q_block, q_block + 1, bwd_q_block + 1, 2 * bwd_q_block + 44})
    Tks = [key_tile, key_tile + 1, 2 * key_tile + 88]
    shapes = [(B, Tq, Tk) for B in (1, 3) for Tq in Tqs for Tk in Tks]
    # As many batches as backward tasks: the keys stay in one chunk, over several tiles.
    return shapes + [(min_tasks, 5, 2 * key_tile + 1)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape", _cpu_tile_shapes(), ids=lambda s: "B{}-Tq{}-Tk{}".format(*s))
def test_cpu_parity_at_every_tile_boundary(shape, dtype):
    require_backend("cpu", "cpu")
    B, Tq, Tk = shape
    H = 24
    inputs = attention_layernorm_inputs(B, Tq, Tk, H, dtype, "cpu")
    grad_out = torch.randn(B, Tq, H, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    scale, eps = (0.31, 1e-3) if Tq % 2 else (None, 1e-5)  # an explicit scale and eps on half the shapes
    check_op_parity(partial(lstm_attn.attention_layernorm, backend="cpu", scale=scale, eps=eps),
                    partial(reference_attention_layernorm, scale=scale, eps=eps), inputs, grad_out,
                    ATTENTION_LAYERNORM_NAMES)


def _triton_tile_shapes():
    """(Tq, Tk) on and just past every block size the Triton kernels use (their one config in the interpreter,
    every config of their tables on a GPU), each beside Tq = 1, plus a length several tiles long."""
    from lstm_attn import ops

    if ops.TRITON_ERROR:
        return [(1, 1)]  # the test fails in require_backend, naming the reason
    from lstm_attn.kernels import attention_layernorm as tk

    if lstm_attn.backends.triton_interpreting():
        configs = [tk._INTERPRETER_FWD, tk._INTERPRETER_BWD]
    else:
        configs = [c for table in (tk._FWD_TABLE, tk._BWD_TABLE) for cs in table.values() for c in cs]
    tiles = {v for c in configs for k, v in c.kwargs.items() if k.startswith("BLOCK_") and k != "BLOCK_H"}
    lengths = sorted({t + d for t in tiles for d in (0, 1)} | {2 * max(tiles) + 44})
    return [(Tq, Tk) for Tk in lengths for Tq in (1, Tk)]


@pytest.mark.parametrize("shape", _triton_tile_shapes(), ids=lambda s: "Tq{}-Tk{}".format(*s))
@pytest.mark.parametrize("backend, device", [p for p in fast_backend_params() if p.values[0] == "triton"])
def test_triton_parity_at_every_tile_boundary(backend, device, shape):
    require_backend(backend, device)
    Tq, Tk = shape
    H = 24
    inputs = attention_layernorm_inputs(1, Tq, Tk, H, torch.float32, device)
    grad_out = torch.randn(1, Tq, H, dtype=torch.float64, generator=torch.Generator().manual_seed(2)).to(device)
    scale, eps = (0.31, 1e-3) if Tk % 2 else (None, 1e-5)  # an explicit scale and eps on half the shapes
    check_op_parity(partial(lstm_attn.attention_layernorm, backend=backend, scale=scale, eps=eps),
                    partial(reference_attention_layernorm, scale=scale, eps=eps), inputs, grad_out,
                    ATTENTION_LAYERNORM_NAMES)


@pytest.mark.parametrize("backend, device", fast_backend_params())
def test_explicit_scale_and_eps(backend, device):
    require_backend(backend, device)
    inputs = attention_layernorm_inputs(2, 5, 9, 16, torch.float32, device)
    grad_out = torch.randn(2, 5, 16, dtype=torch.float64).to(device)
    check_op_parity(partial(lstm_attn.attention_layernorm, backend=backend, scale=0.37, eps=1e-3),
                    partial(reference_attention_layernorm, scale=0.37, eps=1e-3), inputs, grad_out,
                    ATTENTION_LAYERNORM_NAMES)


@pytest.mark.parametrize("backend, device", fast_backend_params())
def test_non_contiguous_inputs(backend, device):
    require_backend(backend, device)
    q, k, v, residual, weight, bias = attention_layernorm_inputs(3, 6, 11, 24, torch.float32, device)
    # Views with other strides: a transposed layout, a slice with a step, a strided 1-D parameter.
    q_t = q.transpose(0, 1).contiguous().transpose(0, 1)
    k_wide = torch.cat([k, k], dim=-1)[..., ::2]
    v_wide = torch.cat([v, torch.zeros_like(v)], dim=1)[:, :11]
    weight_s = torch.stack([weight, weight], dim=1)[:, 0]
    assert not (q_t.is_contiguous() or k_wide.is_contiguous() or weight_s.is_contiguous())
    out = lstm_attn.attention_layernorm(q_t, k_wide, v_wide, residual, weight_s, bias, backend=backend)
    expected = lstm_attn.attention_layernorm(q, k_wide.contiguous(), v, residual, weight, bias, backend="reference")
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend, device", fast_backend_params())
def test_nan_stays_in_its_batch_row(backend, device):
    require_backend(backend, device)
    leaves = [t.requires_grad_(True) for t in attention_layernorm_inputs(3, 4, 9, 16, torch.float32, device)]
    q, k, v, residual, weight, bias = leaves
    with torch.no_grad():
        poisoned = [t.detach().clone() for t in leaves[:4]]
        for t in poisoned:
            t[1, 0, 0] = float("nan")
    poisoned = [t.requires_grad_(True) for t in poisoned]
    out = lstm_attn.attention_layernorm(*poisoned, weight, bias, backend=backend)
    out.backward(torch.ones_like(out))
    clean = lstm_attn.attention_layernorm(*[t.detach() for t in leaves], backend="reference")
    assert out[1].isnan().any(), "the poisoned row should be NaN"
    for row in (0, 2):
        torch.testing.assert_close(out[row], clean[row], rtol=1e-5, atol=1e-5)
        for t in poisoned:
            assert torch.isfinite(t.grad[row]).all(), "a NaN in batch row 1 leaked into the gradient of another row"


@pytest.mark.parametrize("backend, device", fast_backend_params())
def test_backward_is_deterministic(backend, device):
    require_backend(backend, device)
    inputs = attention_layernorm_inputs(3, 97, 97, 64, torch.float32, device)
    grad_out = torch.randn(3, 97, 64, dtype=torch.float32).to(device)

    def grads():
        leaves = [t.detach().clone().requires_grad_(True) for t in inputs]
        out = lstm_attn.attention_layernorm(*leaves, backend=backend)
        return torch.autograd.grad(out, leaves, grad_out)

    for name, a, b in zip(ATTENTION_LAYERNORM_NAMES, grads(), grads()):
        assert torch.equal(a, b), f"grad_{name} differs between two identical backward runs"


@pytest.mark.parametrize("backend, device", fast_backend_params())
def test_empty_batch(backend, device):
    require_backend(backend, device)
    leaves = [t.requires_grad_(True) for t in attention_layernorm_inputs(0, 3, 5, 8, torch.float32, device)]
    out = lstm_attn.attention_layernorm(*leaves, backend=backend)
    assert out.shape == (0, 3, 8)
    out.sum().backward()
    assert leaves[4].grad is not None and torch.equal(leaves[4].grad, torch.zeros_like(leaves[4]))
