"""Test setup: Triton's interpreter on machines without a GPU, the `gpu` mark, and the backends under test."""

import os

import torch

# Triton reads TRITON_INTERPRET when a @triton.jit function is defined, so it must be set before lstm_attn
# (and with it lstm_attn.kernels) is imported by any test module.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

NO_GPU_REASON = "needs a CUDA GPU: torch.cuda.is_available() is False on this machine"


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason=NO_GPU_REASON)
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def pytest_terminal_summary(terminalreporter):
    skipped = len(terminalreporter.stats.get("skipped", []))
    terminalreporter.write_line(f"lstm_attn: {skipped} tests skipped (reasons listed above)")


@pytest.fixture
def one_thread():
    """Tiny shapes gain nothing from threads, and on a busy machine OpenMP's waiting threads can stall each call
    for a second: one thread keeps the benchmark tools' tests fast wherever they run."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)
