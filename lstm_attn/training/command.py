"""`lstm-attn train`: train LSTMWithAttention on a real series, report it against naive forecasts.

By default the series is the weekly Mauna Loa CO2 record that statsmodels ships (no download); --csv and
--column train on a column of your own file instead. With --compare the original model (lstm_attn.reference)
is trained first from the same seed, and the two runs are printed side by side with the speedup. --resume
continues a run from its checkpoint (lstm_attn.training.fit says how it replays exactly). The options are
lstm_attn.training.options'.

Anything the options ask that cannot work here is one line, `lstm-attn train: error: ...` (exit 2), before any data
is read or anything is written. Each thing is said once: what Lightning logs and warns about its own set-up (the
accelerators it found, tips, the data loader's workers) is not this command's user's concern, and is left out.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import warnings
from pathlib import Path

import pytorch_lightning as pl
import torch

from lstm_attn import cpu_features, reference, strict_json
from lstm_attn.backends import available_backends
from lstm_attn.data import BUILTIN_SEASON, DataError, load_builtin, load_csv, rmse, split_by_time
from lstm_attn.modules import LSTMWithAttention
from lstm_attn.training.checkpoint import CheckpointError, read_checkpoint
from lstm_attn.training.fit import LAST_CHECKPOINT, WARMUP_STEPS, Resume, RunResult, train
from lstm_attn.training.options import RESUME_LAST, SEED_LR

# Lightning's autocast precisions; on a CPU both run in bfloat16 (Lightning has no float16 autocast there).
CPU_AUTOCAST_PRECISIONS = ("bf16-mixed", "16-mixed")
RUN_NAME = "lstm_attn"
# The options a run must be resumed with, as it was started: they decide its data, model and every step. --epochs
# may grow (the run goes on), and the device may change (the arithmetic may then round differently).
RUN_OPTIONS = ("csv", "column", "sep", "fill", "window", "horizon", "val_fraction", "season", "hidden_size",
               "num_layers", "dropout", "lr", "backend", "batch_size", "seed", "precision", "cuda_graph")
# What Lightning says about its own set-up, not the user's: the data loader's worker count (the data is in memory),
# the checkpoint folder of a resumed run, and deprecations inside Lightning itself. Our model's note that the CPU
# runs its LSTM in float32 under bfloat16 autocast is printed by this command, once, instead.
QUIET_WARNINGS = (
    ".*does not have many workers.*",
    ".*Checkpoint directory .* exists and is not empty.*",
    ".*isinstance\\(treespec, LeafSpec\\)` is deprecated.*",
    "this CPU cannot run nn.LSTM under .* autocast.*",
)
LIGHTNING_LOGGERS = ("pytorch_lightning", "lightning_fabric", "lightning.pytorch", "lightning.fabric")


class UsageError(ValueError):
    """Options that cannot work together on this machine; refused before any training starts."""


class RunOptions(pl.Callback):
    """Keeps the run's options in its checkpoints, for --resume to hold a resumed run to them."""

    def __init__(self, options: dict):
        self.options = options

    def state_dict(self) -> dict:
        return dict(self.options)


def _options(args: argparse.Namespace) -> dict:
    options = {k: getattr(args, k) for k in RUN_OPTIONS}
    options["csv"] = str(Path(args.csv).resolve()) if args.csv else None
    return options


def _on_gpu(args: argparse.Namespace) -> bool:
    return args.accelerator in ("gpu", "cuda") or (args.accelerator == "auto" and torch.cuda.is_available())


def _check_machine(args: argparse.Namespace) -> None:
    """What the options ask of this machine: a GPU, a backend that runs on the device trained on."""
    if args.accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise UsageError(f"--accelerator {args.accelerator}: torch sees no CUDA GPU on this machine (use cpu or auto)")
    device = "cuda" if _on_gpu(args) else "cpu"
    if args.backend != "auto":
        status = available_backends(device)[args.backend]
        if not status.available:
            raise UsageError(f"--backend {args.backend} cannot run on this machine's {device}: {status.reason}")
    if args.compare and args.lr != SEED_LR:
        raise UsageError(f"--lr {args.lr} with --compare: the original model fixes Adam's learning rate at {SEED_LR}; "
                         "drop one of them")
    if args.compare and args.resume:
        raise UsageError("--resume continues one run; it cannot retrain the original model of --compare")


def _cpu_autocast_note(args: argparse.Namespace) -> str | None:
    """What --precision bf16-mixed means on a CPU whose oneDNN has no bfloat16 LSTM (AVX2-only x86, e.g. AMD
    EPYC): our model trains with its LSTM in float32 and the rest under bfloat16 autocast; the original model
    cannot train at all, so --compare is refused before anything trains."""
    if args.precision not in CPU_AUTOCAST_PRECISIONS or _on_gpu(args):
        return None
    reason = cpu_features.cpu_autocast_lstm_error(torch.bfloat16)
    if reason is None:
        return None
    if args.compare:
        raise UsageError(f"--precision {args.precision} with --compare: the original model cannot train under "
                         f"bfloat16 autocast on this CPU (its oneDNN has no bfloat16 LSTM: {reason}); compare with "
                         f"--precision 32-true, or drop --compare to train lstm_attn's model alone, whose LSTM "
                         f"then runs in float32")
    return (f"precision {args.precision} on this CPU: oneDNN has no bfloat16 LSTM here, so the LSTM trains in "
            f"float32 and the rest of the model under bfloat16 autocast")


def _check_cuda_graph(args: argparse.Namespace) -> None:
    """--cuda-graph's requirements (lstm_attn.cuda_graph), refused before any training starts."""
    if not args.cuda_graph:
        return
    if not _on_gpu(args) or not torch.cuda.is_available():
        raise UsageError("--cuda-graph needs a CUDA GPU (--accelerator gpu or auto on a machine with one)")
    if args.devices != 1:
        raise UsageError(f"--cuda-graph trains on one GPU; got --devices {args.devices}")
    if args.precision not in ("32-true", "bf16-mixed"):
        raise UsageError(f"--cuda-graph takes --precision 32-true or bf16-mixed, not {args.precision} (16-mixed "
                         f"scales the loss with a gradient scaler, which the captured step leaves out)")


def _version(checkpoint: Path) -> int:
    """N of the run folder version_N holding checkpoints/last.ckpt; -1 for another name."""
    number = checkpoint.parent.parent.name.removeprefix("version_")
    return int(number) if number.isdigit() else -1


def _find_resume(args: argparse.Namespace) -> Resume | None:
    """--resume's checkpoint, read and held to the options it was started with; None without --resume."""
    if args.resume is None:
        return None
    if args.resume == RESUME_LAST:
        runs = Path(args.output) / RUN_NAME
        found = sorted(runs.glob(f"version_*/checkpoints/{LAST_CHECKPOINT}"), key=_version)
        if not found:
            raise UsageError(f"--resume {RESUME_LAST}: no run under {str(runs)!r} has a checkpoints/{LAST_CHECKPOINT} "
                             "(give --output of the run, or the checkpoint's path)")
        path = found[-1]
    else:
        path = Path(args.resume)
        if path.is_dir():
            path = path / "checkpoints" / LAST_CHECKPOINT
    try:
        checkpoint = read_checkpoint(path)
    except CheckpointError as exc:
        raise UsageError(f"--resume: {exc}") from None
    started = (checkpoint.get("callbacks") or {}).get(RunOptions.__qualname__)
    if not isinstance(started, dict) or not isinstance(checkpoint.get("epoch"), int):
        raise UsageError(f"--resume: {str(path)!r} is not a checkpoint of `lstm-attn train` (it records no run "
                         "options or epoch)")
    given = _options(args)
    differ = [k for k in RUN_OPTIONS if started.get(k) != given[k]]
    if differ:
        flags = " ".join(f"--{k.replace('_', '-')} {started.get(k)}" for k in differ)
        raise UsageError(f"--resume: the run in {str(path)!r} was started with {flags}; resume it with the options it "
                         "was started with")
    if checkpoint["epoch"] + 1 >= args.epochs:
        raise UsageError(f"--resume: the run in {str(path)!r} has trained its {checkpoint['epoch'] + 1} epochs; "
                         f"--epochs above that continues it")
    run_dir = path.parent.parent if path.parent.name == "checkpoints" else None
    if run_dir is None:
        raise UsageError(f"--resume: {str(path)!r} is not in a run's checkpoints/ folder, where the resumed run "
                         "would log")
    return Resume(path, run_dir, checkpoint["epoch"])


@contextlib.contextmanager
def _quiet_lightning():
    """QUIET_WARNINGS ignored and Lightning's informational log lines left out, for the command's duration only."""
    loggers = [logging.getLogger(name) for name in LIGHTNING_LOGGERS]
    levels = [logger.level for logger in loggers]
    with warnings.catch_warnings():
        for pattern in QUIET_WARNINGS:
            warnings.filterwarnings("ignore", message=pattern)
        for logger in loggers:
            logger.setLevel(logging.WARNING)
        try:
            yield
        finally:
            for logger, level in zip(loggers, levels):
                logger.setLevel(level)


def _fmt_rate(samples_per_s: float | None) -> str:
    if samples_per_s is None:
        return f"not measured (the first {WARMUP_STEPS} steps warm up, and the run took no more)"
    return f"{samples_per_s:.0f} samples/s"


def _fmt(value: float | None, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def run(args: argparse.Namespace) -> int:
    try:
        _check_machine(args)
        precision_note = _cpu_autocast_note(args)
        _check_cuda_graph(args)
        resume = _find_resume(args)
        if args.csv is None:
            if args.column is not None:
                raise DataError("--column names a column of --csv; give --csv too")
            series, season = load_builtin(args.fill or "interpolate"), args.season or BUILTIN_SEASON
        else:
            if args.column is None:
                raise DataError("--csv needs --column, the name of the column to forecast")
            series, season = load_csv(args.csv, args.column, args.fill, args.sep), args.season
        split = split_by_time(series, args.window, args.horizon, args.val_fraction, season)
    except (DataError, UsageError) as exc:
        print(f"lstm-attn train: error: {exc}", file=sys.stderr)
        return 2

    dropped = f", {series.dropped} rows dropped" if series.dropped else ""
    print(f"series {series.name}: {len(series.values)} steps ({series.filled} missing values interpolated{dropped}); "
          f"{len(split.train)} training and {len(split.val)} validation windows of {args.window} steps, "
          f"horizon {args.horizon}")
    if precision_note:
        print(precision_note)
    if resume:
        print(f"resuming {resume.run_dir} after epoch {resume.epoch + 1} of {args.epochs} ({resume.checkpoint})")

    def fit(model_class, name, **extra) -> RunResult | None:
        pl.seed_everything(args.seed, workers=True, verbose=False)
        model = model_class(input_size=1, hidden_size=args.hidden_size, num_layers=args.num_layers,
                            dropout=args.dropout, **extra)
        if args.cuda_graph and model_class is LSTMWithAttention:
            model.use_cuda_graph()
        with _quiet_lightning():
            return train(model, split, output=args.output, name=name, epochs=args.epochs, batch_size=args.batch_size,
                         seed=args.seed, accelerator=args.accelerator, devices=args.devices, precision=args.precision,
                         progress=not args.no_progress, resume=resume, callbacks=[RunOptions(_options(args))])

    seed_run = fit(reference.LSTMWithAttention, "seed") if args.compare else None
    ours = fit(LSTMWithAttention, RUN_NAME, backend=args.backend, lr=args.lr)
    if ours is None:  # a non-main process of a multi-process run: the main one reports
        return 0

    baselines = {"naive (last value)": rmse(split.last, split.target)}
    if split.seasonal_naive is not None:
        baselines[f"seasonal naive ({season} steps)"] = rmse(split.seasonal_naive, split.target)
    print(f"\nvalidation RMSE in series units, {len(split.val)} windows:")
    print(f"  {'LSTMWithAttention':<28}{ours.val_rmse:.4f}   (MAE {ours.val_mae:.4f})")
    for name, value in baselines.items():
        print(f"  {name:<28}{value:.4f}")
    print(f"training throughput: {_fmt_rate(ours.samples_per_s)} (backend={args.backend}, "
          f"precision={args.precision}{', CUDA graph' if args.cuda_graph else ''})")
    if seed_run is not None:
        print("\n--compare, the same seed and data:")
        print(f"  {'':<20}{'train_loss':>12}{'val_loss':>12}{'val RMSE':>10}{'samples/s':>11}")
        for name, r in (("original (reference.py)", seed_run), ("lstm_attn", ours)):
            print(f"  {name:<20}{_fmt(r.train_loss, '>12.5f')}{_fmt(r.val_loss, '>12.5f')}{r.val_rmse:>10.4f}"
                  f"{_fmt(r.samples_per_s, '>11.0f')}")
        if ours.samples_per_s and seed_run.samples_per_s:
            print(f"  speedup: {ours.samples_per_s / seed_run.samples_per_s:.2f}x training samples/s")
    print(f"\nmetrics: {ours.log_dir / 'metrics.csv'}\nbest checkpoint: {ours.best_checkpoint}\n"
          f"last checkpoint: {ours.log_dir / 'checkpoints' / LAST_CHECKPOINT} (lstm-attn train --resume "
          f"{RESUME_LAST} continues from it)")

    summary = {
        "series": series.name, "window": args.window, "horizon": args.horizon, "scale": split.scale,
        "backend": args.backend, "precision": args.precision, "seed": args.seed, "cuda_graph": args.cuda_graph,
        "train_loss": ours.train_loss, "val_loss": ours.val_loss, "val_rmse": ours.val_rmse, "val_mae": ours.val_mae,
        "baseline_rmse": baselines, "samples_per_s": ours.samples_per_s, "best_checkpoint": ours.best_checkpoint,
    }
    if seed_run is not None:
        summary["seed_model"] = {"train_loss": seed_run.train_loss, "val_loss": seed_run.val_loss,
                                 "val_rmse": seed_run.val_rmse, "samples_per_s": seed_run.samples_per_s}
    strict_json.write(summary, ours.log_dir / "summary.json", indent=2)
    return 0
