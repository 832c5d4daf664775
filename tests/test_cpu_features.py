"""What the package depends on in the host CPU, made explicit: the autocast LSTM probe tells the truth, and the
C++ CPU kernels give the same bits whatever the thread count (a 2-core CI runner and a 64-core workstation
must agree)."""

import pytest
import torch

import lstm_attn
from _backends import require_backend
from _cases import ATTENTION_LAYERNORM_NAMES, attention_layernorm_inputs, pool_inputs
from lstm_attn import cpu_features


def test_cpu_autocast_lstm_probe_tells_what_this_cpu_does():
    """The probe is the host's real answer: nn.LSTM under CPU autocast fails exactly where it says it does."""
    for dtype in (torch.bfloat16, torch.float16):
        reason = cpu_features.cpu_autocast_lstm_error(dtype)
        lstm = torch.nn.LSTM(3, 8, 2, batch_first=True)
        try:
            with torch.autocast("cpu", dtype=dtype):
                lstm(torch.randn(2, 5, 3))
            failed = None
        except RuntimeError as exc:
            failed = str(exc)
        assert (reason is None) == (failed is None), (dtype, reason, failed)
        if reason is not None:
            assert failed.startswith(reason) and "LSTM" in reason
    facts = cpu_features.describe()
    assert facts["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert set(facts["autocast_lstm"]) == {"bfloat16", "float16"}


def outputs_and_grads(op, inputs, threads):
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        leaves = [t.detach().clone().requires_grad_(True) for t in inputs]
        out = op(*leaves)
        grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(3), dtype=out.dtype)
        return [out, *torch.autograd.grad(out, leaves, grad_out)]
    finally:
        torch.set_num_threads(saved)


# B = 1 with Tk past two key tiles of 256: the backward splits the keys into chunks and sums their dQ shares,
# and the forward splits one batch's query blocks over the threads, the paths where a thread-dependent split
# would change the sums. B = 5 splits by batch.
@pytest.mark.parametrize("shape", [(1, 300, 600, 40), (5, 70, 130, 16)], ids=lambda s: "x".join(map(str, s)))
def test_cpu_attention_layernorm_is_bitwise_the_same_for_any_thread_count(shape):
    require_backend("cpu", "cpu")
    inputs = attention_layernorm_inputs(*shape, torch.float32, "cpu")
    op = lambda *t: lstm_attn.attention_layernorm(*t, backend="cpu")  # noqa: E731
    one = outputs_and_grads(op, inputs, 1)
    for threads in (2, 3):
        for name, a, b in zip(["out", *ATTENTION_LAYERNORM_NAMES], one, outputs_and_grads(op, inputs, threads)):
            assert torch.equal(a, b), f"{name} differs between 1 and {threads} threads"


def test_cpu_softmax_pool_is_bitwise_the_same_for_any_thread_count():
    require_backend("cpu", "cpu")
    inputs = pool_inputs(7, 300, 40, torch.float32, "cpu")
    op = lambda *t: lstm_attn.softmax_pool(*t, backend="cpu")  # noqa: E731
    one = outputs_and_grads(op, inputs, 1)
    for threads in (2, 3):
        for name, a, b in zip(["out", "x", "u", "c"], one, outputs_and_grads(op, inputs, threads)):
            assert torch.equal(a, b), f"{name} differs between 1 and {threads} threads"
