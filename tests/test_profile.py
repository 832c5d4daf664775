"""`lstm-attn profile`: the host/device split and the heaviest operators, on CPU (the GPU run records kernels)."""

import json

import pytest

from lstm_attn.bench import profile
from lstm_attn.cli import main

TINY = ["profile", "--device", "cpu", "--tokens", "24", "--T", "8,12", "--H", "8", "--iters", "3"]


pytestmark = pytest.mark.usefixtures("one_thread")


def test_profile_splits_each_call_and_names_our_operators(tmp_path, capsys):
    out = tmp_path / "profile.json"
    assert main([*TINY, "--backends", "reference,cpu,triton", "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["schema"] == profile.SCHEMA and doc["config"]["pass"] == "fwd+bwd"
    assert {"device", "torch", "git_commit"} <= doc["env"].keys()
    rows = doc["rows"]
    assert [(r["shape"]["T"], r["backend"]) for r in rows] == [
        (T, b) for T in (8, 12) for b in ("reference", "cpu", "triton")]
    for row in rows:
        assert row["shape"]["B"] * row["shape"]["T"] == 24
        if row["backend"] == "triton":
            # Never timed in the interpreter, and the row says why.
            assert row["status"].startswith("skipped: ") and "interpreter" in row["status"]
            assert row["wall_ms"] is None and row["kernels"] == []
            continue
        assert row["status"] == "ok"
        assert row["wall_ms"] > 0 and row["host_ms"] > 0
        assert row["device_ms"] is None  # a CPU has no separate device time
        times = [k["ms"] for k in row["kernels"]]
        assert times == sorted(times, reverse=True) and len(times) <= profile.TOP_KERNELS
        assert all(k["calls"] > 0 for k in row["kernels"])
    names = {r["backend"]: {k["name"] for k in r["kernels"]} for r in rows if r["shape"]["T"] == 12}
    # Our backward op runs once per call, and does most of the work at any size.
    assert "lstm_attn::attention_layernorm_bwd" in names["cpu"]
    assert not any(n.startswith("lstm_attn::") for n in names["reference"])
    table = capsys.readouterr().out
    assert "| float32 | 2 | 12 | 8 | cpu |" in table and "skipped: " in table


@pytest.mark.parametrize("argv, message", [
    (["--T", "7"], "--tokens 24 is not a multiple of T = 7"),
    (["--iters", "0"], "--iters must be at least 1"),
    (["--backends", "fastest"], "--backends has unknown value 'fastest'"),
    (["--dtypes", "int8"], "--dtypes has unknown value 'int8'"),
])
def test_bad_profile_input_is_a_clear_error(argv, message, capsys, tmp_path):
    assert main([*TINY, "--out", str(tmp_path), *argv]) == 2
    assert message in capsys.readouterr().err


def test_time_budget_leaves_later_rows_listed_not_run(tmp_path):
    out = tmp_path / "profile.json"
    assert main([*TINY, "--backends", "reference", "--time-budget", "1e-9", "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["rows"] == []
    assert doc["config"]["not_run"] == ["float32 B=3 T=8 H=8 reference", "float32 B=2 T=12 H=8 reference"]
