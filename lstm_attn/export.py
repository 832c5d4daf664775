"""`lstm-attn export`: a trained checkpoint to one self-contained ONNX file with dynamic batch and time axes.

The graph holds standard ONNX ops only (the model traces its plain-torch reference path under export), so any ONNX
runtime runs it. It comes from torch.onnx's TorchScript exporter (dynamo=False), not from the default torch.export
one, which on torch 2.13 gets an LSTM model wrong in two ways: it records the LSTM's output with the traced length as
a fixed size, so onnxruntime plans its buffers by that length and fails on longer inputs wherever another tensor has
the same size (a hidden size equal to the traced length: "Shape mismatch attempting to re-use buffer"); and it patches
the LSTM kernel without clearing the dispatcher's cache, so a second export in the same process traces the whole time
axis as fixed. The TorchScript exporter writes ONNX's LSTM op with a symbolic sequence axis, keeps the weights inside
the file (nothing beside it to lose when it is copied), and keeps no state between exports.

The file is written under a temporary name in the target folder, checked against the model by onnxruntime where it is
installed (batch 1 and 3; T = 1, 2, the traced length and three times it), and only then given its name: a failed
export leaves no file behind.

This module imports torch only inside its functions: the command line reads its options without loading torch.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path

from lstm_attn import argtypes
from lstm_attn.extras import install_hint

INPUT_NAME, OUTPUT_NAME = "x", "y"
DYNAMIC_AXES = {INPUT_NAME: {0: "batch", 1: "time"}, OUTPUT_NAME: {0: "batch"}}
DEFAULT_WINDOW = 16
# One protobuf message holds at most 2 GiB: an ONNX file with its weights inside cannot be larger.
PROTOBUF_LIMIT = 2**31
CHECK_BATCHES = (1, 3)
# onnxruntime's float32 arithmetic against torch's: both round differently, never by more than this (relative to the
# output's size, at least 1).
TOLERANCE = 1e-4


class ExportError(RuntimeError):
    """The model could not be written as one ONNX file, or the file does not reproduce it."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="a .ckpt file written by `lstm-attn train` (or any Trainer)")
    parser.add_argument("-o", "--output", help="the .onnx file to write (default: the checkpoint's path, .onnx)")
    parser.add_argument("--window", type=argtypes.positive_int, default=DEFAULT_WINDOW,
                        help="time steps of the example input that is traced; any length runs (default: %(default)s)")


def check_lengths(window: int) -> tuple[int, ...]:
    return tuple(sorted({1, 2, window, 3 * window}))


def export(model, path: str | Path, window: int = DEFAULT_WINDOW) -> Path:
    """Write `model` as one ONNX file, its weights inside: input x (batch, time, input_size), output y (batch,
    output_size), batch and time dynamic. Written under a temporary name and checked with onnxruntime where it is
    installed (ExportError if it does not reproduce the model), then renamed to `path`; a failure leaves no file."""
    import torch

    path = Path(path)
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    if weight_bytes >= PROTOBUF_LIMIT:
        raise ExportError(f"the model's weights take {weight_bytes / 2**30:.1f} GiB; one ONNX file holds at most 2 GiB")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        example = torch.randn(2, window, model.hparams.input_size)
        with warnings.catch_warnings():
            # The choice of the TorchScript exporter is deliberate (the module's docstring says why), and its warning
            # that torch.export is now the default says nothing to whoever exports.
            warnings.filterwarnings("ignore", "You are using the legacy TorchScript-based ONNX export",
                                    DeprecationWarning)
            torch.onnx.export(model.eval(), (example,), str(tmp), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                              dynamic_axes=DYNAMIC_AXES, dynamo=False)
        try:
            difference, shape = max_abs_difference(model, tmp, check_lengths(window))
        except ImportError:
            pass
        else:
            if not difference <= TOLERANCE:
                raise ExportError(f"onnxruntime's output differs from the model's by {difference:.3g} at batch "
                                  f"{shape[0]}, {shape[1]} steps (relative to the output's size)")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def max_abs_difference(model, path: str | Path, lengths: tuple[int, ...]) -> tuple[float, tuple[int, int]]:
    """The largest difference between onnxruntime's output and the model's, relative to the output's size (at least
    1), over CHECK_BATCHES and `lengths`, and the (batch, time) where it is."""
    import numpy as np
    import onnxruntime
    import torch

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    worst, where = 0.0, (0, 0)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for batch in CHECK_BATCHES:
            for time in lengths:
                x = torch.randn(batch, time, model.hparams.input_size, generator=generator)
                (got,) = session.run(None, {INPUT_NAME: x.numpy()})
                want = model(x).numpy()
                difference = float(np.abs(got - want).max() / max(1.0, float(np.abs(want).max())))
                if not difference <= worst:
                    worst, where = difference, (batch, time)
    return worst, where


def run(args: argparse.Namespace) -> int:
    import torch

    from lstm_attn.training.checkpoint import CheckpointError, load_model

    out = Path(args.output) if args.output else Path(args.checkpoint).with_suffix(".onnx")
    if not out.parent.is_dir():
        print(f"lstm-attn export: error: --output: folder {str(out.parent)!r} does not exist", file=sys.stderr)
        return 2
    try:
        model = load_model(args.checkpoint)
    except CheckpointError as exc:
        print(f"lstm-attn export: error: {exc}", file=sys.stderr)
        return 2
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        checked = (f"onnxruntime is not installed ({install_hint('onnxruntime')}): the file was not checked against "
                   f"the model")
    else:
        checked = (f"onnxruntime reproduces the model at batch {' and '.join(map(str, CHECK_BATCHES))}, "
                   f"{', '.join(map(str, check_lengths(args.window)))} steps")
    try:
        with warnings.catch_warnings():
            # The exporter's notes on tracing: a shape check turned into a constant (validation.py's, which holds for
            # every input that reaches it), and that an LSTM traced at batch 2 may not run at other batch sizes,
            # which the check above runs.
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
            warnings.filterwarnings("ignore", "Exporting a model to ONNX with a batch_size other than 1")
            path = export(model, out, args.window)
    except ExportError as exc:
        print(f"lstm-attn export: error: {exc}; no file written", file=sys.stderr)
        return 1
    print(f"wrote {path} ({path.stat().st_size / 1024:.0f} KiB, one self-contained file: the graph and its weights)")
    print(checked)
    return 0
