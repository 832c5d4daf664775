"""The triton backend's host path: eager calls through plain autograd.Functions, replays of recorded launches per shape, three
launches per forward+backward, the two attention plans and the pinned autotuning winners."""

import json
import os
import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest
import torch

import lstm_attn
from lstm_attn import plans
from _backends import fast_backend_params, require_backend
from _cases import (ATTENTION_LAYERNORM_NAMES, attention_layernorm_inputs, check_op_parity, pool_inputs,
                    reference_attention_layernorm)

TRITON = [p for p in fast_backend_params() if p.values[0] == "triton"]


def _grads(fn, inputs, grad):
    leaves = [t.detach().clone().requires_grad_(True) for t in inputs]
    out = fn(*leaves)
    return [out, *torch.autograd.grad(out, leaves, grad)]


@pytest.mark.parametrize("backend, device", TRITON)
@pytest.mark.parametrize("shape", [(2, 5, 9, 24), (2, 17, 20, 130)], ids=["flash", "matmul"])
def test_eager_and_registered_paths_are_bitwise_equal(backend, device, shape):
    require_backend(backend, device)
    B, Tq, Tk, H = shape
    inputs = attention_layernorm_inputs(B, Tq, Tk, H, torch.float32, device)
    grad = torch.randn(B, Tq, H, generator=torch.Generator().manual_seed(1)).to(device)
    scale = H**-0.5
    eager = _grads(partial(lstm_attn.attention_layernorm, backend="triton"), inputs, grad)
    plan = plans.choose("triton", "attention", torch.float32, H, queries=Tq, keys=Tk)
    registered = _grads(lambda *a: torch.ops.lstm_attn.triton_attention_layernorm_fwd(*a, 1e-5, scale, plan)[0],
                        inputs, grad)
    for name, a, b in zip(["out", *ATTENTION_LAYERNORM_NAMES], eager, registered):
        assert torch.equal(a, b), f"{name}: the eager path and the triton_op registration differ"
    x, u, c = pool_inputs(3, 11, 16, torch.float32, device)
    g = torch.randn(3, 16).to(device)
    eager = _grads(partial(lstm_attn.softmax_pool, backend="triton"), (x, u, c), g)
    registered = _grads(lambda *a: torch.ops.lstm_attn.triton_softmax_pool_fwd(*a)[0], (x, u, c), g)
    for name, a, b in zip(["pooled", "x", "u", "c"], eager, registered):
        assert torch.equal(a, b), f"softmax_pool {name}: the eager path and the triton_op registration differ"


@pytest.mark.parametrize("backend, device", TRITON)
def test_eager_calls_take_the_autograd_function_and_compiling_takes_the_op(backend, device, monkeypatch):
    require_backend(backend, device)
    leaves = [t.requires_grad_(True) for t in attention_layernorm_inputs(2, 3, 5, 8, torch.float32, device)]
    out = lstm_attn.attention_layernorm(*leaves, backend="triton")
    assert type(out.grad_fn).__name__ == "AttentionLayerNormFunctionBackward"
    pooled = lstm_attn.softmax_pool(*[t.requires_grad_(True) for t in pool_inputs(2, 4, 8, torch.float32, device)],
                                    backend="triton")
    assert type(pooled.grad_fn).__name__ == "SoftmaxPoolFunctionBackward"
    # While torch.compile or export traces, the call must be the registered op (the graph's node).
    calls = []
    real_op = torch.ops.lstm_attn.triton_attention_layernorm_fwd
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    monkeypatch.setattr(torch.ops.lstm_attn, "triton_attention_layernorm_fwd",
                        lambda *a: calls.append(a) or real_op(*a))
    lstm_attn.attention_layernorm(*leaves, backend="triton")
    assert len(calls) == 1


@pytest.mark.parametrize("backend, device", TRITON)
@pytest.mark.parametrize("plan", ["flash", "matmul"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
def test_both_attention_plans_keep_parity(backend, device, plan, dtype, monkeypatch):
    """Each plan forced on a shape the table gives the other (H = 59 -> flash, H = 130 with Tq >= 16 -> matmul)
    and on one of its own, with tails in every dimension."""
    require_backend(backend, device)
    monkeypatch.setitem(plans.FORCED, ("triton", "attention"), plan)
    for B, Tq, Tk, H in [(2, 17, 21, 59), (2, 17, 9, 130)]:
        inputs = attention_layernorm_inputs(B, Tq, Tk, H, dtype, device)
        grad = torch.randn(B, Tq, H, dtype=torch.float64, generator=torch.Generator().manual_seed(1)).to(device)
        check_op_parity(partial(lstm_attn.attention_layernorm, backend="triton"), reference_attention_layernorm,
                        inputs, grad, ATTENTION_LAYERNORM_NAMES)


@pytest.mark.parametrize("backend, device", TRITON)
def test_matmul_plan_backward_is_deterministic(backend, device, monkeypatch):
    require_backend(backend, device)
    monkeypatch.setitem(plans.FORCED, ("triton", "attention"), "matmul")
    inputs = attention_layernorm_inputs(3, 33, 40, 24, torch.float32, device)
    grad = torch.randn(3, 33, 24).to(device)
    first, second = (_grads(partial(lstm_attn.attention_layernorm, backend="triton"), inputs, grad) for _ in "ab")
    for name, a, b in zip(["out", *ATTENTION_LAYERNORM_NAMES], first, second):
        assert torch.equal(a, b), f"{name} differs between two identical runs of the matmul plan"


def test_pinned_autotuning_winner_replaces_the_search(monkeypatch):
    pytest.importorskip("triton")
    from lstm_attn.kernels import _common, attention_layernorm, tuned

    configs = attention_layernorm._FWD_TABLE[(64, False)]
    pinned = configs[1].all_kwargs()
    monkeypatch.setattr(_common, "gpu_arch", lambda: "sm_90")
    monkeypatch.setitem(tuned.PINNED, ("attention_fwd", "sm_90", "bfloat16", (64, False)), pinned)
    prune = _common._pinned_pruner("attention_fwd", (64, False))
    q = torch.empty(1, dtype=torch.bfloat16)
    assert prune(configs, {"Q": q}) == [configs[1]]
    # Another dtype, or a pin no longer in the table: the whole table is tuned.
    assert prune(configs, {"Q": q.float()}) == configs
    monkeypatch.setitem(tuned.PINNED, ("attention_fwd", "sm_90", "bfloat16", (64, False)), {"BLOCK_M": 999})
    assert prune(configs, {"Q": q}) == configs


def test_interpreter_never_replays():
    pytest.importorskip("triton")
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("this process runs compiled Triton kernels; the probe below covers replays")
    from lstm_attn.kernels import _launch

    assert _launch.REPLAYS_OFF_REASON == "Triton's interpreter compiles no kernel"


@pytest.fixture(scope="module")
def probe():
    """Facts from tests/_launch_replay_probe.py, run once in a process of its own (see there)."""
    pytest.importorskip("triton")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    script = Path(__file__).with_name("_launch_replay_probe.py")
    done = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _without_hooks_flag(launches):
    return [launch[:-1] for launch in launches]


def test_three_launches_per_attention_forward_backward(probe):
    assert probe["replays_off_reason"] is None
    assert [launch[0] for launch in probe["replayed"]] == [
        "_attention_layernorm_fwd_kernel", "_layernorm_bwd_kernel", "_attention_bwd_kernel"]
    assert [launch[0] for launch in probe["pool_replayed"]] == ["_softmax_pool_fwd_kernel", "_softmax_pool_bwd_kernel"]


def test_replayed_launches_replay_the_generic_path_exactly(probe):
    # Same compiled variants, grids and arguments; only the hooks differ (the generic path passes its chains).
    assert all(not launch[-1] for launch in probe["replayed"] + probe["pool_replayed"])
    assert all(launch[-1] for launch in probe["hooked"] + probe["pool_hooked"])
    assert _without_hooks_flag(probe["replayed"]) == _without_hooks_flag(probe["hooked"])
    assert _without_hooks_flag(probe["pool_replayed"]) == _without_hooks_flag(probe["pool_hooked"])
    # With the hook gone the plans are back.
    assert probe["replayed_after_hook"] == probe["replayed"]


def test_an_unaligned_input_gets_its_own_plan(probe):
    first, replayed = probe["unaligned_first"], probe["unaligned_replayed"]
    assert all(launch[-1] for launch in first), "a new alignment must go through the generic path first"
    assert _without_hooks_flag(replayed) == _without_hooks_flag(first)
    # Triton compiled another variant of the forward for the unaligned q; the aligned plan was not reused.
    assert first[0][1] != probe["replayed"][0][1]
    assert probe["replays_for_shapes"] == 2


def test_plans_are_off_outside_the_triton_versions_read(probe):
    assert "outside the versions" in probe["reason_for_3_5"]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
def test_plans_launch_on_a_gpu_as_the_generic_path_does(dtype):
    """On a GPU the plans replay real compiled kernels: the same results bitwise as Triton's generic launch path
    (taken while a launch hook is set), for both attention plans and softmax_pool."""
    require_backend("triton", "cuda")
    from triton import knobs

    from lstm_attn.kernels import _launch, attention_layernorm

    assert _launch.REPLAYS_OFF_REASON is None, _launch.REPLAYS_OFF_REASON
    noop = lambda *a, **k: None  # noqa: E731
    for B, Tq, Tk, H in [(3, 37, 53, 64), (2, 40, 70, 256)]:
        inputs = attention_layernorm_inputs(B, Tq, Tk, H, dtype, "cuda")
        grad = torch.randn(B, Tq, H, device="cuda", dtype=dtype)
        run = partial(_grads, partial(lstm_attn.attention_layernorm, backend="triton"), inputs, grad)
        run()  # records the launches
        replayed = run()
        knobs.runtime.launch_enter_hook.add(noop)
        try:
            generic = run()
        finally:
            knobs.runtime.launch_enter_hook.remove(noop)
        for name, a, b in zip(["out", *ATTENTION_LAYERNORM_NAMES], replayed, generic):
            assert torch.equal(a, b), f"{name} differs between the replayed and the generic launch (H = {H})"
    assert any(attention_layernorm._BWD.replays.values()), "no backward launch was recorded"
