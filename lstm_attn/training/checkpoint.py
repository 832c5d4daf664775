"""Loading a trained LSTMWithAttention from a Lightning checkpoint, with a clear error for anything else."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import torch

from lstm_attn.modules import REQUIRED_ARGUMENTS, LSTMWithAttention


class CheckpointError(ValueError):
    """The file is missing, corrupt, unsafe to unpickle, or not a checkpoint of LSTMWithAttention."""


_OPTIONAL = ("output_size", "backend", "lr")


def read_checkpoint(path: str | Path) -> dict:
    """The contents of a Lightning checkpoint file, on CPU, tensors and plain data only; a CheckpointError saying
    what is wrong with anything else (missing, truncated, corrupt, unsafe to unpickle, no state_dict)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    # torch.save has written zip archives since torch 1.6; Lightning always does. Anything else here is a
    # truncated or corrupt file, or not a checkpoint at all.
    if not zipfile.is_zipfile(path):
        raise CheckpointError(f"{str(path)!r} is not a torch checkpoint: not the zip archive torch.save writes "
                              "(corrupt, truncated, or another kind of file)")
    try:
        # Tensors and plain containers only: unpickling anything else could run code from the file.
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(f"checkpoint {str(path)!r} holds objects other than tensors and plain data, so "
                              f"weights_only loading refused it: {str(exc).splitlines()[0]}") from exc
    except (RuntimeError, EOFError, KeyError, ValueError, OSError, zipfile.BadZipFile) as exc:
        raise CheckpointError(f"{str(path)!r} is not a readable torch checkpoint (corrupt?): "
                              f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from exc
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise CheckpointError(f"{str(path)!r} is not a Lightning checkpoint: it has no 'state_dict'")
    return checkpoint


def load_model(path: str | Path) -> LSTMWithAttention:
    """The model saved in a Lightning checkpoint written by `lstm-attn train` (or any Trainer fitting
    LSTMWithAttention, or the original class, whose checkpoints hold no hyperparameters: the sizes are then read from
    the weights), on CPU, in eval mode (where dropout, which the weights do not record, plays no part)."""
    checkpoint = read_checkpoint(path)
    try:
        inferred, _ = LSTMWithAttention.arguments_for_checkpoint(checkpoint)
    except ValueError as exc:
        raise CheckpointError(f"{str(path)!r} has no hyperparameters of LSTMWithAttention, and {exc}") from exc
    hparams = {**(checkpoint.get("hyper_parameters") or {}), **inferred}
    kwargs = {k: hparams[k] for k in (*REQUIRED_ARGUMENTS, *_OPTIONAL) if k in hparams}
    model = LSTMWithAttention(**kwargs)
    try:
        model.load_state_dict(checkpoint["state_dict"], strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"the weights in {str(path)!r} do not fit LSTMWithAttention("
                              f"{', '.join(f'{k}={v!r}' for k, v in kwargs.items())}): {exc}") from exc
    return model.eval()
