"""Loading a trained LSTMWithAttention from a Lightning checkpoint, with a clear error for anything else."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import torch

from lstm_attn.modules import LSTMWithAttention


class CheckpointError(ValueError):
    """The file is missing, corrupt, unsafe to unpickle, or not a checkpoint of LSTMWithAttention."""


_REQUIRED = ("input_size", "hidden_size", "num_layers", "dropout")
_OPTIONAL = ("output_size", "backend")


def load_model(path: str | Path) -> LSTMWithAttention:
    """The model saved in a Lightning checkpoint written by `lstm-attn train` (or any Trainer fitting
    LSTMWithAttention), on CPU, in eval mode."""
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
    hparams = checkpoint.get("hyper_parameters")
    missing = [k for k in _REQUIRED if not isinstance(hparams, dict) or k not in hparams]
    if missing:
        raise CheckpointError(f"{str(path)!r} lacks the hyperparameters {', '.join(missing)} of LSTMWithAttention; "
                              "a checkpoint of a model that does not save them (such as the seed's class) must be "
                              "loaded with load_state_dict into a model built by hand")
    kwargs = {k: hparams[k] for k in (*_REQUIRED, *_OPTIONAL) if k in hparams}
    model = LSTMWithAttention(**kwargs)
    try:
        model.load_state_dict(checkpoint["state_dict"], strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"the weights in {str(path)!r} do not fit LSTMWithAttention("
                              f"{', '.join(f'{k}={v!r}' for k, v in kwargs.items())}): {exc}") from exc
    return model.eval()
