"""One training run: the Lightning Trainer with a CSV log and checkpoints, then the model's validation error
in series units beside the naive forecasts."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger
from torch.utils.data import DataLoader, TensorDataset

from lstm_attn.bench.timing import sync
from lstm_attn.data import Split, mae, rmse


class Throughput(pl.Callback):
    """Training samples per second of time inside training steps (forward, backward, optimizer step), so
    data loading, validation and the progress bar do not blur the comparison between models. The first
    steps are left out: they build oneDNN primitives and caches, which a second model of the same shapes
    in the same process would find ready, favouring whichever model trains second."""

    def __init__(self, warmup_steps: int = 5):
        self.warmup_steps = warmup_steps
        self.steps = 0
        self.samples = 0
        self.seconds = 0.0
        self._start = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        sync(pl_module.device)
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        sync(pl_module.device)
        self.steps += 1
        if self.steps > self.warmup_steps:
            self.seconds += time.perf_counter() - self._start
            self.samples += len(batch[0])

    @property
    def samples_per_s(self) -> float:
        return self.samples / self.seconds if self.seconds else float("nan")


@dataclass(frozen=True)
class RunResult:
    log_dir: Path  # holds metrics.csv, hparams.yaml and checkpoints/
    best_checkpoint: str
    train_loss: float  # the last logged values of the loss curves (scaled units)
    val_loss: float
    samples_per_s: float
    val_rmse: float  # series units
    val_mae: float


def loaders(split: Split, batch_size: int) -> tuple[DataLoader, DataLoader]:
    # Shuffled from torch's global generator, which pl.seed_everything seeds: the same seed, the same order.
    return (DataLoader(split.train, batch_size=batch_size, shuffle=True),
            DataLoader(split.val, batch_size=batch_size))


@torch.no_grad()
def predict(model: torch.nn.Module, dataset: TensorDataset, batch_size: int = 1024) -> np.ndarray:
    model.eval()
    device = next(model.parameters()).device
    x = dataset.tensors[0]
    out = [model(x[i:i + batch_size].to(device)).float().cpu() for i in range(0, len(x), batch_size)]
    return torch.cat(out).numpy()


def train(model: pl.LightningModule, split: Split, *, output: str | Path, name: str, epochs: int, batch_size: int,
          accelerator: str = "auto", devices="auto", strategy: str = "auto", precision: str = "32-true",
          progress: bool = True) -> RunResult | None:
    """Fit `model` on `split`; the result on the main process, None on the others of a multi-process run."""
    train_loader, val_loader = loaders(split, batch_size)
    throughput = Throughput()
    checkpoint = ModelCheckpoint(monitor="val_loss", save_last=True)
    trainer = pl.Trainer(
        max_epochs=epochs, accelerator=accelerator, devices=devices, strategy=strategy, precision=precision,
        logger=CSVLogger(output, name=name), callbacks=[checkpoint, throughput],
        log_every_n_steps=min(50, len(train_loader)), enable_progress_bar=progress, enable_model_summary=False,
    )
    trainer.fit(model, train_loader, val_loader)
    if not trainer.is_global_zero:
        return None
    prediction = split.to_series_units(predict(model, split.val))
    metrics = trainer.callback_metrics
    return RunResult(
        log_dir=Path(trainer.logger.log_dir), best_checkpoint=checkpoint.best_model_path,
        train_loss=float(metrics["train_loss"]), val_loss=float(metrics["val_loss"]),
        samples_per_s=throughput.samples_per_s,
        val_rmse=rmse(prediction, split.target), val_mae=mae(prediction, split.target),
    )
