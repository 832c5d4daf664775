"""The model_scaling benchmark case (lstm_attn.bench.scaling): a point's parity check, timing and peak memory,
what happens past the memory or time cap, and its table and fitted exponents in the report."""


import pytest
import torch

from lstm_attn.bench import report, scaling, schema
from lstm_attn.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")
STAMP = {"device": "AMD EPYC", "timestamp": "2026-12-01T00:00:00+00:00", "version": "0.1.0"}


def test_a_point_checks_parity_then_times_and_measures_its_peak():
    found = scaling.point("ours-cpu", 12, torch.device("cpu"), H=8, B=2, time_cap=60.0)
    assert found["status"] == "ok", found["status"]
    assert found["parity_err"] is not None and found["parity_err"] < 1e-5
    assert found["ms_p20"] <= found["ms_p50"] <= found["ms_p80"]
    assert scaling.MIN_STEPS <= found["reps"] <= scaling.MAX_STEPS
    assert found["peak_mb"] > 10  # a Python process with torch in it
    # What the step adds is a part of the peak: the interpreter and torch's libraries were there before it.
    assert 0 < found["base_mb"] <= found["peak_mb"] and scaling.step_mb(found) < found["peak_mb"]


def test_a_point_in_its_own_process_matches_the_format():
    found = scaling.point_in_subprocess("seed", 8, H=4, B=2, time_cap=60.0)
    assert found["status"] == "ok", found
    assert found["parity_err"] is None and found["peak_mb"] > 10  # the seed is the reference, never checked


def test_past_the_time_cap_a_point_is_marked_not_timed():
    found = scaling.point("seed", 8, torch.device("cpu"), H=4, B=2, time_cap=1e-9)
    assert found["status"].startswith("skipped: time cap: one step took") and "ms_p50" not in found


def test_a_provider_stops_growing_after_its_first_point_that_did_not_fit(monkeypatch):
    def fake(name, T, *, H, B, time_cap):
        if name == "seed" and T >= 32:
            return {"status": "skipped: out of memory (the process was killed)", "parity_err": None,
                    "detail": None, "peak_mb": None}
        ms = T * T / 64 if name == "seed" else T / 8
        return {"status": "ok", "parity_err": None if name == "seed" else 1e-7, "detail": None,
                "peak_mb": 500 + ms * 10, "base_mb": 500.0, "ms_p20": ms, "ms_p50": ms, "ms_p80": ms, "reps": 3}

    monkeypatch.setattr(scaling, "point_in_subprocess", fake)
    rows = scaling.scaling_rows(torch.device("cpu"), [8, 16, 32, 64], H=4, B=2, names=["seed", "ours-cpu"],
                                stamp=STAMP)
    assert [(r["backend"], r["shape"]["T"], r["status"][:7]) for r in rows] == [
        ("seed", 8, "ok"), ("seed", 16, "ok"), ("seed", 32, "skipped"),
        ("ours-cpu", 8, "ok"), ("ours-cpu", 16, "ok"), ("ours-cpu", 32, "ok"), ("ours-cpu", 64, "ok")]
    by = {(r["backend"], r["shape"]["T"]): r for r in rows}
    assert by[("ours-cpu", 16)]["speedup_vs_reference"] == pytest.approx((16 * 16 / 64) / (16 / 8))
    assert by[("ours-cpu", 64)]["speedup_vs_reference"] is None  # no seed time to compare with
    doc = {"schema": schema.SCHEMA, "env": {"device": "AMD EPYC", "device_type": "cpu", "timestamp": STAMP["timestamp"],
                                            "torch": "2.13.0", "version": "0.1.0", "git_commit": "abc"},
           "ceilings": {}, "models": {}, "config": {}, "rows": rows}
    schema.validate(doc)
    text = report.scaling_tables(report.merge([report.Run("s.json", doc)]))
    assert "| 32 | out of memory |  |" in text
    # The process's fixed 500 MB is left out of the fits and ratios: the step's own memory grows as its time does.
    assert "seed: time ∝ T^2.00, step memory ∝ T^2.00; ours-cpu: time ∝ T^1.00, step memory ∝ T^1.00" in text
    assert "| 16 | 4 | 540 (40) | 2 | 520 (20) | 2.00x | 2.00x |" in text


def test_lengths_double_and_slopes_fit_powers():
    assert scaling.lengths(256, 16384) == [256, 512, 1024, 2048, 4096, 8192, 16384]
    assert scaling.lengths(3, 20) == [3, 6, 12]
    with pytest.raises(ValueError, match="positive start"):
        scaling.lengths(0, 8)
    assert scaling.slope([(2, 4), (4, 16), (8, 64)]) == pytest.approx(2.0)
    assert scaling.slope([(2, 4)]) is None


def test_the_sweep_writes_scaling_rows_and_the_report_draws_them(tmp_path, monkeypatch):
    def fake(name, T, *, H, B, time_cap):
        ms = float(T)
        return {"status": "ok", "parity_err": None, "detail": None, "peak_mb": 100.0 + T, "ms_p20": ms,
                "ms_p50": ms, "ms_p80": ms, "reps": 3}

    monkeypatch.setattr(scaling, "point_in_subprocess", fake)
    out = tmp_path / "scaling.json"
    assert main(["bench", "--device", "cpu", "--cases", "model_scaling", "--scaling-T", "8,32", "--scaling-shape",
                 "2x4", "--out", str(out)]) == 0
    doc = schema.load(out)
    assert {r["shape"]["T"] for r in doc["rows"]} == {8, 16, 32} and "model_scaling" in doc["models"]
    assert main(["report", str(out), "--out", str(tmp_path / "report"), "--quiet"]) == 0
    # The plot is named after the CPU the rows ran on, which differs between machines.
    (png,) = (tmp_path / "report").glob("report-*-scaling.png")
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert "## Cost against sequence length" in (tmp_path / "report" / "report.md").read_text()
    with pytest.raises(SystemExit):
        main(["bench", "--device", "cpu", "--cases", "model_scaling", "--time-cap", "x"])
    assert main(["bench", "--device", "cpu", "--cases", "model_scaling", "--scaling-T", "8"]) == 2
