"""The whole model, forward + backward on CPU: the seed's LSTMWithAttention beside lstm_attn's; and the
full-output AttentionLayer, the seed's beside ours. Each of ours is checked against the seed (output and every
gradient, in float64) before it is timed, as the sweep checks its rows.

One benchmark group per case, so pytest-benchmark's table puts the models side by side. The issue's goal on a
2-core CPU: at least 1.4x at T=256 and 2.5x at T=512. "lstm_attn[reference]" is the exact last-step path in
plain torch, "lstm_attn[cpu]" the same path through the C++ kernel; the LSTM, identical in all of them,
bounds the speedup. Run: `pytest benchmarks/test_bench_model.py --benchmark-only`.
"""

import copy

import pytest
import torch

import lstm_attn
from lstm_attn import reference
from lstm_attn.bench import model_step, parity
from lstm_attn.modules import AttentionLayer, LSTMWithAttention
from lstm_attn.testing import parity_failure

CASES = {"model fwd+bwd B=64 T=256 input=8 H=64 layers=2": (64, 256, 8, 64, 2),
         "model fwd+bwd B=64 T=512 input=8 H=64 layers=2": (64, 512, 8, 64, 2)}
MODELS = ("seed", "lstm_attn[reference]", "lstm_attn[cpu]")
ATTENTION_CASE, ATTENTION_SHAPE = "AttentionLayer fwd+bwd B=64 T=256 H=64", (64, 256, 64)  # (B, T, H)
SECONDS_PER_BENCHMARK, MIN_ROUNDS, MAX_ROUNDS = 3.0, 5, 100


def build(model: str, input_size: int, hidden_size: int, num_layers: int) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The model to time, and the seed's with the same weights (the parity check's reference)."""
    torch.manual_seed(0)
    seed = reference.LSTMWithAttention(input_size, hidden_size, num_layers, 0.0)
    if model == "seed":
        return seed, seed
    backend = model.removeprefix("lstm_attn[").removesuffix("]")
    status = lstm_attn.available_backends("cpu")[backend]
    if not status.available:
        pytest.skip(f"backend {backend!r} is unavailable: {status.reason}")
    ours = LSTMWithAttention(input_size, hidden_size, num_layers, 0.0, backend=backend)
    ours.load_state_dict(seed.state_dict(), strict=True)
    return ours, seed


def check_against_seed(net, seed, x, y) -> None:
    """Output and every gradient of one training step against the seed's in float64, by the model rule the sweep
    uses (at most twice the seed's own float32 error, plus float32 rounding): a wrong model is never timed."""
    got = model_step.step_outputs(net, x, y, autocast=False)
    truth = model_step.step_outputs(copy.deepcopy(seed).double(), x.double(), y.double(), autocast=False)
    same = model_step.step_outputs(seed, x, y, autocast=False)
    result = parity.check(got, truth, same, rule=model_step.relative_to_seed(1e-5))
    if result.failure:
        pytest.fail(f"disagrees with the seed, so it is not timed: {result.failure}")


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("case", CASES)
def test_model_forward_backward(benchmark, timed, case, model):
    B, T, input_size, hidden_size, num_layers = CASES[case]
    net, seed = build(model, input_size, hidden_size, num_layers)
    x = torch.randn(B, T, input_size, generator=torch.Generator().manual_seed(1))
    y = torch.randn(B, 1, generator=torch.Generator().manual_seed(2))
    if net is not seed:
        check_against_seed(net, seed, x, y)
    net.train()

    def step():  # what a training step computes, less the optimizer
        net.zero_grad(set_to_none=True)
        net.loss_fn(net(x), y).backward()

    benchmark.extra_info.update(threads=torch.get_num_threads())
    timed(step, group=case, seconds=SECONDS_PER_BENCHMARK, min_rounds=MIN_ROUNDS, max_rounds=MAX_ROUNDS)


@pytest.mark.parametrize("layer", ("seed", "lstm_attn"))
def test_attention_layer_forward_backward(benchmark, timed, layer):
    B, T, H = ATTENTION_SHAPE
    torch.manual_seed(0)
    net = reference.AttentionLayer(H) if layer == "seed" else AttentionLayer(H)
    x = torch.randn(B, T, H, generator=torch.Generator().manual_seed(1), requires_grad=True)
    grad = torch.randn(B, T, H, generator=torch.Generator().manual_seed(2))
    if layer != "seed":  # output and input gradient against the seed's layer in float64, before any timing
        seed64 = reference.AttentionLayer(H).double()
        seed64.load_state_dict(net.state_dict())
        x64 = x.detach().double().requires_grad_(True)
        out64 = seed64(x64)
        out64.backward(grad.double())
        out = net(x)
        out.backward(grad)
        for name, got, want in (("output", out, out64), ("grad x", x.grad, x64.grad)):
            failure = parity_failure(got, want)
            if failure:
                pytest.fail(f"AttentionLayer {name} disagrees with the seed's, so it is not timed: {failure}")

    def step():
        net.zero_grad(set_to_none=True)
        x.grad = None
        net(x).backward(grad)

    benchmark.extra_info.update(threads=torch.get_num_threads())
    timed(step, group=ATTENTION_CASE, seconds=SECONDS_PER_BENCHMARK, min_rounds=MIN_ROUNDS, max_rounds=MAX_ROUNDS)
