"""The ops as torch sees them: opcheck, gradcheck in float64, torch.compile without graph breaks, auto choice."""

import pytest
import torch

import lstm_attn
from _backends import fast_backend_params, require_backend
from _cases import attention_layernorm_inputs
from lstm_attn import backends, plans

OPS = {
    "cpu": ("attention_layernorm_fwd", "softmax_pool_fwd"),
    "cuda": ("attention_layernorm_fwd", "softmax_pool_fwd"),
    "triton": ("triton_attention_layernorm_fwd", "triton_softmax_pool_fwd"),
}


def pool_args(device, dtype=torch.float32, B=2, T=7, H=8):
    return (torch.randn(B, T, H, dtype=dtype, device=device), torch.randn(B, H, dtype=dtype, device=device) * 0.3,
            torch.randn(B, dtype=dtype, device=device))


@pytest.mark.parametrize("requires_grad", [False, True])
@pytest.mark.parametrize("backend, device", fast_backend_params())
def test_opcheck(backend, device, requires_grad):
    require_backend(backend, device)
    attn_name, pool_name = OPS[backend]
    # Under TRITON_INTERPRET, wrap_triton hands fake tensors straight to the interpreter, so the fake-tensor and
    # AOT checks of the Triton ops can only run on a GPU (the gpu-marked pair); schema and autograd run here.
    utils = ("test_schema", "test_autograd_registration") if (backend, device) == ("triton", "cpu") else None
    kwargs = {"test_utils": utils} if utils else {}
    inputs = [t.requires_grad_(requires_grad) for t in attention_layernorm_inputs(2, 3, 5, 8, torch.float32, device)]
    plan = plans.choose(backend, "attention", torch.float32, 8, queries=3, keys=5)
    torch.library.opcheck(getattr(torch.ops.lstm_attn, attn_name), (*inputs, 1e-5, 8**-0.5, plan), **kwargs)
    pool = [t.requires_grad_(requires_grad) for t in pool_args(device)]
    torch.library.opcheck(getattr(torch.ops.lstm_attn, pool_name), tuple(pool), **kwargs)


def test_opcheck_backward_ops():
    require_backend("cpu", "cpu")
    inputs = attention_layernorm_inputs(2, 3, 5, 8, torch.float32, "cpu")
    out, attn, lse, mean, rstd, probs = torch.ops.lstm_attn.attention_layernorm_fwd(*inputs, 1e-5, 0.35)
    q, k, v, residual, weight, _ = inputs
    torch.library.opcheck(torch.ops.lstm_attn.attention_layernorm_bwd,
                          (torch.randn_like(out), q, k, v, residual, weight, attn, lse, mean, rstd, probs, 0.35))
    x, u, c = pool_args("cpu")
    pooled, plse = torch.ops.lstm_attn.softmax_pool_fwd(x, u, c)
    torch.library.opcheck(torch.ops.lstm_attn.softmax_pool_bwd, (torch.randn_like(pooled), x, u, c, pooled, plse))


def test_extension_forward_ops_have_cpp_autograd():
    # C++ autograd (csrc/autograd.cpp) rather than torch.library's Python autograd.Function: each call that needs
    # gradients saves host time, which short GPU calls wait on. opcheck above checks its gradients.
    require_backend("cpu", "cpu")
    for op in ("attention_layernorm_fwd", "softmax_pool_fwd"):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"lstm_attn::{op}", "Autograd"), op
    inputs = [t.requires_grad_(True) for t in attention_layernorm_inputs(2, 3, 5, 8, torch.float32, "cpu")]
    out = torch.ops.lstm_attn.attention_layernorm_fwd(*inputs, 1e-5, 0.35)
    assert out[0].grad_fn is not None and type(out[0].grad_fn).__name__ == "CppFunction"
    assert all(t.grad_fn is None and not t.requires_grad for t in out[1:])  # attn, the statistics, probs


def test_gradcheck_float64():
    require_backend("cpu", "cpu")
    for Tq, Tk in [(1, 1), (3, 5), (4, 4)]:
        inputs = [t.requires_grad_(True) for t in attention_layernorm_inputs(2, Tq, Tk, 7, torch.float64, "cpu")]
        assert torch.autograd.gradcheck(lambda *a: lstm_attn.attention_layernorm(*a, backend="cpu"), inputs)
    pool = [t.requires_grad_(True) for t in pool_args("cpu", torch.float64)]
    assert torch.autograd.gradcheck(lambda *a: lstm_attn.softmax_pool(*a, backend="cpu"), pool)


@pytest.mark.parametrize("backend, device", fast_backend_params())
def test_compile_fullgraph(backend, device):
    require_backend(backend, device)
    if (backend, device) == ("triton", "cpu"):
        pytest.skip("Triton under TRITON_INTERPRET cannot be traced (wrap_triton passes fake tensors to the "
                    "interpreter); the gpu-marked triton-cuda case compiles it")
    torch._dynamo.reset()

    def step(q, k, v, residual, weight, bias, x, u, c):
        out = lstm_attn.attention_layernorm(q, k, v, residual, weight, bias, backend=backend)
        pooled = lstm_attn.softmax_pool(x, u, c, backend=backend)
        return out.square().sum() + pooled.sum()

    inputs = [t.requires_grad_(True) for t in (*attention_layernorm_inputs(2, 3, 5, 8, torch.float32, device),
                                               *pool_args(device))]
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager" if device == "cpu" else "inductor")
    loss = compiled(*inputs)
    grads = torch.autograd.grad(loss, inputs)
    expected = torch.autograd.grad(step(*inputs), inputs)
    torch.testing.assert_close(loss, step(*inputs))
    for a, b in zip(grads, expected):
        torch.testing.assert_close(a, b)


def test_compile_dynamic_takes_eps_and_scale_as_arguments():
    # dynamic=True traces Python floats as SymFloat: the checks must take them (math.isfinite cannot).
    require_backend("cpu", "cpu")
    torch._dynamo.reset()
    inputs = attention_layernorm_inputs(2, 3, 5, 8, torch.float32, "cpu")
    fn = torch.compile(lambda eps, scale: lstm_attn.attention_layernorm(*inputs, eps=eps, scale=scale, backend="cpu"),
                       dynamic=True, fullgraph=True, backend="aot_eager")
    for eps, scale in ((1e-5, 0.3), (1e-2, 0.5)):
        torch.testing.assert_close(fn(eps, scale), lstm_attn.attention_layernorm(*inputs, eps=eps, scale=scale,
                                                                                 backend="reference"))


def test_compile_inductor_cpu():
    """The full default compiler (inductor, generating C++ here) around the op, once."""
    require_backend("cpu", "cpu")
    torch._dynamo.reset()
    inputs = attention_layernorm_inputs(2, 3, 5, 8, torch.float32, "cpu")
    fn = torch.compile(lambda *a: lstm_attn.attention_layernorm(*a, backend="cpu").relu() * 2, fullgraph=True)
    torch.testing.assert_close(fn(*inputs), lstm_attn.attention_layernorm(*inputs, backend="reference").relu() * 2,
                               rtol=1e-5, atol=1e-5)


def test_available_backends_says_why():
    status = lstm_attn.available_backends("cpu")
    assert set(status) == {"reference", "cpu", "cuda", "triton"}
    assert status["reference"].available
    assert status["cpu"].available, status["cpu"].reason
    assert not status["cuda"].available and "CUDA" in status["cuda"].reason


def test_auto_picks_the_cpu_kernels_on_cpu():
    require_backend("cpu", "cpu")
    assert backends.resolve("auto", "cpu", torch.float32, 64).name == "cpu"
    q, k, v, residual, weight, bias = attention_layernorm_inputs(2, 3, 5, 8, torch.float32, "cpu")
    torch.testing.assert_close(lstm_attn.attention_layernorm(q, k, v, residual, weight, bias),
                               lstm_attn.attention_layernorm(q, k, v, residual, weight, bias, backend="cpu"), rtol=0, atol=0)


@pytest.mark.gpu
def test_auto_on_gpu_picks_what_was_measured_fastest():
    status = lstm_attn.available_backends("cuda")
    cuda = "cuda" if status["cuda"].available else "reference"
    # The plan table's beats_reference rows (lstm_attn/plans.py): the H200 measurements.
    for dtype, H, keys, expected in ((torch.bfloat16, 64, 1024, cuda), (torch.bfloat16, 128, 256, cuda),
                                     (torch.bfloat16, 256, 256, cuda), (torch.float32, 64, 1024, cuda),
                                     (torch.bfloat16, 128, 1024, "reference"), (torch.float32, 128, 256, "reference"),
                                     (torch.float16, 64, 256, "reference"), (torch.float64, 128, 256, "reference")):
        assert backends.resolve("auto", "cuda", dtype, H, keys=keys).name == expected, (dtype, H, keys, status)
