"""argparse `type=` functions for the commands' numbers: a value that cannot work is refused while the command line
is parsed (`lstm-attn train: error: argument --hidden-size: must be a positive integer, got 0`, exit 2), before
torch is imported or any file is read or written. Nothing here imports more than argparse."""

from __future__ import annotations

import argparse
import math

SEED_MAX = 2**32 - 1  # what pl.seed_everything takes; outside it Lightning warns and draws a random seed instead


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None


def _float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def positive_int(text: str) -> int:
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def seed(text: str) -> int:
    value = _int(text)
    if not 0 <= value <= SEED_MAX:
        raise argparse.ArgumentTypeError(f"must be between 0 and {SEED_MAX}, got {text}")
    return value


def positive_float(text: str) -> float:
    value = _float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def dropout(text: str) -> float:
    """A dropout probability: 1 would zero every activation between the layers."""
    value = _float(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 0 and below 1, got {text}")
    return value


def open_fraction(text: str) -> float:
    value = _float(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1 (both excluded), got {text}")
    return value


def devices(text: str) -> int | str:
    return text if text == "auto" else positive_int(text)
