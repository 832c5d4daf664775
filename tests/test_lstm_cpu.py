"""The CPU LSTM's fused plan (csrc/cpu/lstm_fused.h) against PyTorch's LSTM in float64, on each instruction set this
CPU has: the issue's awkward sizes (H 1 ... 130, T 1, 2, 37, B 1, 3 and one that two threads split unevenly, one to
three layers, with and without h0/c0, dropout on and off), determinism at a fixed thread count, gradcheck, and the
model's trajectory over 100 Adam steps against the seed's."""

import contextlib
import unittest.mock

import pytest
import torch

import lstm_attn
from _backends import require_backend
from lstm_attn import cpu_features, plans, reference
from lstm_attn.modules import LSTMWithAttention
from lstm_attn.testing import assert_parity
from test_lstm import forward_backward, lstm_inputs, names, on

# (B, T, input_size, H, layers): every H, T and B of the list, 1-3 layers; B = 5 splits 3 + 2 over two threads;
# B = 27 gives each thread several row blocks of unequal sizes (14 rows: 5, 5, 4 at AVX-512's 6 a block).
SHAPES = [(1, 1, 1, 1, 1), (3, 2, 5, 5, 2), (5, 37, 8, 33, 3), (3, 37, 4, 100, 2), (1, 2, 8, 130, 1),
          (5, 1, 3, 130, 2), (5, 37, 8, 64, 2), (3, 5, 2, 17, 3), (27, 4, 3, 20, 2)]
ISAS = ("avx512", "avx2", "sse2")
_RANK = {"avx512": 2, "avx2": 1, "default": 0, "sse2": 0}


@contextlib.contextmanager
def isa(name: str, monkeypatch):
    """The fused plan forced, its float32 kernels capped at `name`; skipped, saying why, where the CPU lacks it."""
    have = cpu_features.cpu_simd()
    if _RANK[name] > _RANK[have]:
        pytest.skip(f"the {name} kernels need a CPU with {name.upper()}; this one's widest is {have}")
    monkeypatch.setitem(plans.FORCED, ("cpu", "lstm"), "fused" if name == "avx512" else f"fused-{name}")
    yield


@pytest.fixture
def two_threads():
    saved = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(saved)


@pytest.mark.parametrize("kernels", ISAS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_fused_plan_parity_in_float32(shape, kernels, monkeypatch, two_threads):
    require_backend("cpu", "cpu")
    x, h0, c0, weights = lstm_inputs(*shape)
    if SHAPES.index(shape) % 2:  # every other shape without h0 and c0: zeros
        h0, c0 = torch.zeros_like(h0), torch.zeros_like(c0)
    with isa(kernels, monkeypatch):
        got = forward_backward((x, h0, c0, weights), torch.float32, "cpu", "cpu")
    want = forward_backward((x, h0, c0, weights), torch.float64, "cpu", "reference")
    for name, a, r in zip(names(shape[4]), got, want):
        assert_parity(name, a, r)


@pytest.mark.parametrize("kernels", ISAS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_inference_equals_the_training_forward(shape, dtype, kernels, monkeypatch, two_threads):
    """Under no_grad the fused plan keeps no hidden (the steps' h roll through two slots a layer), and writes output
    and h_n itself: bitwise what the forward that keeps everything for the backward gives, dropout's masks included."""
    if dtype != torch.float32 and kernels != "avx512":
        pytest.skip("float64 and bfloat16 run the scalar path, whatever the kernels")
    x, h0, c0, weights = on(lstm_inputs(*shape), "cpu", dtype)
    p = 0.3 if shape[4] > 1 else 0.0
    results = []
    with isa(kernels, monkeypatch):
        for grad in (True, False):
            leaves = [t.requires_grad_(grad) for t in (x, *weights)]
            torch.manual_seed(3)
            with torch.set_grad_enabled(grad):
                output, (h_n, c_n) = lstm_attn.lstm(leaves[0], leaves[1:], h0, c0, dropout=p, training=p > 0,
                                                    backend="cpu")
            results.append([output.detach(), h_n.detach(), c_n.detach()])
    for name, a, b in zip(("output", "h_n", "c_n"), *results):
        assert torch.equal(a, b), f"{name} differs between the training forward and inference"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_dropout_uses_nn_lstms_masks_with_gradients(dtype, two_threads):
    """Training with dropout: the same seed gives nn.LSTM's own masks, so outputs and gradients are its."""
    torch.manual_seed(0)
    module = torch.nn.LSTM(4, 33, 3, batch_first=True, dropout=0.4).to(dtype)
    x = torch.randn(5, 21, 4, dtype=dtype, requires_grad=True)
    results = []
    for run in ("module", "fused"):
        module.zero_grad()
        x.grad = None
        torch.manual_seed(11)
        if run == "module":
            out, (h_n, c_n) = module(x)
        else:
            with plans.forcing("cpu", "lstm", "fused"):
                out, (h_n, c_n) = lstm_attn.lstm(x, module._flat_weights, dropout=0.4, training=True, backend="cpu")
        (out.sum() + h_n.square().sum() + c_n.sum()).backward()
        results.append([out, h_n, c_n, x.grad, *(w.grad for w in module._flat_weights)])
    tol = {"rtol": 1e-4, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 1e-10, "atol": 1e-12}
    for i, (a, b) in enumerate(zip(*results)):
        torch.testing.assert_close(a, b, **tol, msg=lambda m, i=i: f"result {i}: {m}")


def test_bitwise_deterministic_at_a_fixed_thread_count(two_threads):
    inputs = lstm_inputs(7, 40, 8, 48, 2)
    with plans.forcing("cpu", "lstm", "fused"):
        first, second = (forward_backward(inputs, torch.float32, "cpu", "cpu") for _ in range(2))
    for name, a, b in zip(names(2), first, second):
        assert torch.equal(a, b), f"{name} differs between two runs"


@pytest.mark.parametrize("kernels", ISAS)
def test_a_rows_results_do_not_depend_on_the_threads_or_row_blocks(kernels, monkeypatch):
    """Each row's arithmetic is the same whichever thread's slice and register block holds it: every per-row result
    (output, h_n, c_n and the gradients of x, h0 and c0) is bitwise the same on one thread as on two, which split
    the 27 rows into other blocks. (The weight gradients sum over rows in GEMMs whose order may follow the threads.)"""
    inputs = lstm_inputs(27, 9, 3, 20, 2)
    saved = torch.get_num_threads()
    results = []
    try:
        with isa(kernels, monkeypatch):
            for threads in (1, 2):
                torch.set_num_threads(threads)
                results.append(forward_backward(inputs, torch.float32, "cpu", "cpu"))
    finally:
        torch.set_num_threads(saved)
    compared = 0
    for name, a, b in zip(names(2), *results):
        if not name.startswith("grad weights"):
            assert torch.equal(a, b), f"{name} differs between one thread and two"
            compared += 1
    assert compared == 6


def test_reused_workspaces_carry_nothing_from_the_call_before(two_threads):
    """The fused plan's big workspaces (gates, preactivation gradients: 4 MiB each here) go back to a cache when freed
    and serve the next call of the same size: a call whose every value was NaN, then a clean one, must give the clean
    call's right answer (nothing read before it is written)."""
    inputs = lstm_inputs(16, 128, 8, 64, 2)
    x, h0, c0, weights = inputs
    poisoned = (torch.full_like(x, float("nan")), h0, c0, [torch.full_like(w, float("nan")) for w in weights])
    with plans.forcing("cpu", "lstm", "fused"):
        for _ in range(2):
            assert all(t.isnan().all() for t in forward_backward(poisoned, torch.float32, "cpu", "cpu"))
        got = forward_backward(inputs, torch.float32, "cpu", "cpu")
    want = forward_backward(inputs, torch.float64, "cpu", "reference")
    for name, a, r in zip(names(2), got, want):
        assert_parity(name, a, r)
    # Freed, the gates and the preactivation gradients (4 MiB each, both layers) went back to the cache, which
    # empty_cache() hands back to the system.
    del got
    assert lstm_attn.empty_cache() >= 2 * 4 * 2**20
    assert lstm_attn.empty_cache() == 0


def test_gradcheck_float64():
    x, h0, c0, weights = lstm_inputs(3, 4, 2, 3, 2)
    leaves = [t.requires_grad_(True) for t in (x, h0, c0, *weights)]

    def f(x, h0, c0, *weights):
        with plans.forcing("cpu", "lstm", "fused"):
            out, (h_n, c_n) = lstm_attn.lstm(x, list(weights), h0, c0, backend="cpu")
        return out, h_n, c_n

    assert torch.autograd.gradcheck(f, leaves)


def test_the_table_picks_the_fused_plan_and_auto_takes_it_in_float32():
    assert plans.choose("cpu", "lstm", torch.float32, 128) == "fused"
    assert plans.choose("cpu", "lstm", torch.float64, 128) == "fused"
    assert lstm_attn.backends.resolve("auto", "cpu", torch.float32, 64, op="lstm").name == "cpu"
    assert lstm_attn.backends.resolve("auto", "cpu", torch.float64, 64, op="lstm").name == "reference"
    # Under autocast the LSTM runs in bfloat16, where the fused plan is not measured faster: PyTorch's LSTM keeps it.
    assert lstm_attn.backends.resolve("auto", "cpu", torch.bfloat16, 64, op="lstm").name == "reference"
    calls = []
    real = torch.ops.lstm_attn.lstm_fwd
    x, weights = torch.randn(2, 3, 4), list(torch.nn.LSTM(4, 8, batch_first=True)._flat_weights)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with unittest.mock.patch.object(torch.ops.lstm_attn, "lstm_fwd", lambda *a: calls.append(a) or real(*a)):
            lstm_attn.lstm(x, weights)
    assert not calls


def test_model_trajectory_equals_the_seeds_over_100_adam_steps():
    """The same 100 Adam steps from the same weights: the model's LSTM runs through the fused plan (auto, float32),
    the seed's through nn.LSTM; the losses agree to float32 rounding."""
    torch.manual_seed(0)
    seed = reference.LSTMWithAttention(3, 16, 2, 0.0)
    ours = LSTMWithAttention(3, 16, 2, 0.0)
    ours.load_state_dict(seed.state_dict(), strict=True)
    assert lstm_attn.backends.resolve(ours.lstm_backend, "cpu", torch.float32, 16, op="lstm").name == "cpu"
    g = torch.Generator().manual_seed(1)
    data = [(torch.randn(8, 12, 3, generator=g), torch.randn(8, 1, generator=g)) for _ in range(10)]
    losses = []
    for model in (ours, seed):
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        trajectory = []
        for step in range(100):
            x, y = data[step % len(data)]
            optimizer.zero_grad()
            loss = torch.nn.functional.mse_loss(model(x), y)
            loss.backward()
            optimizer.step()
            trajectory.append(loss.item())
        losses.append(torch.tensor(trajectory, dtype=torch.float64))
    torch.testing.assert_close(losses[0], losses[1], rtol=2e-5, atol=1e-6)
