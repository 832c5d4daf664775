"""The pytest-benchmark suite's set-up: the device it runs on (`--bench-device`, else the GPU if there is one).

`pytest benchmarks/ --benchmark-only` times every provider of a case in one benchmark group, so the table
pytest-benchmark prints puts them side by side. Test modules read the device as `config.bench_device` when they
parametrize, and as the `bench_device` fixture when they run. Triton is timed on GPU only, never in its
CPU interpreter (lstm_attn.bench.cases refuses it there).
"""

import time

import pytest
import torch

from lstm_attn.bench.timing import sync


def pytest_addoption(parser):
    parser.addoption("--bench-device", choices=("cuda", "cpu"), default=None,
                     help="device the benchmarks run on (default: cuda when a GPU is visible, else cpu)")


def pytest_configure(config):
    device = config.getoption("--bench-device") or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise pytest.UsageError("--bench-device cuda, but torch sees no CUDA GPU here")
    config.bench_device = device


@pytest.fixture(scope="session")
def bench_device(pytestconfig) -> torch.device:
    return torch.device(pytestconfig.bench_device)


@pytest.fixture
def timed(benchmark, bench_device):
    """benchmark.pedantic in benchmark group `group`, its rounds sized so that timing takes about `seconds`: one
    call first (compilation, autotuning, first-call allocations) outside the timing, a second to size the rounds.
    Each call ends with a synchronize, so a GPU call is timed to its end; `setup` (untimed) runs before each."""
    def run(call, *, group: str, seconds: float, min_rounds: int, max_rounds: int, setup=None):
        def synced():
            call()
            sync(bench_device)

        for _ in range(2):
            start = time.perf_counter()
            if setup:
                setup()
            synced()
        rounds = max(min_rounds, min(max_rounds, int(seconds / (time.perf_counter() - start))))
        benchmark.group = group
        benchmark.pedantic(synced, setup=setup, rounds=rounds, warmup_rounds=1)
    return run
