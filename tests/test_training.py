"""The data pipeline (windows, split by time, scaling, baselines, bad input) and `lstm-attn train` end to end."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from lstm_attn import cli, host
from lstm_attn.data import DataError, Series, load_builtin, load_csv, split_by_time
from lstm_attn.modules import LSTMWithAttention

# A small slice of the built-in series keeps the end-to-end runs to seconds.
SLICE_ROWS = 360
FAST = ["--window", "16", "--hidden-size", "16", "--epochs", "4", "--batch-size", "32", "--no-progress"]


@pytest.fixture(scope="module")
def co2_csv(tmp_path_factory):
    from statsmodels.datasets import co2

    frame = co2.load_pandas().data.iloc[:SLICE_ROWS]  # holds missing values, written as empty cells
    path = tmp_path_factory.mktemp("data") / "co2.csv"
    frame.rename_axis("week").to_csv(path)
    return path


@pytest.fixture(scope="module")
def co2_args(co2_csv):
    """The CSV's command-line arguments; its gaps are interpolated, as the built-in series' are."""
    return ["--csv", str(co2_csv), "--column", "co2", "--fill", "interpolate"]


def train(tmp_path, *extra) -> int:
    return cli.main(["train", "--output", str(tmp_path / "runs"), *FAST, *extra])


def run_dir(tmp_path, name="lstm_attn"):
    (version,) = (tmp_path / "runs" / name).iterdir()
    return version


# --- data -----------------------------------------------------------------------------------------------


def test_builtin_series_is_co2_with_its_gaps_filled():
    series = load_builtin()
    assert series.name == "co2" and len(series.values) == 2284 and series.filled == 59
    assert np.isfinite(series.values).all()


def test_csv_gaps_are_interpolated_and_ends_dropped(tmp_path):
    path = tmp_path / "s.csv"
    pd.DataFrame({"v": [None, 1.0, None, 3.0, 4.0, None]}).to_csv(path, index=False)
    series = load_csv(path, "v", fill="interpolate")
    np.testing.assert_array_equal(series.values, [1.0, 2.0, 3.0, 4.0])
    assert series.filled == 1 and series.dropped == 2


def test_csv_missing_values_are_dropped_on_request(tmp_path):
    path = tmp_path / "s.csv"
    path.write_text("v\n1\nnan\n3\n\n5\ninf\n7\n")  # NaN, a blank line and inf: three missing values
    series = load_csv(path, "v", fill="drop")
    np.testing.assert_array_equal(series.values, [1.0, 3.0, 5.0, 7.0])
    assert series.filled == 0 and series.dropped == 3
    np.testing.assert_array_equal(load_csv(path, "v", fill="interpolate").values, np.arange(1.0, 8.0))


@pytest.mark.parametrize("content, message", [
    # The series of the bug report: it changes, and has one missing value.
    ("value\n" + "\n".join(["1", "nan"] + [str(i) for i in range(3, 13)]) + "\n",
     "1 missing or non-finite value.*the first is nan in data row 2 \\(line 3 .*--fill interpolate.*--fill drop"),
    ("value\n1\n2\n-inf\n4\n", "the first is -inf in data row 3"),
    # A blank line is a missing value, not a row to skip: skipping it would shift the rest of the series.
    ("value\n1\n2\n\n4\n\n6\n", "2 missing or non-finite value.*the first is nan in data row 3"),
])
def test_csv_missing_values_are_errors_naming_the_row(tmp_path, content, message):
    path = tmp_path / "gaps.csv"
    path.write_text(content)
    with pytest.raises(DataError, match=message):
        load_csv(path, "value")


def test_a_straight_line_is_learnable_and_a_constant_is_named():
    line = split_by_time(Series("line", np.arange(1.0, 13.0)), window=2, val_fraction=0.2)
    assert line.scale == 1.0  # every change is 1: their typical size, since their spread is 0
    torch.testing.assert_close(line.train.tensors[1], torch.ones(len(line.train), 1))
    with pytest.raises(DataError, match="'flat' is constant \\(4.5\\) over its training part"):
        split_by_time(Series("flat", np.full(30, 4.5)), window=3)
    with pytest.raises(DataError, match="repeats exactly every 2 steps"):
        split_by_time(Series("zigzag", np.tile([1.0, 2.0], 20)), window=3, horizon=2)


def test_windows_targets_and_scale():
    values = np.arange(40, dtype=np.float64) ** 1.5
    split = split_by_time(Series("s", values), window=5, horizon=2, val_fraction=0.25)
    x, y = split.train.tensors
    assert x.shape[1:] == (5, 1) and y.shape[1:] == (1,)
    boundary = 30  # the first validation index
    train_part = values[:boundary]
    assert split.scale == pytest.approx(np.std(train_part[2:] - train_part[:-2]))
    # The first training window: values 0..4 relative to value 4, the target value 6.
    np.testing.assert_allclose(x[0, :, 0].numpy(), (values[0:5] - values[4]) / split.scale, rtol=1e-6)
    np.testing.assert_allclose(y[0, 0].item(), (values[6] - values[4]) / split.scale, rtol=1e-6)
    # Every training target precedes the validation part; every validation target lies in it.
    assert len(split.train) == boundary - 5 - 2 + 1
    np.testing.assert_array_equal(split.target, values[boundary:])
    # Predicting zero change is the last-value forecast.
    np.testing.assert_allclose(split.to_series_units(np.zeros(len(split.val))), split.last)


def test_scaler_sees_only_the_training_part():
    values = np.sin(np.arange(200) / 5.0)
    changed = values.copy()
    changed[170:] *= 100.0  # the validation part only
    a, b = (split_by_time(Series("s", v), window=8, val_fraction=0.15) for v in (values, changed))
    assert a.scale == b.scale
    torch.testing.assert_close(a.train.tensors[0], b.train.tensors[0])


def test_seasonal_naive_is_the_value_one_season_back():
    values = np.arange(100) + np.sin(np.arange(100))
    split = split_by_time(Series("s", values), window=4, val_fraction=0.2, season=10)
    np.testing.assert_array_equal(split.seasonal_naive, values[80 - 10:100 - 10])
    with pytest.raises(DataError, match="season"):
        split_by_time(Series("s", values), window=4, horizon=3, val_fraction=0.2, season=2)


@pytest.mark.parametrize("content, column, message", [
    ("a,b\n1,2\n3,4\n", "c", "no column 'c'; its columns are 'a', 'b'"),
    ("a\n1\n2\nabc\n4\n", "a", "non-numeric value.*'abc' in data row 3"),
    ("", "a", "not a readable CSV"),
    ("a\n,\n,\n", "a", "no numeric values"),
])
def test_bad_csv_is_a_clear_error(tmp_path, content, column, message):
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(DataError, match=message):
        load_csv(path, column)


@pytest.mark.parametrize("content, sep", [
    ("week,v\n1,1\n2,2\n3,3\n\n", None),  # the blank last line a spreadsheet or an editor leaves
    ("week,v\n1,1\n2,2\n3,3\n\n \n\n", None),
    ("\ufeffweek;v\n1;1\n2;2\n3;3\n", None),  # semicolons (and a byte-order mark), found in the header
    ("week\tv\n1\t1\n2\t2\n3\t3\n", None),
    ("week|v\n1|1\n2|2\n3|3\n", "|"),
    ("v\n1\n2\n3\n", None),  # one column: no delimiter to find
])
def test_csv_delimiters_and_trailing_blank_lines(tmp_path, content, sep):
    path = tmp_path / "s.csv"
    path.write_text(content, encoding="utf-8")
    series = load_csv(path, "v", sep=sep)
    np.testing.assert_array_equal(series.values, [1.0, 2.0, 3.0])
    assert series.filled == series.dropped == 0


def test_a_blank_line_before_the_last_row_is_still_a_missing_value(tmp_path):
    path = tmp_path / "s.csv"
    path.write_text("v\n1\n\n3\n\n")
    with pytest.raises(DataError, match="1 missing or non-finite value.*data row 2"):
        load_csv(path, "v")


def test_missing_csv_file_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_csv(tmp_path / "nope.csv", "a")


@pytest.mark.parametrize("window, horizon, val_fraction, needed", [(12, 1, 0.2, 16), (8, 1, 0.2, 11), (3, 2, 0.5, 10),
                                                                  (1, 1, 0.01, 51)])
def test_too_few_rows_says_how_many_are_needed(window, horizon, val_fraction, needed):
    def split(rows):
        return split_by_time(Series("short", np.sin(np.arange(float(rows)))), window, horizon, val_fraction)

    with pytest.raises(DataError, match=f"has {needed - 1} rows; .* need at least {needed} rows"):
        split(needed - 1)
    trained = split(needed)
    assert len(trained.train) >= 1 and len(trained.val) >= 1


# --- the command ----------------------------------------------------------------------------------------


def test_train_command_learns_and_writes_its_files(tmp_path, co2_args, capsys):
    assert train(tmp_path, *co2_args, "--season", "52") == 0
    out = capsys.readouterr().out
    assert "naive (last value)" in out and "seasonal naive (52 steps)" in out and "samples/s" in out
    run = run_dir(tmp_path)
    metrics = pd.read_csv(run / "metrics.csv")
    val_loss = metrics["val_loss"].dropna().to_numpy()
    assert len(val_loss) == 4 and val_loss[-1] < val_loss[0], val_loss
    checkpoints = {p.name for p in (run / "checkpoints").iterdir()}
    assert "last.ckpt" in checkpoints and len(checkpoints) == 2
    summary = json.loads((run / "summary.json").read_text())
    assert summary["samples_per_s"] > 0 and summary["val_rmse"] > 0
    assert set(summary["baseline_rmse"]) == {"naive (last value)", "seasonal naive (52 steps)"}
    model = LSTMWithAttention.load_from_checkpoint(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert model.hparams.hidden_size == 16 and model.hparams.input_size == 1


def test_train_command_defaults_to_the_builtin_series(tmp_path, capsys):
    assert train(tmp_path, "--epochs", "1") == 0
    out = capsys.readouterr().out
    assert "series co2: 2284 steps (59 missing values interpolated)" in out
    assert "seasonal naive (52 steps)" in out
    assert json.loads((run_dir(tmp_path) / "summary.json").read_text())["series"] == "co2"


def test_the_same_seed_gives_the_same_run(tmp_path, co2_args):
    for name in ("a", "b"):
        assert train(tmp_path / name, *co2_args, "--epochs", "1") == 0
    a, b = (pd.read_csv(run_dir(tmp_path / n) / "metrics.csv") for n in ("a", "b"))
    pd.testing.assert_frame_equal(a, b)


def test_compare_trains_the_seed_and_ours_alike(tmp_path, co2_args, capsys):
    assert train(tmp_path, *co2_args, "--epochs", "2", "--compare") == 0
    out = capsys.readouterr().out
    assert "seed (reference.py)" in out and "speedup:" in out
    summary = json.loads((run_dir(tmp_path) / "summary.json").read_text())
    # The same seed, data and weights: the two loss curves end where float32 rounding lets them.
    assert summary["seed_model"]["val_loss"] == pytest.approx(summary["val_loss"], rel=1e-3)
    assert (tmp_path / "runs" / "seed").is_dir()


def test_bf16_mixed_precision_trains_on_cpu(tmp_path, co2_args, capsys, cpu_bf16_lstm_missing):
    """On any CPU: where oneDNN has no bfloat16 LSTM, the LSTM trains in float32 and the command says so."""
    assert train(tmp_path, *co2_args, "--epochs", "1", "--precision", "bf16-mixed", "--accelerator", "cpu") == 0
    summary = json.loads((run_dir(tmp_path) / "summary.json").read_text())
    assert np.isfinite(summary["val_loss"]) and summary["precision"] == "bf16-mixed"
    said = "oneDNN has no bfloat16 LSTM here, so the LSTM trains in float32" in capsys.readouterr().out
    assert said == cpu_bf16_lstm_missing


def test_bf16_mixed_compare_is_refused_where_the_seed_cannot_run(tmp_path, co2_args, capsys, monkeypatch):
    monkeypatch.setattr(host, "cpu_autocast_lstm_error", lambda dtype: "forced by the test")
    assert train(tmp_path, *co2_args, "--precision", "bf16-mixed", "--accelerator", "cpu", "--compare") == 2
    err = capsys.readouterr().err
    assert "the seed's model cannot train under bfloat16 autocast on this CPU" in err and "32-true" in err
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("args, message", [
    (["--csv", "x.csv"], "--csv needs --column"),
    (["--column", "co2"], "--column names a column of --csv"),
    (["--csv", "{csv}", "--column", "price"], "no column 'price'"),
    (["--csv", "{csv}", "--column", "co2", "--fill", "drop", "--window", "400"],
     "has 313 rows; window=400, horizon=1 and val_fraction=0.2 need at least 501 rows"),
    # The CSV holds the built-in series' gaps: without --fill each is an error naming the first.
    (["--csv", "{csv}", "--column", "co2"],
     "47 missing or non-finite value(s); the first is nan in data row 7 (line 8 of the file)"),
    (["--csv", "{csv}", "--column", "co2", "--fill", "guess"], "invalid choice: 'guess'"),
])
def test_bad_train_arguments_are_clear_errors(tmp_path, co2_csv, capsys, args, message):
    args = [a.replace("{csv}", str(co2_csv)) for a in args]
    try:
        assert train(tmp_path, *args) == 2
    except SystemExit as exit:  # argparse's own refusals
        assert exit.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()
