"""One training run: the Lightning Trainer with a CSV log and checkpoints, then the model's validation error
in series units beside the naive forecasts.

A run can be killed at any moment and continued (`lstm-attn train --resume`): a last.ckpt is written, atomically
as Lightning writes every checkpoint, at the end of each epoch, with the metrics logged so far flushed to
metrics.csv beside it. Each epoch's randomness (the shuffle and the dropout masks) is drawn from (seed, epoch) alone,
so an epoch that a resumed run trains again is the epoch the uninterrupted run trained: resumed and uninterrupted
runs end with the same weights, to float rounding.
"""

from __future__ import annotations

import csv
import inspect
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger
from pytorch_lightning.loggers.csv_logs import ExperimentWriter
from torch.utils.data import DataLoader, RandomSampler, TensorDataset

from lstm_attn.data import Split, mae, rmse

LAST_CHECKPOINT = "last.ckpt"
# The first steps build oneDNN primitives and caches, which a second model of the same shapes in the same process
# would find ready: Throughput leaves them out, so as not to favour whichever model trains second.
WARMUP_STEPS = 5


class Throughput(pl.Callback):
    """Training samples per second of time inside training steps (forward, backward, optimizer step), so
    data loading, validation and the progress bar do not blur the comparison between models. The first
    warmup_steps are left out (WARMUP_STEPS)."""

    def __init__(self, warmup_steps: int = WARMUP_STEPS):
        self.warmup_steps = warmup_steps
        self.steps = 0
        self.samples = 0
        self.seconds = 0.0
        self._start = 0.0

    @staticmethod
    def _wait_for(device: torch.device) -> None:
        # A GPU step returns before its kernels finish: time it to their end.
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._wait_for(pl_module.device)
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self._wait_for(pl_module.device)
        self.steps += 1
        if self.steps > self.warmup_steps:
            self.seconds += time.perf_counter() - self._start
            self.samples += len(batch[0])

    @property
    def samples_per_s(self) -> float | None:
        """None when no step was timed: a run of warmup_steps steps or fewer."""
        return self.samples / self.seconds if self.seconds else None


def epoch_seed(seed: int, epoch: int) -> int:
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


class EpochShuffle(RandomSampler):
    """A RandomSampler whose order in each epoch is a function of (seed, epoch): Lightning tells it the epoch
    (set_epoch), a resumed run's first epoch included. Being a RandomSampler, it gives way under DDP to Lightning's
    DistributedSampler, which shuffles by seed and epoch too."""

    def __init__(self, data_source, seed: int):
        super().__init__(data_source)
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        generator = torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch))
        yield from torch.randperm(len(self.data_source), generator=generator).tolist()


class EpochSeed(pl.Callback):
    """Reseeds the global random generators (dropout's) from (seed, epoch) as each epoch starts, so that no epoch's
    dropout masks depend on what drew from them before it: not on the epochs before, which a resumed run skips."""

    def __init__(self, seed: int):
        self.seed = seed

    def on_train_epoch_start(self, trainer, pl_module):
        pl.seed_everything(epoch_seed(self.seed, trainer.current_epoch), workers=True, verbose=False)


class FlushMetrics(pl.Callback):
    """Writes the metrics logged so far to metrics.csv with each checkpoint: a run killed later keeps them."""

    def on_save_checkpoint(self, trainer, pl_module, checkpoint):
        if trainer.logger is not None:
            trainer.logger.save()


class _ResumedWriter(ExperimentWriter):
    """CSVLogger's writer for a run resumed in its own folder: where Lightning's deletes the metrics.csv it finds,
    this keeps its rows up to the epoch of the checkpoint and drops the later ones, which the resumed run logs
    again."""

    def __init__(self, log_dir: str, last_epoch: int):
        self._last_epoch = last_epoch
        super().__init__(log_dir)

    def _check_log_dir_exists(self) -> None:
        path = Path(self.metrics_file_path)
        if not path.is_file():
            return
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            keys = list(reader.fieldnames or [])
            rows = [r for r in reader if not r.get("epoch") or int(float(r["epoch"])) <= self._last_epoch]
        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=keys)
            writer.writeheader()
            writer.writerows(rows)
        self.metrics_keys = keys


class ResumedCSVLogger(CSVLogger):
    def __init__(self, run_dir: Path, last_epoch: int):
        super().__init__(run_dir.parent.parent, name=run_dir.parent.name, version=run_dir.name)
        self._last_epoch = last_epoch

    @property
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _ResumedWriter(self.log_dir, self._last_epoch)
        return self._experiment


@dataclass(frozen=True)
class Resume:
    """Where a run continues: its checkpoint, and the folder (holding checkpoints/) it logs into."""
    checkpoint: Path
    run_dir: Path
    epoch: int  # the epoch the checkpoint ended


@dataclass(frozen=True)
class RunResult:
    log_dir: Path  # holds metrics.csv, hparams.yaml and checkpoints/
    best_checkpoint: str
    train_loss: float | None  # the last logged values of the loss curves (scaled units); None if never logged
    val_loss: float | None
    samples_per_s: float | None  # None if no step was timed (Throughput)
    val_rmse: float  # series units
    val_mae: float


def loaders(split: Split, batch_size: int, seed: int) -> tuple[DataLoader, DataLoader]:
    # The loader's own generator draws the seed it hands to workers: left to the global one, that draw would
    # move the dropout masks by one whenever the loader is iterated at a different point of a run.
    return (DataLoader(split.train, batch_size=batch_size, sampler=EpochShuffle(split.train, seed),
                       generator=torch.Generator().manual_seed(seed)),
            DataLoader(split.val, batch_size=batch_size))


@torch.no_grad()
def predict(model: torch.nn.Module, dataset: TensorDataset, batch_size: int = 1024) -> np.ndarray:
    model.eval()
    device = next(model.parameters()).device
    x = dataset.tensors[0]
    out = [model(x[i:i + batch_size].to(device)).float().cpu() for i in range(0, len(x), batch_size)]
    return torch.cat(out).numpy()


def _metric(metrics: dict, name: str) -> float | None:
    return float(metrics[name]) if name in metrics else None


def _end_process_group() -> None:
    """Lightning leaves a multi-process run's process group up; gloo's worker threads still running when the
    interpreter exits abort the process ("terminate called without an active exception"), so end it once fit is
    done (what follows runs on the main process alone)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def train(model: pl.LightningModule, split: Split, *, output: str | Path, name: str, epochs: int, batch_size: int,
          seed: int = 0, accelerator: str = "auto", devices="auto", strategy: str = "auto",
          precision: str = "32-true", progress: bool = True, resume: Resume | None = None,
          callbacks: list[pl.Callback] = ()) -> RunResult | None:
    """Fit `model` on `split` (continuing `resume` where given), with `callbacks` beside the run's own; the result on
    the main process, None on the others of a multi-process run."""
    train_loader, val_loader = loaders(split, batch_size, seed)
    throughput = Throughput()
    checkpoint = ModelCheckpoint(monitor="val_loss", save_last=True)
    logger = ResumedCSVLogger(resume.run_dir, resume.epoch) if resume else CSVLogger(output, name=name)
    trainer = pl.Trainer(
        max_epochs=epochs, accelerator=accelerator, devices=devices, strategy=strategy, precision=precision,
        logger=logger, callbacks=[checkpoint, throughput, EpochSeed(seed), FlushMetrics(), *callbacks],
        log_every_n_steps=min(50, len(train_loader)), enable_progress_bar=progress, enable_model_summary=False,
    )
    # A checkpoint to resume from is read as tensors and plain data only (its options were checked that way already);
    # (Lightning versions without weights_only read it with torch.load's default.)
    safe = {"weights_only": True} if resume and "weights_only" in inspect.signature(trainer.fit).parameters else {}
    trainer.fit(model, train_loader, val_loader, ckpt_path=resume.checkpoint if resume else None, **safe)
    _end_process_group()
    if not trainer.is_global_zero:
        return None
    prediction = split.to_series_units(predict(model, split.val))
    metrics = trainer.callback_metrics
    return RunResult(
        log_dir=Path(trainer.logger.log_dir), best_checkpoint=checkpoint.best_model_path,
        train_loss=_metric(metrics, "train_loss"), val_loss=_metric(metrics, "val_loss"),
        samples_per_s=throughput.samples_per_s,
        val_rmse=rmse(prediction, split.target), val_mae=mae(prediction, split.target),
    )
