"""`lstm-attn train`: train LSTMWithAttention on a real series, report it against naive forecasts.

By default the series is the weekly Mauna Loa CO2 record that statsmodels ships (no download); --csv and
--column train on a column of your own file instead. With --compare the seed's model (lstm_attn.reference)
is trained first from the same seed, and the two runs are printed side by side with the speedup.
"""

from __future__ import annotations

import argparse
import json
import sys

import pytorch_lightning as pl
import torch

from lstm_attn import host, reference
from lstm_attn.backends import BACKENDS
from lstm_attn.data import (BUILTIN_NAME, BUILTIN_SEASON, FILL_METHODS, DataError, load_builtin, load_csv, rmse,
                            split_by_time)
from lstm_attn.modules import LSTMWithAttention
from lstm_attn.training.fit import RunResult, train

PRECISIONS = ("32-true", "bf16-mixed", "16-mixed", "64-true", "bf16-true")
# Lightning's autocast precisions; on a CPU both run in bfloat16 (Lightning has no float16 autocast there).
CPU_AUTOCAST_PRECISIONS = ("bf16-mixed", "16-mixed")


class UsageError(ValueError):
    """Options that cannot work together on this machine; refused before any training starts."""


def _devices(text: str):
    return text if text == "auto" else int(text)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    data = parser.add_argument_group("data")
    data.add_argument("--csv", metavar="PATH", help=f"a CSV file, rows in time order (default: the built-in "
                                                    f"{BUILTIN_NAME!r} series, weekly Mauna Loa CO2)")
    data.add_argument("--column", metavar="NAME", help="the CSV column to forecast (required with --csv)")
    data.add_argument("--fill", choices=FILL_METHODS,
                      help="missing or non-finite values (empty cells, NaN, inf): fill gaps by linear interpolation "
                           "or drop their rows (default: an error naming the first one for a CSV; interpolate for "
                           f"the built-in {BUILTIN_NAME!r}, which has 59 missing weeks)")
    data.add_argument("--window", type=int, default=52, help="input steps per sample (default: %(default)s)")
    data.add_argument("--horizon", type=int, default=1, help="forecast this many steps ahead (default: %(default)s)")
    data.add_argument("--val-fraction", type=float, default=0.2,
                      help="the last part of the series, by time, kept for validation (default: %(default)s)")
    data.add_argument("--season", type=int, help=f"season length for the seasonal naive baseline (default: "
                                                 f"{BUILTIN_SEASON} for {BUILTIN_NAME!r}, none for a CSV)")
    model = parser.add_argument_group("model")
    model.add_argument("--hidden-size", type=int, default=32, help="(default: %(default)s)")
    model.add_argument("--num-layers", type=int, default=2, help="(default: %(default)s)")
    model.add_argument("--dropout", type=float, default=0.0, help="between LSTM layers (default: %(default)s)")
    model.add_argument("--backend", default="auto", choices=("auto", *BACKENDS),
                       help="the kernels behind the model's attention (default: %(default)s)")
    run = parser.add_argument_group("training")
    run.add_argument("--epochs", type=int, default=8, help="(default: %(default)s)")
    run.add_argument("--batch-size", type=int, default=32, help="(default: %(default)s)")
    run.add_argument("--seed", type=int, default=0, help="seeds weights, shuffling and dropout (default: %(default)s)")
    run.add_argument("--precision", default="32-true", choices=PRECISIONS, help="(default: %(default)s)")
    run.add_argument("--accelerator", default="auto", help="cpu, gpu or auto (default: %(default)s)")
    run.add_argument("--devices", type=_devices, default=1, help="a count or auto (default: %(default)s)")
    run.add_argument("--output", default="runs", help="directory for logs and checkpoints (default: %(default)s)")
    run.add_argument("--compare", action="store_true",
                     help="also train the seed's model from the same seed and print both runs and the speedup")
    run.add_argument("--cuda-graph", action="store_true",
                     help="replay each training step's forward and backward from one CUDA graph (one GPU; "
                          "--precision 32-true or bf16-mixed); the seed's model of --compare trains eagerly")
    run.add_argument("--no-progress", action="store_true", help="hide Lightning's progress bar")


def _cpu_autocast_note(args: argparse.Namespace) -> str | None:
    """What --precision bf16-mixed means on a CPU whose oneDNN has no bfloat16 LSTM (AVX2-only x86, e.g. AMD
    EPYC): our model trains with its LSTM in float32 and the rest under bfloat16 autocast; the seed's model
    cannot train at all, so --compare is refused before anything trains."""
    on_cpu = args.accelerator == "cpu" or (args.accelerator == "auto" and not torch.cuda.is_available())
    if args.precision not in CPU_AUTOCAST_PRECISIONS or not on_cpu:
        return None
    reason = host.cpu_autocast_lstm_error(torch.bfloat16)
    if reason is None:
        return None
    if args.compare:
        raise UsageError(f"--precision {args.precision} with --compare: the seed's model cannot train under "
                         f"bfloat16 autocast on this CPU (its oneDNN has no bfloat16 LSTM: {reason}); compare with "
                         f"--precision 32-true, or drop --compare to train lstm_attn's model alone, whose LSTM "
                         f"then runs in float32")
    return (f"precision {args.precision} on this CPU: oneDNN has no bfloat16 LSTM here, so the LSTM trains in "
            f"float32 and the rest of the model under bfloat16 autocast")


def _check_cuda_graph(args: argparse.Namespace) -> None:
    """--cuda-graph's requirements (lstm_attn.training.cuda_graph), refused before any training starts."""
    if not args.cuda_graph:
        return
    on_gpu = args.accelerator in ("gpu", "cuda") or (args.accelerator == "auto" and torch.cuda.is_available())
    if not on_gpu or not torch.cuda.is_available():
        raise UsageError("--cuda-graph needs a CUDA GPU (--accelerator gpu or auto on a machine with one)")
    if args.devices != 1:
        raise UsageError(f"--cuda-graph trains on one GPU; got --devices {args.devices}")
    if args.precision not in ("32-true", "bf16-mixed"):
        raise UsageError(f"--cuda-graph takes --precision 32-true or bf16-mixed, not {args.precision} (16-mixed "
                         f"scales the loss with a gradient scaler, which the captured step leaves out)")


def run(args: argparse.Namespace) -> int:
    try:
        if args.csv is None:
            if args.column is not None:
                raise DataError("--column names a column of --csv; give --csv too")
            series, season = load_builtin(args.fill or "interpolate"), args.season or BUILTIN_SEASON
        else:
            if args.column is None:
                raise DataError("--csv needs --column, the name of the column to forecast")
            series, season = load_csv(args.csv, args.column, args.fill), args.season
        split = split_by_time(series, args.window, args.horizon, args.val_fraction, season)
        precision_note = _cpu_autocast_note(args)
        _check_cuda_graph(args)
    except (DataError, UsageError) as exc:
        print(f"lstm-attn train: error: {exc}", file=sys.stderr)
        return 2

    dropped = f", {series.dropped} rows dropped" if series.dropped else ""
    print(f"series {series.name}: {len(series.values)} steps ({series.filled} missing values interpolated{dropped}); "
          f"{len(split.train)} training and {len(split.val)} validation windows of {args.window} steps, "
          f"horizon {args.horizon}")
    if precision_note:
        print(precision_note)

    def fit(model_class, name, **extra) -> RunResult | None:
        pl.seed_everything(args.seed, workers=True, verbose=False)
        model = model_class(input_size=1, hidden_size=args.hidden_size, num_layers=args.num_layers,
                            dropout=args.dropout, **extra)
        if args.cuda_graph and model_class is LSTMWithAttention:
            model.use_cuda_graph()
        return train(model, split, output=args.output, name=name, epochs=args.epochs, batch_size=args.batch_size,
                     accelerator=args.accelerator, devices=args.devices, precision=args.precision,
                     progress=not args.no_progress)

    seed_run = fit(reference.LSTMWithAttention, "seed") if args.compare else None
    ours = fit(LSTMWithAttention, "lstm_attn", backend=args.backend)
    if ours is None:  # a non-main process of a multi-process run: the main one reports
        return 0

    baselines = {"naive (last value)": rmse(split.last, split.target)}
    if split.seasonal_naive is not None:
        baselines[f"seasonal naive ({season} steps)"] = rmse(split.seasonal_naive, split.target)
    print(f"\nvalidation RMSE in series units, {len(split.val)} windows:")
    print(f"  {'LSTMWithAttention':<28}{ours.val_rmse:.4f}   (MAE {ours.val_mae:.4f})")
    for name, value in baselines.items():
        print(f"  {name:<28}{value:.4f}")
    print(f"training throughput: {ours.samples_per_s:.0f} samples/s (backend={args.backend}, "
          f"precision={args.precision}{', CUDA graph' if args.cuda_graph else ''})")
    if seed_run is not None:
        print("\n--compare, the same seed and data:")
        print(f"  {'':<20}{'train_loss':>12}{'val_loss':>12}{'val RMSE':>10}{'samples/s':>11}")
        for name, r in (("seed (reference.py)", seed_run), ("lstm_attn", ours)):
            print(f"  {name:<20}{r.train_loss:>12.5f}{r.val_loss:>12.5f}{r.val_rmse:>10.4f}{r.samples_per_s:>11.0f}")
        print(f"  speedup: {ours.samples_per_s / seed_run.samples_per_s:.2f}x training samples/s")
    print(f"\nmetrics: {ours.log_dir / 'metrics.csv'}\nbest checkpoint: {ours.best_checkpoint}")

    summary = {
        "series": series.name, "window": args.window, "horizon": args.horizon, "scale": split.scale,
        "backend": args.backend, "precision": args.precision, "seed": args.seed, "cuda_graph": args.cuda_graph,
        "train_loss": ours.train_loss, "val_loss": ours.val_loss, "val_rmse": ours.val_rmse, "val_mae": ours.val_mae,
        "baseline_rmse": baselines, "samples_per_s": ours.samples_per_s, "best_checkpoint": ours.best_checkpoint,
    }
    if seed_run is not None:
        summary["seed_model"] = {"train_loss": seed_run.train_loss, "val_loss": seed_run.val_loss,
                                 "val_rmse": seed_run.val_rmse, "samples_per_s": seed_run.samples_per_s}
    (ours.log_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return 0
