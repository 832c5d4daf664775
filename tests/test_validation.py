"""Bad input is refused before any kernel runs, with a message that names the argument and what was wrong."""

import pytest
import torch

import lstm_attn
from _cases import attention_layernorm_inputs

BACKENDS = ["reference", "cpu"]


def good(**override):
    q, k, v, residual, weight, bias = attention_layernorm_inputs(2, 3, 5, 8, torch.float32, "cpu")
    args = dict(q=q, k=k, v=v, residual=residual, weight=weight, bias=bias)
    args.update(override)
    return args


def call(backend, **override):
    return lstm_attn.attention_layernorm(**good(**override), backend=backend)


BAD_INPUTS = [
    # (override, exception, message fragments)
    (dict(q=torch.randn(3, 8)), ValueError, ["q must be 3-D", "got 2-D"]),
    (dict(k=torch.randn(2, 5, 8, 1)), ValueError, ["k must be 3-D"]),
    (dict(weight=torch.randn(1, 8)), ValueError, ["weight must be 1-D"]),
    (dict(k=torch.randn(3, 5, 8)), ValueError, ["k has shape (3, 5, 8)", "B=2"]),
    (dict(k=torch.randn(2, 5, 7)), ValueError, ["k has shape (2, 5, 7)", "H=8"]),
    (dict(v=torch.randn(2, 4, 8)), ValueError, ["v has shape (2, 4, 8)", "shape of k"]),
    (dict(residual=torch.randn(2, 4, 8)), ValueError, ["residual has shape (2, 4, 8)", "shape of q"]),
    (dict(weight=torch.randn(7)), ValueError, ["weight has shape (7,)", "(8,)"]),
    (dict(bias=torch.randn(9)), ValueError, ["bias has shape (9,)"]),
    (dict(q=torch.randn(2, 0, 8), residual=torch.randn(2, 0, 8)), ValueError, ["Tq", "= 0"]),
    (dict(k=torch.randn(2, 0, 8), v=torch.randn(2, 0, 8)), ValueError, ["Tk", "= 0"]),
    (dict(q=torch.randn(2, 3, 0), k=torch.randn(2, 5, 0), v=torch.randn(2, 5, 0), residual=torch.randn(2, 3, 0),
          weight=torch.randn(0), bias=torch.randn(0)), ValueError, ["H", "= 0"]),
    (dict(q=torch.ones(2, 3, 8, dtype=torch.int64)), TypeError, ["q has dtype torch.int64"]),
    (dict(v=torch.randn(2, 5, 8, dtype=torch.float64)), TypeError, ["v has dtype torch.float64", "q has torch.float32"]),
    (dict(bias=torch.randn(8, dtype=torch.bfloat16)), TypeError, ["bias has dtype torch.bfloat16"]),
    (dict(k=torch.randn(2, 5, 8, device="meta")), ValueError, ["k is on meta", "q is on cpu"]),
    (dict(q=[[1.0]]), TypeError, ["q must be a torch.Tensor"]),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("override, exc, fragments", BAD_INPUTS, ids=lambda x: None)
def test_bad_input_names_the_argument(backend, override, exc, fragments):
    with pytest.raises(exc) as info:
        call(backend, **override)
    for fragment in fragments:
        assert fragment in str(info.value), f"{fragment!r} not in {str(info.value)!r}"


@pytest.mark.parametrize("eps", [0.0, -1e-5, float("nan"), float("inf"), True, "1e-5"])
def test_bad_eps(eps):
    with pytest.raises(ValueError, match="eps must be a finite number > 0"):
        lstm_attn.attention_layernorm(**good(), eps=eps)


@pytest.mark.parametrize("scale", [float("nan"), float("inf"), "0.1"])
def test_bad_scale(scale):
    with pytest.raises(ValueError, match="scale must be a finite number"):
        lstm_attn.attention_layernorm(**good(), scale=scale)


def test_unknown_backend():
    with pytest.raises(ValueError, match="backend must be 'auto' or one of 'reference', 'cpu', 'cuda', 'triton'; got 'fast'"):
        lstm_attn.attention_layernorm(**good(), backend="fast")


def test_unavailable_backend_is_a_clear_error():
    with pytest.raises(RuntimeError, match=r"backend='cuda' is not available on cpu: .*CUDA"):
        lstm_attn.attention_layernorm(**good(), backend="cuda")


def test_direct_op_call_is_checked_in_cpp():
    """Calls that skip the Python API still get a clear error from the C++ checks, not a crash."""
    args = good(v=torch.randn(2, 4, 8))
    with pytest.raises(RuntimeError, match=r"v has shape \[2, 4, 8\]"):
        torch.ops.lstm_attn.attention_layernorm_fwd(*args.values(), 1e-5, 0.5)
    with pytest.raises(RuntimeError, match=r"c has shape"):
        torch.ops.lstm_attn.softmax_pool_fwd(torch.randn(2, 3, 4), torch.randn(2, 4), torch.randn(3))


SOFTMAX_POOL_BAD = [
    (dict(x=torch.randn(3, 4)), ValueError, "x must be 3-D"),
    (dict(u=torch.randn(2, 5)), ValueError, "u has shape (2, 5); expected (B, H) = (2, 4)"),
    (dict(c=torch.randn(2, 1)), ValueError, "c must be 1-D"),
    (dict(c=torch.randn(3)), ValueError, "c has shape (3,)"),
    (dict(x=torch.randn(2, 0, 4)), ValueError, "T (dim 1) = 0"),
    (dict(u=torch.randn(2, 4, dtype=torch.float64)), TypeError, "u has dtype torch.float64"),
    (dict(x=torch.ones(2, 3, 4, dtype=torch.int32)), TypeError, "x has dtype torch.int32"),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("override, exc, fragment", SOFTMAX_POOL_BAD, ids=lambda x: None)
def test_softmax_pool_bad_input(backend, override, exc, fragment):
    args = dict(x=torch.randn(2, 3, 4), u=torch.randn(2, 4), c=torch.randn(2))
    args.update(override)
    with pytest.raises(exc) as info:
        lstm_attn.softmax_pool(**args, backend=backend)
    assert fragment in str(info.value)


def test_gpu_backend_head_dim_limit_is_named():
    from lstm_attn import backends

    reason = backends._REGISTRY["cuda"].unsupported_reason(torch.float32, 513)
    assert reason == "backend 'cuda' supports H up to 512, got H = 513"
    assert "not torch.float64" in backends._REGISTRY["triton"].unsupported_reason(torch.float64, 64)
