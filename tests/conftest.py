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


@pytest.fixture(params=["host", "forced"])
def cpu_bf16_lstm_missing(request, monkeypatch):
    """Whether the CPU counts as one without a bfloat16 LSTM in oneDNN (where our model runs its LSTM in float32
    under CPU autocast): as this CPU's probe says ("host"), or always ("forced"), so that CPUs that have one test
    the path of those that do not, and the suite passes on both kinds."""
    from lstm_attn import cpu_features, backends

    monkeypatch.setattr(backends, "_warned_autocast_fallback", set())
    if request.param == "forced":
        monkeypatch.setattr(cpu_features, "cpu_autocast_lstm_error", lambda dtype: "forced by the test")
    return cpu_features.cpu_autocast_lstm_error(torch.bfloat16) is not None
