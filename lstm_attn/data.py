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

import io
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from lstm_attn.extras import require

# pandas and torch are imported where they are used: the command line reads this module's names to build its
# options, and `lstm-attn train --help` must answer without loading either.
if TYPE_CHECKING:
    import pandas as pd
    from torch.utils.data import TensorDataset

# The built-in series: weekly Mauna Loa CO2 (ppm), 1958-2001, shipped with statsmodels; 59 weeks missing.
BUILTIN_NAME = "co2"
BUILTIN_SEASON = 52


# What to do with values that are missing or not finite (empty cells, NaN, inf): fill gaps by linear
# interpolation between their neighbours, or drop those rows. A gap at either end has one neighbour only, so
# "interpolate" drops those rows instead of guessing them.
FILL_METHODS = ("interpolate", "drop")

# The delimiters a CSV's header is searched for when none is given: the one it holds most of wins (a header with
# none is one column, or comma-separated).
DELIMITERS = {",": "comma", ";": "semicolon", "\t": "tab", "|": "pipe"}


class DataError(ValueError):
    """The series cannot be used: a missing file or column, non-numeric or missing values, too few rows."""


@dataclass(frozen=True)
class Series:
    name: str
    values: np.ndarray  # float64, all finite, in time order
    filled: int = 0  # missing values filled by interpolation
    dropped: int = 0  # missing values whose rows were dropped


def load_builtin(fill: str = "interpolate") -> Series:
    """The built-in series; its 59 missing weeks are interpolated unless `fill` says otherwise."""
    co2 = require("statsmodels.datasets.co2", f"the built-in series {BUILTIN_NAME!r}")
    return _clean(BUILTIN_NAME, co2.load_pandas().data["co2"], fill)


def load_csv(path: str | Path, column: str, fill: str | None = None, sep: str | None = None) -> Series:
    """One column of a CSV file, rows in time order. Anything that is not a number is an error naming its
    row; so is a missing value (an empty cell or line, NaN, inf), unless `fill` says what to do with it. Blank
    lines at the end of the file are not rows. `sep` is the delimiter; by default the header's (DELIMITERS)."""
    pd = require("pandas", "reading a CSV")
    path = Path(path)
    if not path.is_file():
        raise DataError(f"CSV file {str(path)!r} does not exist")
    try:
        text = path.read_text(encoding="utf-8-sig")  # the byte-order mark some spreadsheets write is no data
        # A blank line is a missing value, not nothing: skipping it would shift every later row in time. Blank
        # lines after the last row shift nothing: they are no rows at all.
        frame = pd.read_csv(io.StringIO(text), sep=sep or sniff_delimiter(text), skip_blank_lines=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError) as exc:
        raise DataError(f"{str(path)!r} is not a readable CSV file: {exc}") from exc
    frame = frame.iloc[:len(frame) - _trailing_blank_lines(text)]
    if column not in frame.columns:
        columns = ", ".join(map(repr, frame.columns))
        raise DataError(f"{str(path)!r} has no column {column!r}; its columns are {columns}")
    raw = frame[column]
    numbers = pd.to_numeric(raw, errors="coerce")
    bad = numbers.isna() & raw.notna()
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise DataError(f"column {column!r} of {str(path)!r} has {int(bad.sum())} non-numeric value(s); the first is "
                        f"{raw.iloc[row]!r} in data row {row + 1} (line {row + 2} of the file)")
    return _clean(f"{path.name}:{column}", numbers, fill)


def sniff_delimiter(text: str) -> str:
    """The delimiter of DELIMITERS that the first line holds most of; a comma if it holds none."""
    header = text.split("\n", 1)[0]
    counts = {sep: header.count(sep) for sep in DELIMITERS}
    best = max(counts, key=counts.get)
    return best if counts[best] else ","


def _trailing_blank_lines(text: str) -> int:
    lines = text.splitlines()
    n = 0
    while n < len(lines) - 1 and not lines[-1 - n].strip():
        n += 1
    return n


def _clean(name: str, values: pd.Series, fill: str | None) -> Series:
    if fill is not None and fill not in FILL_METHODS:
        raise DataError(f"fill must be one of {', '.join(map(repr, FILL_METHODS))} or None, got {fill!r}")
    values = values.astype("float64").reset_index(drop=True)
    finite = np.isfinite(values.to_numpy())
    if not finite.any():
        raise DataError(f"series {name!r} has no numeric values")
    missing = int((~finite).sum())
    if missing and fill is None:
        row = int(np.flatnonzero(~finite)[0])
        raise DataError(f"series {name!r} has {missing} missing or non-finite value(s); the first is "
                        f"{values.iloc[row]} in data row {row + 1} (line {row + 2} of the file). Fill or "
                        f"drop them in the file, or pass --fill interpolate (gaps filled along the line between "
                        f"their neighbours) or --fill drop (those rows removed)")
    values = values.where(finite)
    if fill == "drop":
        values = values.dropna()
    else:
        # Rows missing at either end have only one neighbour: dropped, not guessed.
        values = values.interpolate(method="linear", limit_area="inside").dropna()
    dropped = len(finite) - len(values)
    return Series(name, values.to_numpy(), filled=missing - dropped, dropped=dropped)


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
    train_ends, val_ends, boundary = _window_ends(n, window, horizon, val_fraction)
    if len(train_ends) == 0 or len(val_ends) == 0:
        raise DataError(f"series {series.name!r} has {n} rows; window={window}, horizon={horizon} and "
                        f"val_fraction={val_fraction} need at least {_rows_needed(window, horizon, val_fraction)} "
                        f"rows for one training and one validation window: use a shorter --window or a longer "
                        f"series")

    train_part = values[:boundary]
    changes = train_part[horizon:] - train_part[:-horizon]
    # The spread of the changes; for a series whose changes are all alike (a straight line) that is 0, and
    # their typical size is the scale instead. Only a series with no change at all is refused.
    scale = float(np.std(changes)) or float(np.sqrt(np.mean(changes**2)))
    if not scale > 0.0:
        if np.ptp(train_part) == 0.0:
            raise DataError(f"series {series.name!r} is constant ({train_part[0]:g}) over its training part (the "
                            f"first {boundary} rows); there is nothing to learn")
        raise DataError(f"series {series.name!r} repeats exactly every {horizon} steps over its training part: "
                        f"every {horizon}-step change is 0, so there is nothing to learn for horizon={horizon}")

    import torch
    from torch.utils.data import TensorDataset

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


def _boundary(n: int, val_fraction: float) -> int:
    return int(round(n * (1.0 - val_fraction)))  # the first index of the validation part


def _window_ends(n: int, window: int, horizon: int, val_fraction: float):
    """The last input index of every training and validation window, and the first validation index."""
    boundary = _boundary(n, val_fraction)
    ends = np.arange(window - 1, n - horizon)
    targets = ends + horizon
    return ends[targets < boundary], ends[targets >= boundary], boundary


def _rows_needed(window: int, horizon: int, val_fraction: float) -> int:
    """The shortest series that leaves one training and one validation window: the first target
    (window - 1 + horizon) must precede the validation part, and the last row must lie in it."""
    n = window + horizon
    while not window + horizon <= _boundary(n, val_fraction) <= n - 1:
        n += 1
    return n


def rmse(prediction: np.ndarray, target: np.ndarray) -> float:
    return float(np.sqrt(np.mean((prediction - target) ** 2)))


def mae(prediction: np.ndarray, target: np.ndarray) -> float:
    return float(np.mean(np.abs(prediction - target)))
