"""The fast backends under test and the devices they run on here."""

import os

import pytest

import lstm_attn


def fast_backend_params():
    """(backend, device) pairs under test. Triton runs on CPU tensors under the interpreter, on CUDA otherwise;
    the GPU pairs carry the `gpu` mark so `pytest -m gpu` selects exactly the checks that need a GPU."""
    gpu = pytest.mark.gpu
    triton_device = "cpu" if os.environ.get("TRITON_INTERPRET") == "1" else "cuda"
    return [
        pytest.param("cpu", "cpu", id="cpu"),
        pytest.param("triton", triton_device, id=f"triton-{triton_device}",
                     marks=[] if triton_device == "cpu" else [gpu]),
        pytest.param("cuda", "cuda", id="cuda", marks=[gpu]),
    ]


def require_backend(backend: str, device: str) -> None:
    """A backend that should run here but does not is a failure, never a skip: CI must not go green on a
    broken build. Only the absence of a GPU skips (through the `gpu` mark)."""
    status = lstm_attn.available_backends(device)[backend]
    if not status.available:
        pytest.fail(f"backend {backend!r} should run on {device} here but is unavailable: {status.reason}")


def model_backend_params():
    """The pairs above plus the reference on both devices: the drop-in model runs with every backend."""
    return [pytest.param("reference", "cpu", id="reference-cpu"),
            pytest.param("reference", "cuda", id="reference-cuda", marks=[pytest.mark.gpu]),
            *fast_backend_params()]
