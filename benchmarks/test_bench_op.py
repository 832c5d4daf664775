"""attention_layernorm under pytest-benchmark: forward, backward and forward+backward, every backend and peer.

One benchmark group per (pass, dtype, shape) holds every provider, checked against the reference before it
is timed (lstm_attn.bench.parity), so pytest-benchmark's table compares them side by side. The first group
on CPU is the goal's: forward+backward at B=32, T=256, H=128, float32, "reference" beside "cpu" (goal 1.5x).
The sweep (`lstm-attn bench`) covers more shapes and writes JSON; this suite is for a quick look.
"""

import itertools

import pytest

from lstm_attn.bench import cases, parity
from lstm_attn.bench.timing import sync

PASSES = ("fwd+bwd", "fwd", "bwd")
SHAPES = {"cpu": [(32, 256, 128)], "cuda": [(64, 256, 128), (16, 1024, 128)]}  # (B, T, H)
DTYPES = {"cpu": ("float32",), "cuda": ("float32", "bfloat16")}
SECONDS_PER_BENCHMARK, MIN_ROUNDS, MAX_ROUNDS = 1.0, 5, 200


def pytest_generate_tests(metafunc):
    device = metafunc.config.bench_device
    params = [pytest.param(pass_, dtype, shape, provider,
                           id=f"{pass_}-{dtype}-B{shape[0]}-T{shape[1]}-H{shape[2]}-{provider}")
              for pass_ in PASSES for dtype in DTYPES[device] for shape in SHAPES[device]
              for provider in cases.DEFAULT_PROVIDERS[device]]
    metafunc.parametrize("pass_, dtype, shape, provider", params)


def test_attention_layernorm(benchmark, timed, bench_device, pass_, dtype, shape, provider):
    B, T, H = shape
    group = cases.op_group(pass_, dtype, B, T, H, [provider], bench_device, seed=0)
    candidate = group.candidates[0]
    if candidate.skip_reason:
        pytest.skip(f"{provider}: {candidate.skip_reason}")
    runner = candidate.build()
    if candidate.checked:
        result = parity.check(runner.outputs(), *group.expected())
        if result.failure:
            pytest.fail(f"{provider} disagrees with the reference, so it is not timed: {result.failure}")
    sets = itertools.cycle(range(group.n_sets))
    current = [0]

    def setup():  # untimed: the next input set, and for bwd its forward
        current[0] = next(sets)
        if runner.setup:
            runner.setup(current[0])
        sync(bench_device)

    benchmark.extra_info.update(backend=provider, flops_model=group.work.flops, bytes_model=group.work.bytes)
    timed(lambda: runner.run(current[0]), setup=setup, group=f"attention_layernorm {pass_} {dtype} B={B} T={T} H={H}",
          seconds=SECONDS_PER_BENCHMARK, min_rounds=MIN_ROUNDS, max_rounds=MAX_ROUNDS)
