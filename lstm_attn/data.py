"""Time series for training: loading (built-in or CSV), windowing, the split by time, scaling, baselines.

Nothing here knows about the model or Lightning: it turns a series into (window, target) tensor pairs and
measures the naive forecasts the trained model is judged against.

Each sample is a window of `window` consecutive values and the value `horizon` steps after its end. Values
are taken relative to the window's last observation and divided by the typical size of a `horizon`-step
change on the training part (the scaler, fitted there only). A window relative to its own last value
looks alike at any level, so a series that trends out of the range seen in training (CO2 does) stays in
range for the model; and predicting zero change is exactly the last-value baseline.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import TensorDataset

# The built-in series: weekly Mauna Loa CO2 (ppm), 1958-2001, shipped with statsmodels; 59 weeks missing.
BUILTIN_NAME = "co2"
BUILTIN_SEASON = 52


class DataError(ValueError):
    """The series cannot be used: a missing file or column, non-numeric values, too few rows."""


@dataclass(frozen=True)
class Series:
    name: str
    values: np.ndarray  # float64, no NaN, in time order
    filled: int  # missing values filled by interpolation


def load_builtin() -> Series:
    from statsmodels.datasets import co2

    return _clean(BUILTIN_NAME, co2.load_pandas().data["co2"])


def load_csv(path: str | Path, column: str) -> Series:
    """One column of a CSV file, rows in time order. Empty cells are missing values; anything else that
    is not a number is an error naming its row."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"CSV file {str(path)!r} does not exist")
    try:
        frame = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DataError(f"{str(path)!r} is not a readable CSV file: {exc}") from exc
    if column not in frame.columns:
        columns = ", ".join(map(repr, frame.columns))
        raise DataError(f"{str(path)!r} has no column {column!r}; its columns are {columns}")
    raw = frame[column]
    numbers = pd.to_numeric(raw, errors="coerce")
    bad = numbers.isna() & raw.notna()
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise DataError(f"column {column!r} of {str(path)!r} has {int(bad.sum())} non-numeric value(s); the first is "
                        f"{raw.iloc[row]!r} in data row {row + 1}")
    return _clean(f"{path.name}:{column}", numbers)


def _clean(name: str, values: pd.Series) -> Series:
    values = values.astype("float64").reset_index(drop=True)
    rows = len(values)
    if np.isinf(values.to_numpy()).any():
        raise DataError(f"series {name!r} has infinite values")
    missing = int(values.isna().sum())
    # Gaps inside the series are filled along the straight line between their neighbours; missing values at
    # either end have only one neighbour, so those rows are dropped instead of guessed.
    values = values.interpolate(method="linear", limit_area="inside").dropna()
    if values.empty:
        raise DataError(f"series {name!r} has no numeric values")
    return Series(name, values.to_numpy(), filled=missing - (rows - len(values)))


@dataclass(frozen=True)
class Split:
    """Training and validation samples, split by time, and how to read the model's output in series units."""

    train: TensorDataset
    val: TensorDataset
    scale: float  # series units per model unit, fitted on the training part
    last: np.ndarray  # the last observed value of each validation window, series units
    target: np.ndarray  # each validation window's target, series units
    seasonal_naive: np.ndarray | None  # the value one season before each validation target, if a season is given

    def to_series_units(self, model_output: np.ndarray) -> np.ndarray:
        return self.last + model_output.reshape(-1) * self.scale


def split_by_time(series: Series, window: int, horizon: int = 1, val_fraction: float = 0.2,
                  season: int | None = None) -> Split:
    """Windows whose targets fall in the last `val_fraction` of the series are validation samples; the rest,
    whose inputs and targets all precede them, are training samples."""
    if window < 1 or horizon < 1:
        raise DataError(f"window and horizon must be at least 1, got window={window}, horizon={horizon}")
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"val_fraction must be between 0 and 1, got {val_fraction}")
    values = series.values
    n = len(values)
    if n < window + horizon:
        raise DataError(f"series {series.name!r} has {n} rows; one window needs window + horizon = "
                        f"{window} + {horizon} = {window + horizon}")
    boundary = int(round(n * (1.0 - val_fraction)))  # the first index of the validation part
    ends = np.arange(window - 1, n - horizon)  # the last input index of every window
    targets = ends + horizon
    train_ends, val_ends = ends[targets < boundary], ends[targets >= boundary]
    if len(train_ends) == 0 or len(val_ends) == 0:
        raise DataError(f"series {series.name!r} has {n} rows: too few for window={window}, horizon={horizon} and "
                        f"val_fraction={val_fraction} to leave both a training and a validation window "
                        f"({len(train_ends)} and {len(val_ends)})")

    train_part = values[:boundary]
    scale = float(np.std(train_part[horizon:] - train_part[:-horizon]))
    if not scale > 0.0:
        raise DataError(f"series {series.name!r} does not change over its training part; there is nothing to learn")

    def samples(window_ends: np.ndarray) -> TensorDataset:
        index = window_ends[:, None] + np.arange(1 - window, 1)  # (N, window)
        last = values[window_ends][:, None]
        x = (values[index] - last) / scale
        y = (values[window_ends + horizon][:, None] - last) / scale
        return TensorDataset(torch.tensor(x[..., None], dtype=torch.float32), torch.tensor(y, dtype=torch.float32))

    val_targets = val_ends + horizon
    seasonal = None
    if season is not None:
        # The seasonal naive forecast must be known when the window ends: a season at least the horizon.
        if season < horizon or np.any(val_targets - season < 0):
            raise DataError(f"season={season} must be at least horizon={horizon} and within the series")
        seasonal = values[val_targets - season]
    return Split(samples(train_ends), samples(val_ends), scale, values[val_ends], values[val_targets], seasonal)


def rmse(prediction: np.ndarray, target: np.ndarray) -> float:
    return float(np.sqrt(np.mean((prediction - target) ** 2)))


def mae(prediction: np.ndarray, target: np.ndarray) -> float:
    return float(np.mean(np.abs(prediction - target)))
