"""The pytest-benchmark suite's set-up: the device it runs on (`--bench-device`, else the GPU if there is one).

`pytest benchmarks/ --benchmark-only` times every provider of a case in one benchmark group, so the table
pytest-benchmark prints puts them side by side. Test modules read the device as `config.bench_device` when they
parametrize, and as the `bench_device` fixture when they run. Triton is timed on GPU only, never in its
CPU interpreter (lstm_attn.bench.cases refuses it there).
"""

import pytest
import torch


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
