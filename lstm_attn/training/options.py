"""`lstm-attn train`'s options. This module imports neither torch nor Lightning (`lstm-attn train --help` answers at
once); the training itself is lstm_attn.training.command, imported once the options parse."""

from __future__ import annotations

import argparse

from lstm_attn import argtypes
from lstm_attn.data import BUILTIN_NAME, BUILTIN_SEASON, DELIMITERS, FILL_METHODS

PRECISIONS = ("32-true", "bf16-mixed", "16-mixed", "64-true", "bf16-true")
ACCELERATORS = ("auto", "cpu", "gpu", "cuda")
# lstm_attn.backends.BACKENDS, which imports torch to define them; tests/test_cli.py holds the two equal.
BACKENDS = ("reference", "cpu", "cuda", "triton")
SEED_LR = 0.001  # the original's Adam learning rate, fixed in its configure_optimizers
RESUME_LAST = "last"


def separator(text: str) -> str:
    """A delimiter by its name (tab, semicolon, ...), as an escape (\\t), or as the one character itself."""
    by_name = {name: sep for sep, name in DELIMITERS.items()}
    sep = by_name.get(text.lower(), "\t" if text == "\\t" else text)
    if len(sep) != 1:
        raise argparse.ArgumentTypeError(f"must be one character or one of {', '.join(by_name)}, got {text!r}")
    return sep


def add_arguments(parser: argparse.ArgumentParser) -> None:
    data = parser.add_argument_group("data")
    data.add_argument("--csv", metavar="PATH", help=f"a CSV file, rows in time order (default: the built-in "
                                                    f"{BUILTIN_NAME!r} series, weekly Mauna Loa CO2)")
    data.add_argument("--column", metavar="NAME", help="the CSV column to forecast (required with --csv)")
    data.add_argument("--sep", type=separator, metavar="DELIMITER",
                      help=f"the CSV's delimiter: one character or {', '.join(DELIMITERS.values())} (default: "
                           f"whichever of those the header line holds most of; a comma if none)")
    data.add_argument("--fill", choices=FILL_METHODS,
                      help="missing or non-finite values (empty cells, NaN, inf): fill gaps by linear interpolation "
                           "or drop their rows (default: an error naming the first one for a CSV; interpolate for "
                           f"the built-in {BUILTIN_NAME!r}, which has 59 missing weeks)")
    data.add_argument("--window", type=argtypes.positive_int, default=52,
                      help="input steps per sample (default: %(default)s)")
    data.add_argument("--horizon", type=argtypes.positive_int, default=1,
                      help="forecast this many steps ahead (default: %(default)s)")
    data.add_argument("--val-fraction", type=argtypes.open_fraction, default=0.2,
                      help="the last part of the series, by time, kept for validation (default: %(default)s)")
    data.add_argument("--season", type=argtypes.positive_int,
                      help=f"season length for the seasonal naive baseline (default: {BUILTIN_SEASON} for "
                           f"{BUILTIN_NAME!r}, none for a CSV)")
    model = parser.add_argument_group("model")
    model.add_argument("--hidden-size", type=argtypes.positive_int, default=32, help="(default: %(default)s)")
    model.add_argument("--layers", "--num-layers", dest="num_layers", type=argtypes.positive_int, default=2,
                       help="LSTM layers (default: %(default)s)")
    model.add_argument("--dropout", type=argtypes.dropout, default=0.0,
                       help="between LSTM layers, at least 0 and below 1 (default: %(default)s)")
    model.add_argument("--lr", type=argtypes.positive_float, default=SEED_LR,
                       help="Adam's learning rate (default: %(default)s, the original model's)")
    model.add_argument("--backend", default="auto", choices=("auto", *BACKENDS),
                       help="the kernels behind the model's attention; one this machine cannot run is refused with "
                            "the reason (default: %(default)s)")
    run = parser.add_argument_group("training")
    run.add_argument("--epochs", type=argtypes.positive_int, default=8, help="(default: %(default)s)")
    run.add_argument("--batch-size", type=argtypes.positive_int, default=32, help="(default: %(default)s)")
    run.add_argument("--seed", type=argtypes.seed, default=0,
                     help="seeds the weights, and with the epoch each epoch's shuffle and dropout (default: "
                          "%(default)s)")
    run.add_argument("--precision", default="32-true", choices=PRECISIONS, help="(default: %(default)s)")
    run.add_argument("--accelerator", default="auto", choices=ACCELERATORS,
                     help="gpu and cuda need a CUDA GPU (default: %(default)s)")
    run.add_argument("--devices", type=argtypes.devices, default=1, help="a count or auto (default: %(default)s)")
    run.add_argument("--output", default="runs", help="directory for logs and checkpoints (default: %(default)s)")
    run.add_argument("--resume", metavar=f"PATH|{RESUME_LAST}",
                     help="continue a run from a checkpoint (its last.ckpt: weights, optimizer, epoch), in its own "
                          f"folder, with the options it was started with; {RESUME_LAST!r}: the newest run under "
                          "--output that has a last.ckpt")
    run.add_argument("--compare", action="store_true",
                     help="also train the original model from the same seed and print both runs and the speedup")
    run.add_argument("--cuda-graph", action="store_true",
                     help="replay each training step's forward and backward from one CUDA graph (one GPU; "
                          "--precision 32-true or bf16-mixed); the original model of --compare trains eagerly")
    run.add_argument("--no-progress", action="store_true", help="hide Lightning's progress bar")
