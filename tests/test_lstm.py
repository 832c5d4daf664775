"""lstm_attn.lstm against PyTorch's own LSTM in float64: outputs, final states and every gradient; dropout;
determinism; bad input; the op as torch sees it (opcheck, gradcheck, torch.compile). The cuda backend's tests are
marked gpu; on a GPU they also hold the fused kernels to the step-by-step plan and to cuDNN's own error."""

import contextlib
import itertools

import pytest
import torch

import lstm_attn
from _backends import require_backend
from lstm_attn import backends, plans
from lstm_attn.testing import assert_parity

# Small shapes gain nothing from threads, and a busy machine's waiting OpenMP threads stall every small op.
pytestmark = pytest.mark.usefixtures("one_thread")

# (B, T, input_size, H, num_layers): T = 1, B = 1, H = 1, odd sizes, one to three layers. The GPU grid adds every
# fused bucket (H 32 ... 256), their odd neighbours and H = 300, past the fused kernels (step by step).
CPU_SHAPES = [(1, 1, 1, 1, 1), (3, 1, 3, 5, 2), (1, 9, 2, 16, 1), (2, 33, 3, 5, 3), (4, 20, 8, 32, 2)]
GPU_SHAPES = CPU_SHAPES + [(B, T, 8, H, L) for (B, T), H, L in itertools.product(
    ((1, 7), (17, 64), (40, 9)), (31, 64, 100, 128, 200, 256, 300), (1, 2))]
CPU_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
GPU_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def params(shapes_cpu=CPU_SHAPES, shapes_gpu=GPU_SHAPES):
    """(backend, device, shape, dtype, plan): on CPU both plans (fused, the table's; stepwise, the CUDA step kernels'
    mirror); on a GPU the table's."""
    out = [pytest.param("cpu", "cpu", s, d, p, id=f"cpu-{p}-{str(d)[6:]}-" + "x".join(map(str, s)))
           for s, d, p in itertools.product(shapes_cpu, CPU_DTYPES, ("fused", "stepwise"))]
    out += [pytest.param("cuda", "cuda", s, d, None, marks=pytest.mark.gpu,
                         id=f"cuda-{str(d)[6:]}-" + "x".join(map(str, s)))
            for s, d in itertools.product(shapes_gpu, GPU_DTYPES)]
    return out


def lstm_inputs(B, T, input_size, H, L, seed=0):
    """x, h0, c0 and the flat weights of a freshly initialised nn.LSTM, in float64 on the CPU; h0, c0 non-zero."""
    torch.manual_seed(seed)
    module = torch.nn.LSTM(input_size, H, L, batch_first=True).double()
    g = torch.Generator().manual_seed(seed + 1)
    x, h0, c0 = (torch.randn(*shape, generator=g, dtype=torch.float64)
                 for shape in ((B, T, input_size), (L, B, H), (L, B, H)))
    return x, h0, c0, [w.detach() for w in module._flat_weights]


def on(inputs, device, dtype=torch.float64):
    x, h0, c0, weights = inputs
    return x.to(device, dtype), h0.to(device, dtype), c0.to(device, dtype), [w.to(device, dtype) for w in weights]


def forward_backward(inputs, dtype, device, backend, **kwargs):
    """output, h_n, c_n and the gradients of x, h0, c0 and every weight for fixed random output gradients."""
    x, h0, c0, weights = on(inputs, device, dtype)
    leaves = [t.requires_grad_(True) for t in (x, h0, c0, *weights)]
    output, (h_n, c_n) = lstm_attn.lstm(leaves[0], leaves[3:], leaves[1], leaves[2], backend=backend, **kwargs)
    g = torch.Generator().manual_seed(7)
    grads = [torch.randn(t.shape, generator=g, dtype=torch.float64).to(device, t.dtype) for t in (output, h_n, c_n)]
    return [output, h_n, c_n, *torch.autograd.grad((output, h_n, c_n), leaves, grads)]


def names(L):
    weights = [f"grad weights[{i}] ({n}_l{i // 4})" for i, n in
               zip(range(4 * L), itertools.cycle(("weight_ih", "weight_hh", "bias_ih", "bias_hh")))]
    return ["output", "h_n", "c_n", "grad x", "grad h0", "grad c0", *weights]


@contextlib.contextmanager
def tf32(allowed: bool):
    """cuDNN's LSTM and the fused kernels' float32 products follow torch.backends.cudnn.allow_tf32."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = allowed
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


@pytest.mark.parametrize("backend, device, shape, dtype, plan", params())
def test_parity_with_pytorchs_lstm_in_float64(backend, device, shape, dtype, plan):
    """float32 (TF32 off) and float64 to the tight rule; 16 bits within twice PyTorch's own LSTM's error in that
    dtype on the same device (cuDNN on a GPU)."""
    require_backend(backend, device)
    inputs = lstm_inputs(*shape)
    with tf32(False), plans.forcing(backend, "lstm", plan):
        got = forward_backward(inputs, dtype, device, backend)
        lowp = forward_backward(inputs, dtype, device, "reference") if dtype in (torch.bfloat16, torch.float16) \
            else [None] * len(got)
    want = forward_backward(inputs, torch.float64, "cpu", "reference")
    for name, a, r, lp in zip(names(shape[4]), got, want, lowp):
        assert a.dtype == dtype, f"{name} has dtype {a.dtype}"
        assert_parity(name, a, r, lp)


def tf32_rounded(t):
    """t rounded to TF32 (10 mantissa bits, to nearest, ties away), as the tensor cores take a float32 operand."""
    bits = t.to(torch.float32).view(torch.int32)
    return ((bits + 0x1000) & ~0x1FFF).view(torch.float32).to(t.dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("shape", [(17, 64, 8, 128, 2), (40, 9, 8, 256, 1), (3, 33, 3, 5, 3)],
                         ids=lambda s: "x".join(map(str, s)))
def test_tf32_within_twice_cudnns_error_and_tf32s_own(shape):
    """float32 with TF32 on (PyTorch's default for cuDNN's LSTM): at most twice cuDNN's own error against float64
    plus twice TF32's own. cuDNN need not use TF32 where the fused kernels do (at an unaligned H such as 5 it may run
    plain float32), so its error alone bounds nothing there. TF32's own error is measured on the same problem: how
    far rounding the weights, x and h0 to TF32 once moves the float64 result; the kernels round both operands of each
    product (the weights, and h or the preactivation gradients), so twice that."""
    require_backend("cuda", "cuda")
    inputs = lstm_inputs(*shape)
    with tf32(True):
        got = forward_backward(inputs, torch.float32, "cuda", "cuda")
        cudnn = forward_backward(inputs, torch.float32, "cuda", "reference")
    want = forward_backward(inputs, torch.float64, "cpu", "reference")
    x, h0, c0, weights = inputs
    rounded = forward_backward((tf32_rounded(x), tf32_rounded(h0), c0, [tf32_rounded(w) for w in weights]),
                               torch.float64, "cpu", "reference")
    for name, a, r, c, t in zip(names(shape[4]), got, want, cudnn, rounded):
        err, cudnn_err, tf32_err = ((v.double().cpu() - r).abs().max().item() for v in (a, c, t))
        bound = 2 * cudnn_err + 2 * (2 * tf32_err) + 1e-5 * max(1.0, r.abs().max().item())
        assert err <= bound, f"{name}: error {err:.3e}, cuDNN's {cudnn_err:.3e}, one TF32 rounding's {tf32_err:.3e}"


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", GPU_DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(17, 64, 8, 128, 2), (40, 9, 8, 256, 1), (5, 20, 3, 64, 3), (2, 7, 8, 31, 2)],
                         ids=lambda s: "x".join(map(str, s)))
def test_fused_kernels_agree_with_the_step_by_step_plan(monkeypatch, shape, dtype):
    """The same arithmetic in two plans: equal up to summation order, in every output."""
    require_backend("cuda", "cuda")
    assert_fused_agrees_with_stepwise(monkeypatch, shape, dtype)


def assert_fused_agrees_with_stepwise(monkeypatch, shape, dtype):
    inputs = lstm_inputs(*shape)
    with tf32(False):
        monkeypatch.setitem(plans.FORCED, ("cuda", "lstm"), "fused")
        fused = forward_backward(inputs, dtype, "cuda", "cuda")
        monkeypatch.setitem(plans.FORCED, ("cuda", "lstm"), "stepwise")
        stepwise = forward_backward(inputs, dtype, "cuda", "cuda")
    want = forward_backward(inputs, torch.float64, "cpu", "reference")
    for name, a, s, r in zip(names(shape[4]), fused, stepwise, want):
        # The step-by-step plan is the 16-bit yardstick here: the fused kernels may differ from it by its own error.
        assert_parity(name, a, r, s if dtype != torch.float32 else None)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_dropout_masks_are_nn_lstms_on_cpu_and_binomial_everywhere(device):
    require_backend(device, device)
    B, T, H, L, p = 64, 50, 32, 3, 0.3
    x = torch.randn(B, T, 4, device=device)
    torch.manual_seed(3)
    mask = backends._dropout_mask(x, L, H, p, True)
    assert mask.shape == (L - 1, T, B, H)
    values = mask.unique()
    assert ((values == 0) | torch.isclose(values, torch.tensor(1 / (1 - p), device=device))).all(), values
    dropped = (mask == 0).double().mean().item()
    n = mask.numel()
    assert abs(dropped - p) < 5 * (p * (1 - p) / n) ** 0.5, f"{dropped:.4f} of the units dropped, expected {p}"
    assert backends._dropout_mask(x, L, H, p, False) is None and backends._dropout_mask(x, L, H, 0.0, True) is None
    if device == "cpu":
        # The same seed gives nn.LSTM's own masks: the op in training equals PyTorch's LSTM in training.
        torch.manual_seed(0)
        module = torch.nn.LSTM(4, H, L, batch_first=True, dropout=p)
        torch.manual_seed(11)
        want, _ = module(x)
        torch.manual_seed(11)
        got, _ = lstm_attn.lstm(x, module._flat_weights, dropout=p, training=True, backend="cpu")
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("device, plan", [("cpu", "stepwise"), pytest.param("cuda", "stepwise", marks=pytest.mark.gpu),
                                          pytest.param("cuda", "fused", marks=pytest.mark.gpu)])
def test_dropout_applies_the_mask_between_layers_only_in_training(device, plan):
    """A given mask multiplies the input of layers 1 .. L - 1 (checked against running the layers one by one): in
    float64 on the CPU; in float32 (TF32 off) on a GPU, whose kernels take no float64, to float32's rounding. With
    three layers the fused plan applies the mask inside its two-layer launch and between launches."""
    require_backend(device, device)
    dtype, atol = (torch.float64, 1e-12) if device == "cpu" else (torch.float32, 1e-5)
    x, h0, c0, weights = on(lstm_inputs(3, 6, 2, 7, 3), device, dtype)
    mask = torch.dropout(torch.ones(2, 6, 3, 7, dtype=dtype, device=device), 0.5, True)
    with tf32(False):
        out, h_n, c_n, *_ = torch.ops.lstm_attn.lstm_fwd(x, weights, h0, c0, mask, False, plan)
        layer_in = x
        for l in range(3):
            o, _ = lstm_attn.lstm(layer_in, weights[4 * l:4 * l + 4], h0[l:l + 1], c0[l:l + 1], backend="reference")
            layer_in = o * mask[l].transpose(0, 1) if l < 2 else o
        torch.testing.assert_close(out, o, rtol=0, atol=atol)
        torch.manual_seed(0)
        eval_out, _ = lstm_attn.lstm(x, weights, h0, c0, dropout=0.5, training=False, backend=device)
        torch.testing.assert_close(eval_out, lstm_attn.lstm(x, weights, h0, c0, backend="reference")[0], rtol=0,
                                   atol=atol)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_deterministic_and_nan_stays_in_its_row(device):
    require_backend(device, device)
    inputs = lstm_inputs(5, 30, 3, 32, 2)
    dtype = torch.float32
    first, second = (forward_backward(inputs, dtype, device, device) for _ in range(2))
    for name, a, b in zip(names(2), first, second):
        assert torch.equal(a, b), f"{name} differs between two runs"
    x, h0, c0, weights = on(inputs, device, dtype)
    x[2, 4] = float("nan")
    leaf = x.requires_grad_(True)
    out, (h_n, c_n) = lstm_attn.lstm(leaf, weights, h0, c0, backend=device)
    out.sum().backward()
    clean = forward_backward(inputs, dtype, device, device)
    others = [0, 1, 3, 4]
    assert out[2, 4:].isnan().all() and not out[2, :4].isnan().any()
    torch.testing.assert_close(out[others], clean[0][others], rtol=0, atol=0)
    torch.testing.assert_close(h_n[:, others], clean[1][:, others], rtol=0, atol=0)
    assert torch.isfinite(leaf.grad[others]).all()


def test_h0_c0_default_to_zeros_and_no_workspace_without_gradients():
    require_backend("cpu", "cpu")
    x, _, _, weights = lstm_inputs(2, 5, 3, 6, 2)
    zeros = torch.zeros(2, 2, 6, dtype=torch.float64)
    got = lstm_attn.lstm(x, weights, backend="cpu")
    want = lstm_attn.lstm(x, weights, zeros, zeros, backend="cpu")
    for a, b in zip((got[0], *got[1]), (want[0], *want[1])):
        assert torch.equal(a, b)
    # Without a gradient to come, the forward keeps no hidden sequences, cell states or gates.
    *_, hidden, cell, gates = torch.ops.lstm_attn.lstm_fwd(x, weights, zeros, zeros, None, False, "stepwise")
    assert hidden.numel() == cell.numel() == gates.numel() == 0
    *_, hidden, cell, gates = torch.ops.lstm_attn.lstm_fwd(x, [w.requires_grad_() for w in weights], zeros, zeros,
                                                            None, False, "stepwise")
    assert hidden.shape == (2, 6, 2, 6) and cell.shape == (2, 5, 2, 6) and gates.shape == (2, 5, 2, 24)
    assert cell.dtype == gates.dtype == torch.float64


def test_lstm_of_a_modules_flat_weights_is_the_module():
    require_backend("cpu", "cpu")
    torch.manual_seed(0)
    module = torch.nn.LSTM(3, 8, 2, batch_first=True)
    x = torch.randn(4, 6, 3)
    want, (h_n, c_n) = module(x)
    for backend in ("auto", "reference", "cpu"):
        got, (gh, gc) = lstm_attn.lstm(x, module._flat_weights, backend=backend)
        for a, b in ((got, want), (gh, h_n), (gc, c_n)):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_cpu_autocast_runs_in_the_autocast_dtype_with_float32_gradients():
    require_backend("cpu", "cpu")
    x, h0, c0, weights = lstm_inputs(2, 6, 3, 8, 2)
    weights = [w.float().requires_grad_() for w in weights]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, (h_n, c_n) = lstm_attn.lstm(x.float(), weights, h0.float(), c0.float(), backend="cpu")
    assert out.dtype == h_n.dtype == torch.bfloat16
    out.float().sum().backward()
    assert all(w.grad is not None and w.grad.dtype == torch.float32 for w in weights)


def test_auto_takes_the_cpu_lstm_only_where_its_plan_beats_pytorchs():
    """The plan table decides (tests/test_lstm_cpu.py has the fused plan's own checks): float32 up to H = 256 runs
    the fused plan under auto, the rest PyTorch's LSTM."""
    assert backends.resolve("auto", "cpu", torch.float32, 128, op="lstm").name == "cpu"
    assert backends.resolve("auto", "cpu", torch.float32, 512, op="lstm").name == "reference"
    assert backends.resolve("cpu", "cpu", torch.float64, 128, op="lstm").name == "cpu"
    with pytest.raises(ValueError, match="has no LSTM kernels"):
        backends.resolve("triton", "cpu", torch.float32, 128, op="lstm")
    # The model's LSTM runs on its backend where that has LSTM kernels, else on "auto".
    from lstm_attn.modules import LSTMWithAttention

    for backend, lstm_backend in (("auto", "auto"), ("reference", "reference"), ("cpu", "cpu"), ("triton", "auto")):
        assert LSTMWithAttention(2, 4, 1, 0.0, backend=backend).lstm_backend == lstm_backend


@pytest.mark.parametrize("backend", ["reference", "cpu"])
@pytest.mark.parametrize("kind", ["bias=False", "unbatched", "unbatched bias=False"])
def test_takes_what_nn_lstm_takes(backend, kind):
    """nn.LSTM(batch_first=True, bias=False) and unbatched (T, I) input with (L, H) states, on every backend."""
    torch.manual_seed(0)
    module = torch.nn.LSTM(3, 5, 3, batch_first=True, bias="bias=False" not in kind).double()
    x = torch.randn(4, 7, 3, dtype=torch.float64, requires_grad=True)
    h0, c0 = (torch.randn(3, 4, 5, dtype=torch.float64, requires_grad=True) for _ in range(2))
    if "unbatched" in kind:
        x, h0, c0 = (t.detach()[0 if t is x else (slice(None), 0)].requires_grad_() for t in (x, h0, c0))
    results = []
    for run in ("module", "op"):
        leaves = [x, h0, c0, *module._flat_weights]
        if run == "module":
            out, (h_n, c_n) = module(x, (h0, c0))
        else:
            out, (h_n, c_n) = lstm_attn.lstm(x, module._flat_weights, h0, c0, backend=backend)
        results.append([out, h_n, c_n, *torch.autograd.grad((out.sum() + h_n.sum() + c_n.square().sum()), leaves)])
    for i, (a, b) in enumerate(zip(*results)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12, msg=lambda m, i=i: f"result {i}: {m}")


@pytest.mark.parametrize("options, message", [
    ({"bidirectional": True}, "bidirectional"), ({"bidirectional": True, "num_layers": 2}, "bidirectional"),
    ({"bidirectional": True, "num_layers": 2, "bias": False}, "bidirectional"), ({"proj_size": 3}, "proj_size"),
    ({"proj_size": 2, "num_layers": 2, "bias": False}, "proj_size")], ids=str)
def test_bidirectional_and_projections_are_refused_by_name(options, message):
    module = torch.nn.LSTM(4, 6, batch_first=True, **options)
    for backend in ("reference", "cpu"):
        with pytest.raises(ValueError, match=message):
            lstm_attn.lstm(torch.randn(2, 3, 4), module._flat_weights, backend=backend)


@pytest.mark.gpu
def test_auto_on_gpu_keeps_cudnn_and_the_cuda_backend_serves_every_size():
    assert backends.resolve("auto", "cuda", torch.bfloat16, 128, op="lstm").name == "reference"
    assert backends.resolve("cuda", "cuda", torch.float32, 1024, op="lstm").name == "cuda"


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_opcheck(device):
    """Both ops, the forward with and without gradients and a dropout mask (each opcheck compiles: kept to three)."""
    require_backend(device, device)
    x, h0, c0, weights = on(lstm_inputs(2, 3, 2, 4, 2), device, torch.float32)
    mask = torch.dropout(torch.ones(1, 3, 2, 4, device=device), 0.5, True)
    plan = plans.choose(device, "lstm", x.dtype, 4, device=x.device)
    torch.library.opcheck(torch.ops.lstm_attn.lstm_fwd, (x, weights, h0, c0, None, False, plan))
    leaves = [t.clone().requires_grad_(True) for t in (x, h0, c0, *weights)]
    torch.library.opcheck(torch.ops.lstm_attn.lstm_fwd, (leaves[0], leaves[3:], leaves[1], leaves[2], mask, False,
                                                         plan))
    out, h_n, c_n, hidden, cell, gates = torch.ops.lstm_attn.lstm_fwd(x, weights, h0, c0, mask, True, plan)
    torch.library.opcheck(torch.ops.lstm_attn.lstm_bwd, (torch.randn_like(out), torch.randn_like(h_n),
                                                         torch.randn_like(c_n), x, weights, h0, c0, mask, hidden,
                                                         cell, gates, plan))


def test_gradcheck_float64():
    require_backend("cpu", "cpu")
    x, h0, c0, weights = lstm_inputs(2, 3, 2, 3, 2)
    leaves = [t.requires_grad_(True) for t in (x, h0, c0, *weights)]

    def fn(x, h0, c0, *weights):
        output, (h_n, c_n) = lstm_attn.lstm(x, weights, h0, c0, backend="cpu")
        return output, h_n, c_n

    assert torch.autograd.gradcheck(fn, leaves)


@pytest.mark.parametrize("dynamic", [False, True], ids=["static", "dynamic"])
def test_compile_fullgraph(dynamic):
    require_backend("cpu", "cpu")
    torch._dynamo.reset()
    x, h0, c0, weights = on(lstm_inputs(3, 5, 2, 6, 2), "cpu", torch.float32)
    leaves = [t.requires_grad_(True) for t in (x, h0, c0, *weights)]

    def step(x, h0, c0, *weights):
        output, (h_n, c_n) = lstm_attn.lstm(x, list(weights), h0, c0, dropout=0.2, training=False, backend="cpu")
        return output.square().sum() + h_n.sum() + c_n.sum()

    compiled = torch.compile(step, fullgraph=True, dynamic=dynamic, backend="aot_eager")
    loss = compiled(*leaves)
    torch.testing.assert_close(loss, step(*leaves))
    for a, b in zip(torch.autograd.grad(loss, leaves), torch.autograd.grad(step(*leaves), leaves)):
        torch.testing.assert_close(a, b)
    torch._dynamo.reset()


def _bad(**changes):
    x, h0, c0, weights = lstm_inputs(2, 4, 3, 5, 2)
    args = {"x": x, "weights": weights, "h0": h0, "c0": c0, "dropout": 0.0, "training": False}
    args.update({k: v(args) if callable(v) else v for k, v in changes.items()})
    return args


@pytest.mark.parametrize("args, error, message", [
    (_bad(x=lambda a: a["x"][0, 0]), ValueError, "x must be 3-D"),
    (_bad(x=lambda a: a["x"][0]), ValueError, "h0 must be 2-D .num_layers, H. for an unbatched x"),
    (_bad(x=lambda a: a["x"][:, :0]), ValueError, "T .dim 1. = 0"),
    (_bad(weights=lambda a: a["weights"][:6]), ValueError, "four tensors per layer"),
    (_bad(weights=lambda a: a["weights"][:1] + [1.0] + a["weights"][2:]), TypeError, "list of tensors"),
    (_bad(weights=lambda a: [a["weights"][0][:, :2]] + a["weights"][1:]), ValueError,
     r"weights\[0\] \(weight_ih_l0\) has shape \(20, 2\); expected \(20, 3\)"),
    (_bad(weights=lambda a: a["weights"][:7] + [a["weights"][7][:5]]), ValueError, r"weights\[7\] \(bias_hh_l1\)"),
    (_bad(weights=lambda a: a["weights"][:4] + [a["weights"][4].float()] + a["weights"][5:]), TypeError,
     r"weights\[4\] \(weight_ih_l1\) has dtype torch.float32"),
    (_bad(h0=lambda a: a["h0"][:1]), ValueError, r"h0 has shape \(1, 2, 5\); expected \(num_layers, B, H\)"),
    (_bad(c0=lambda a: a["c0"].float()), TypeError, "c0 has dtype torch.float32"),
    (_bad(x=lambda a: a["x"].int()), TypeError, "x has dtype torch.int32"),
    (_bad(dropout=1.5), ValueError, "dropout must be a number in"),
    (_bad(training=1), TypeError, "training must be a bool"),
], ids=["x-1d", "unbatched-h0", "T0", "five-weights", "not-a-tensor", "w_ih-shape", "bias-shape", "weight-dtype", "h0-shape",
        "c0-dtype", "int-x", "dropout", "training"])
def test_bad_input_is_refused_naming_the_argument(args, error, message):
    with pytest.raises(error, match=message):
        lstm_attn.lstm(**args)


def test_the_ops_own_checks_name_the_argument():
    """Direct calls of torch.ops.lstm_attn.* are checked in C++ too: a clear error, never a fault in a kernel."""
    require_backend("cpu", "cpu")
    x, h0, c0, weights = lstm_inputs(2, 4, 3, 5, 2)
    with pytest.raises(RuntimeError, match=r"weights\[5\] \(w_hh of layer 1\) has shape"):
        torch.ops.lstm_attn.lstm_fwd(x, weights[:5] + [weights[5][:, :4]] + weights[6:], h0, c0, None, False,
                                     "stepwise")
    with pytest.raises(RuntimeError, match="dropout_mask has shape"):
        torch.ops.lstm_attn.lstm_fwd(x, weights, h0, c0, torch.ones(2, 4, 2, 5, dtype=torch.float64), False,
                                     "stepwise")
    with pytest.raises(RuntimeError, match="plan must be"):
        torch.ops.lstm_attn.lstm_fwd(x, weights, h0, c0, None, False, "fastest")
    out, h_n, c_n, hidden, cell, gates = torch.ops.lstm_attn.lstm_fwd(x, weights, h0, c0, None, False, "stepwise")
    with pytest.raises(RuntimeError, match="hidden has shape .*for_backward=True"):
        torch.ops.lstm_attn.lstm_bwd(out, h_n, c_n, x, weights, h0, c0, None, hidden, cell, gates, "stepwise")


# The fused CUDA kernels' configurations (csrc/cuda/lstm/lstm.h: bucket Hp, units per block, layers per launch),
# and one more split of the 64 bucket.
FUSED_CONFIGS = [(64, 64, 2), (64, 32, 2), (64, 16, 2), (128, 32, 2), (128, 16, 2), (256, 64, 1), (256, 32, 1)]


@pytest.mark.parametrize("Hp, units, max_layers", FUSED_CONFIGS, ids=lambda v: str(v))
@pytest.mark.parametrize("B, T, L, pad, dropout", [(17, 5, 3, 3, True), (1, 1, 1, 0, False), (2, 3, 2, None, False)],
                         ids=["B17-T5-L3-padded-dropout", "B1-T1-L1", "B2-T3-L2-H5"])
def test_fused_kernels_index_algebra_on_a_cpu_model(Hp, units, max_layers, B, T, L, pad, dropout):
    """The fused kernels' packing, layouts, wavefront and cluster exchange (tests/_fused_lstm_model.py, the kernels'
    indices in Python) against the op's CPU kernel in float64: any index slip is an O(1) error."""
    import _fused_lstm_model

    require_backend("cpu", "cpu")
    H = 5 if pad is None else Hp - pad  # H = 5: mostly padding, as H <= 32 runs in the 64 bucket
    x, h0, c0, weights = lstm_inputs(B, T, 3, H, L)
    mask = torch.dropout(torch.ones(L - 1, T, B, H, dtype=torch.float64), 0.4, True) if dropout else None
    g = torch.Generator().manual_seed(5)
    grad_output, grad_h_n, grad_c_n = (torch.randn(*s, generator=g, dtype=torch.float64)
                                       for s in ((B, T, H), (L, B, H), (L, B, H)))
    out, h_n, c_n, hidden, cell, gates = torch.ops.lstm_attn.lstm_fwd(x, weights, h0, c0, mask, True, "stepwise")
    grad_x, grad_w, grad_h0, grad_c0 = torch.ops.lstm_attn.lstm_bwd(grad_output, grad_h_n, grad_c_n, x, weights, h0,
                                                                    c0, mask, hidden, cell, gates, "stepwise")
    want = [out, h_n, c_n, grad_x, grad_h0, grad_c0, *grad_w]
    got = _fused_lstm_model.lstm(x, weights, h0, c0, mask, grad_output, grad_h_n, grad_c_n, Hp, units, max_layers)
    for name, a, b in zip(names(L), got, want):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10, msg=lambda m, name=name: f"{name}: {m}")


@pytest.fixture
def cpu_as_fused_lstm(monkeypatch):
    """LSTMWithAttention(backend="cpu") runs its LSTM through the cpu backend's kernels, as backend="cuda" does
    through the fused kernels. Counts the op's calls."""
    from lstm_attn import modules

    calls = []
    op = modules.lstm_op
    monkeypatch.setattr(modules, "lstm_op", lambda *a, **k: calls.append(k["backend"]) or op(*a, **k))
    return calls


def test_model_runs_its_lstm_through_the_op_with_the_seeds_state_dict(cpu_as_fused_lstm):
    """Outputs and gradients equal the seed's in training with dropout (on CPU the op draws nn.LSTM's masks), the
    nn.LSTM submodule and its state_dict keys stay, and torch.compile traces the whole forward as one graph."""
    from lstm_attn import reference
    from lstm_attn.modules import LSTMWithAttention

    torch.manual_seed(0)
    seed = reference.LSTMWithAttention(3, 16, 2, 0.25)
    ours = LSTMWithAttention(3, 16, 2, 0.25, backend="cpu")
    ours.load_state_dict(seed.state_dict(), strict=True)
    assert list(ours.state_dict()) == list(seed.state_dict()) and isinstance(ours.lstm, torch.nn.LSTM)
    module_calls = []
    ours.lstm.register_forward_hook(lambda *args: module_calls.append(1))
    x = torch.randn(4, 9, 3)
    results = []
    for model in (ours, seed):
        model.train().zero_grad()
        torch.manual_seed(5)
        y = model(x)
        y.square().sum().backward()
        results.append({"output": y, **{f"grad {n}": p.grad for n, p in model.named_parameters()}})
    assert cpu_as_fused_lstm == ["cpu"] and not module_calls
    for name, value in results[1].items():
        torch.testing.assert_close(results[0][name], value, rtol=1e-4, atol=1e-6,
                                   msg=lambda m, name=name: f"{name}: {m}")
    # fullgraph: no graph break anywhere (the nn.LSTM path cannot: Dynamo refuses nn.LSTM objects).
    torch._dynamo.reset()
    compiled = torch.compile(ours.eval(), fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(x), ours(x), rtol=1e-6, atol=1e-7)
    torch._dynamo.reset()
    # The op reads the nn.LSTM's own parameter objects, also after PyTorch replaces them.
    ours.double().load_state_dict({k: v + 1 for k, v in seed.double().state_dict().items()}, assign=True)
    assert all(a is b for a, b in zip(ours._lstm_weights, ours.lstm._flat_weights))


@pytest.mark.gpu
@pytest.mark.parametrize("dropout", [0.0, 0.3], ids=["no-dropout", "dropout"])
@pytest.mark.parametrize("plan", ["fused", "stepwise"])
def test_graph_replay_equals_eager(plan, dropout, monkeypatch):
    """What the benchmarks' device-time rows and the CUDA-graph training step replay: a forward+backward captured in a
    CUDA graph gives the eager call's bits (the kernels are deterministic). With dropout, the replay draws the masks
    the eager call drew from the same seed (PyTorch's graph-safe generator), and the fused kernels apply them inside
    the captured launches."""
    require_backend("cuda", "cuda")
    monkeypatch.setitem(plans.FORCED, ("cuda", "lstm"), plan)
    torch.manual_seed(0)
    module = torch.nn.LSTM(8, 128, 2, batch_first=True)
    weights = [w.detach().cuda().bfloat16().requires_grad_(True) for w in module._flat_weights]
    x = torch.randn(40, 33, 8, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    grads = [torch.randn(s, device="cuda", dtype=torch.bfloat16) for s in ((40, 33, 128), (2, 40, 128), (2, 40, 128))]

    def forward_backward():
        output, (h_n, c_n) = lstm_attn.lstm(x, weights, dropout=dropout, training=True, backend="cuda")
        return [output, h_n, c_n, *torch.autograd.grad((output, h_n, c_n), [x, *weights], grads)]

    torch.cuda.manual_seed(5)
    eager = forward_backward()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        forward_backward()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = forward_backward()
    torch.cuda.manual_seed(5)
    graph.replay()
    torch.cuda.synchronize()
    for a, b in zip(captured, eager):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    if dropout:
        assert not torch.equal(lstm_attn.lstm(x, weights, backend="cuda")[0], eager[0]), "the masks changed nothing"


@pytest.mark.gpu
@pytest.mark.parametrize("dtype, H", [(torch.bfloat16, 64), (torch.float32, 100)], ids=["bf16-one-block", "fp32-eight"])
def test_fused_kernels_with_more_clusters_than_fit(monkeypatch, dtype, H):
    """Clusters never wait for one another, so a batch of more clusters than the GPU holds at once only queues them.
    Each block of the fused kernels takes over 128 KB of shared memory (lstm.h), so an SM holds one and the GPU at
    most one cluster per SM: one cluster per 16 rows past that many. bfloat16 at H = 64 runs clusters of one block;
    exact float32 at H = 100 (padded to 128) clusters of eight."""
    require_backend("cuda", "cuda")
    B = 16 * (torch.cuda.get_device_properties(0).multi_processor_count + 1)
    assert_fused_agrees_with_stepwise(monkeypatch, (B, 5, 8, H, 2), dtype)


@pytest.mark.gpu
def test_model_with_fused_lstm_compiles_as_one_graph_and_matches_eager():
    """backend="cuda": the LSTM through the fused kernels, the forward one graph (inductor, fullgraph)."""
    from lstm_attn.modules import LSTMWithAttention

    require_backend("cuda", "cuda")
    torch.manual_seed(0)
    model = LSTMWithAttention(8, 128, 2, 0.0, backend="cuda").cuda()
    x = torch.randn(64, 50, 8, device="cuda")
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True)
    with tf32(False):
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-5, atol=1e-6)
    torch._dynamo.reset()
