"""The data pipeline (windows, split by time, scaling, baselines, bad input) and `lstm-attn train` end to end."""

import os
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from lstm_attn import cpu_features, cli
from lstm_attn.data import DataError, Series, load_builtin, load_csv, split_by_time
from lstm_attn.modules import LSTMWithAttention
from _strict_json import strict_load

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
    assert train(tmp_path, *co2_args, "--season", "52", "--lr", "0.002") == 0
    out = capsys.readouterr().out
    assert "naive (last value)" in out and "seasonal naive (52 steps)" in out and "samples/s" in out
    run = run_dir(tmp_path)
    metrics = pd.read_csv(run / "metrics.csv")
    val_loss = metrics["val_loss"].dropna().to_numpy()
    assert len(val_loss) == 4 and val_loss[-1] < val_loss[0], val_loss
    checkpoints = {p.name for p in (run / "checkpoints").iterdir()}
    assert "last.ckpt" in checkpoints and len(checkpoints) == 2
    summary = strict_load(run / "summary.json")
    assert summary["samples_per_s"] > 0 and summary["val_rmse"] > 0
    assert set(summary["baseline_rmse"]) == {"naive (last value)", "seasonal naive (52 steps)"}
    model = LSTMWithAttention.load_from_checkpoint(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert model.hparams.hidden_size == 16 and model.hparams.input_size == 1 and model.lr == 0.002
    saved = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["optimizer_states"][0]["param_groups"][0]["lr"] == 0.002  # --lr reached Adam


def test_train_command_defaults_to_the_builtin_series(tmp_path, capsys):
    assert train(tmp_path, "--epochs", "1") == 0
    out = capsys.readouterr().out
    assert "series co2: 2284 steps (59 missing values interpolated)" in out
    assert "seasonal naive (52 steps)" in out
    assert strict_load(run_dir(tmp_path) / "summary.json")["series"] == "co2"


def test_the_same_seed_gives_the_same_run(tmp_path, co2_args):
    for name in ("a", "b"):
        assert train(tmp_path / name, *co2_args, "--epochs", "1") == 0
    a, b = (pd.read_csv(run_dir(tmp_path / n) / "metrics.csv") for n in ("a", "b"))
    pd.testing.assert_frame_equal(a, b)


def test_compare_trains_the_seed_and_ours_alike(tmp_path, co2_args, capsys):
    assert train(tmp_path, *co2_args, "--epochs", "2", "--compare") == 0
    out = capsys.readouterr().out
    assert "original (reference.py)" in out and "speedup:" in out
    summary = strict_load(run_dir(tmp_path) / "summary.json")
    # The same seed, data and weights: the two loss curves end where float32 rounding lets them.
    assert summary["seed_model"]["val_loss"] == pytest.approx(summary["val_loss"], rel=1e-3)
    assert (tmp_path / "runs" / "seed").is_dir()


def test_bf16_mixed_precision_trains_on_cpu(tmp_path, co2_args, capsys, cpu_bf16_lstm_missing):
    """On any CPU: where oneDNN has no bfloat16 LSTM, the LSTM trains in float32 and the command says so, once: the
    model's own RuntimeWarning about it does not reach the command's user as well."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert train(tmp_path, *co2_args, "--epochs", "1", "--precision", "bf16-mixed", "--accelerator", "cpu") == 0
    summary = strict_load(run_dir(tmp_path) / "summary.json")
    assert np.isfinite(summary["val_loss"]) and summary["precision"] == "bf16-mixed"
    said = capsys.readouterr().out.count("oneDNN has no bfloat16 LSTM here, so the LSTM trains in float32")
    assert said == int(cpu_bf16_lstm_missing)
    assert not [w for w in caught if "cannot run nn.LSTM" in str(w.message)]


def test_bf16_mixed_compare_is_refused_where_the_seed_cannot_run(tmp_path, co2_args, capsys, monkeypatch):
    monkeypatch.setattr(cpu_features, "cpu_autocast_lstm_error", lambda dtype: "forced by the test")
    assert train(tmp_path, *co2_args, "--precision", "bf16-mixed", "--accelerator", "cpu", "--compare") == 2
    err = capsys.readouterr().err
    assert "the original model cannot train under bfloat16 autocast on this CPU" in err and "32-true" in err
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


def test_a_run_too_short_to_time_writes_null_not_nan(tmp_path, co2_args, capsys):
    """Five training steps or fewer time nothing (the first five warm up): the figure is null in summary.json, which
    a strict parser reads, and the command says it was not measured."""
    assert train(tmp_path, *co2_args, "--epochs", "1", "--batch-size", "64") == 0
    out = capsys.readouterr().out
    assert "training throughput: not measured" in out and "nan" not in out
    summary = strict_load(run_dir(tmp_path) / "summary.json")
    assert summary["samples_per_s"] is None and summary["val_rmse"] > 0


RESUME_ARGS = ["--window", "8", "--hidden-size", "8", "--batch-size", "16", "--dropout", "0.3", "--epochs", "3",
               "--no-progress"]
KILL_MID_EPOCH = Path(__file__).resolve().parent / "_kill_mid_epoch.py"


def test_a_killed_run_resumes_to_the_weights_of_an_uninterrupted_one(tmp_path, co2_args):
    """SIGKILL half-way through the second epoch, `--resume last`, and the run ends where one never killed ends: the
    same weights (the replayed epoch draws its shuffle and dropout from the seed and its number), and one metrics row
    per epoch in the run's own folder."""
    from test_cli import LSTM_ATTN, USER_ENV

    args = [*co2_args, *RESUME_ARGS]
    whole = subprocess.Popen([LSTM_ATTN, "train", "--output", str(tmp_path / "whole"), *args], env=USER_ENV,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    killed = subprocess.run([sys.executable, str(KILL_MID_EPOCH), "1", "train", "--output", str(tmp_path / "killed"),
                             *args], env=USER_ENV, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    run = tmp_path / "killed" / "lstm_attn" / "version_0"
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 0

    resumed = subprocess.run([LSTM_ATTN, "train", "--output", str(tmp_path / "killed"), *args, "--resume", "last"],
                             env=USER_ENV, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    output = resumed.stdout + resumed.stderr
    assert f"resuming {run} after epoch 1 of 3" in output
    # The command says what concerns its user once, and nothing of Lightning's own set-up.
    for chatter in ("Traceback", "GPU available", "Tip:", "does not have many workers", "Restoring states", "Warning"):
        assert chatter not in output, (chatter, output)
    out, _ = whole.communicate(timeout=300)
    assert whole.returncode == 0, out[-2000:]

    def weights(root):
        return torch.load(root / "lstm_attn" / "version_0" / "checkpoints" / "last.ckpt", weights_only=True)

    a, b = weights(tmp_path / "whole"), weights(tmp_path / "killed")
    assert a["epoch"] == b["epoch"] == 2 and a["global_step"] == b["global_step"]
    for name, value in a["state_dict"].items():
        torch.testing.assert_close(b["state_dict"][name], value, msg=name)
    metrics = pd.read_csv(run / "metrics.csv")
    assert metrics["val_loss"].dropna().size == 3 and sorted(set(metrics["epoch"])) == [0, 1, 2]
    assert sorted(p.name for p in (tmp_path / "killed" / "lstm_attn").iterdir()) == ["version_0"]


def test_resume_holds_the_run_to_its_options(tmp_path, co2_args, capsys):
    assert train(tmp_path, *co2_args, "--epochs", "1") == 0
    for extra, message in ((["--epochs", "2", "--hidden-size", "8"], "was started with --hidden-size 16"),
                           (["--epochs", "1"], "has trained its 1 epochs")):
        assert train(tmp_path, *co2_args, *extra, "--resume", "last") == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err


def test_the_model_trains_under_pytorch_lightning_in_a_lightning_project():
    """LSTMWithAttention is a pytorch_lightning.LightningModule, as the seed's: `lightning.pytorch.Trainer` refuses it
    (Lightning does not mix its two namespaces), and pytorch_lightning's Trainer trains it beside `lightning`, which
    is what the README tells a project on the unified package to do."""
    lightning = pytest.importorskip("lightning.pytorch", reason="the unified `lightning` package is not installed "
                                    "(pip install lightning, or the [test] extra): nothing to check against")
    from torch.utils.data import DataLoader, TensorDataset

    import pytorch_lightning

    data = DataLoader(TensorDataset(torch.randn(8, 5, 2), torch.randn(8, 1)), batch_size=4)
    quiet = dict(max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                 enable_model_summary=False, accelerator="cpu")
    with pytest.raises(TypeError, match="must be a `LightningModule`"):
        lightning.Trainer(**quiet).fit(LSTMWithAttention(2, 8, 1, 0.0), data)
    trainer = pytorch_lightning.Trainer(**quiet)
    trainer.fit(LSTMWithAttention(2, 8, 1, 0.0), data)
    assert trainer.global_step == 2
