"""`lstm-attn export`: a trained checkpoint to an ONNX file with dynamic batch and time axes.

The graph holds standard ONNX ops only (the model traces its plain-torch reference path under export), so
any ONNX runtime runs it. Where onnxruntime is installed the command checks the file against the model.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from lstm_attn.training.checkpoint import CheckpointError, load_model

INPUT_NAME, OUTPUT_NAME = "x", "y"
DYNAMIC_AXES = {INPUT_NAME: {0: "batch", 1: "time"}, OUTPUT_NAME: {0: "batch"}}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="a .ckpt file written by `lstm-attn train` (or any Trainer)")
    parser.add_argument("-o", "--output", help="the .onnx file to write (default: the checkpoint's path, .onnx)")
    parser.add_argument("--window", type=int, default=16,
                        help="time steps of the example input that is traced; any length runs (default: %(default)s)")


def export(model: torch.nn.Module, path: str | Path, window: int = 16) -> Path:
    """Write `model` as ONNX: input x (batch, time, input_size), output y (batch, output_size)."""
    path = Path(path)
    example = torch.randn(2, window, model.hparams.input_size)
    model.to_onnx(path, example, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], dynamic_axes=DYNAMIC_AXES)
    return path


def max_abs_difference(model: torch.nn.Module, path: str | Path, shapes=((1, 1), (3, 7), (5, 40))) -> float:
    """The largest difference between onnxruntime's output and the model's over a few batch and time sizes."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    worst = 0.0
    with torch.no_grad():
        for batch, time in shapes:
            x = torch.randn(batch, time, model.hparams.input_size)
            (got,) = session.run(None, {INPUT_NAME: x.numpy()})
            worst = max(worst, float(np.abs(got - model(x).numpy()).max()))
    return worst


def run(args: argparse.Namespace) -> int:
    if args.window < 1:
        print(f"lstm-attn export: error: --window must be at least 1, got {args.window}", file=sys.stderr)
        return 2
    try:
        model = load_model(args.checkpoint)
    except CheckpointError as exc:
        print(f"lstm-attn export: error: {exc}", file=sys.stderr)
        return 2
    path = export(model, args.output or Path(args.checkpoint).with_suffix(".onnx"), args.window)
    print(f"wrote {path}")
    try:
        difference = max_abs_difference(model, path)
    except ImportError:
        print("onnxruntime is not installed: the file was not checked against the model")
    else:
        print(f"onnxruntime reproduces the model to within {difference:.2e} (max abs difference)")
    return 0
