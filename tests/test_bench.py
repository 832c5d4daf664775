"""The benchmark suite itself: its FLOP/byte model, its JSON schema, parity before timing, the report, bad input."""

import copy
import json

import pytest
import torch

from lstm_attn import reference_ops
from lstm_attn.bench import cases, load, report, schema
from lstm_attn.bench.cases import op_work
from lstm_attn.cli import main
from _strict_json import strict_load

TINY = ["bench", "--device", "cpu", "--quick", "--tokens", "64", "--T", "16,32", "--H", "8"]


pytestmark = pytest.mark.usefixtures("one_thread")


def test_flop_and_byte_model_on_hand_computed_cases():
    # B=2, Tq=Tk=3, H=4, float32: attention 4*2*3*3*4 = 288 FLOPs, 24 elements of (B, Tq, H).
    assert op_work("fwd", 2, 3, 3, 4, 4) == cases.Work(288 + 8 * 24, 4 * (3 * 24 + 2 * 24 + 2 * 4))
    assert op_work("fwd", 2, 3, 3, 4, 4) == cases.Work(480, 512)
    assert op_work("bwd", 2, 3, 3, 4, 4) == cases.Work(720 + 16 * 24, 4 * (5 * 24 + 4 * 24 + 3 * 4))
    assert op_work("fwd+bwd", 2, 3, 3, 4, 4) == cases.Work(1584, 1424)
    # Tq != Tk, 2-byte dtype: B=1, Tq=2, Tk=5, H=3 -> attention 120, q 6 and k 15 elements.
    assert op_work("fwd", 1, 2, 5, 3, 2) == cases.Work(168, 108)
    assert op_work("bwd", 1, 2, 5, 3, 2) == cases.Work(396, 198)
    with pytest.raises(ValueError, match="pass must be one of"):
        op_work("sideways", 1, 1, 1, 1, 4)


def _sweep(tmp_path, *extra):
    out = tmp_path / "result.json"
    assert main([*TINY, "--out", str(out), *extra]) == 0
    strict_load(out)  # no NaN or Infinity: JSON that every parser reads
    return schema.load(out)


def test_sweep_writes_one_schema_with_speedups_and_rates(tmp_path):
    doc = _sweep(tmp_path, "--backends", "reference,sdpa", "--passes", "fwd,fwd+bwd")
    assert doc["schema"] == schema.SCHEMA
    assert {"device", "torch", "triton", "version", "git_commit", "timestamp"} <= doc["env"].keys()
    assert doc["ceilings"]["copy_gbps"] > 0 and doc["ceilings"]["matmul_tflops"]["float32"] > 0
    assert "4*B*Tq*Tk*H" in doc["models"]["attention_layernorm"]
    host = [r for r in doc["rows"] if r["timing"] == "host"]
    rows = [r for r in doc["rows"] if r["timing"] != "host"]
    assert len(rows) == 2 * 2 * 2  # T values x passes x providers
    assert {(r["backend"], r["shape"]["T"], r["method"]) for r in host} == \
        {("reference", 16, "host-issue"), ("sdpa", 16, "host-issue")}
    assert all(r["tflops"] is None and r["ms_p50"] > 0 for r in host)  # issuing a call moves no FLOPs
    for row in rows:
        assert row["status"] == "ok", row["status"]
        assert row["timing"] == "eager" and row["method"] == "synchronised"
        assert row["ms_p20"] <= row["ms_p50"] <= row["ms_p80"]
        assert row["shape"]["B"] * row["shape"]["T"] == row["tokens"] == 64
        assert row["flops"] == op_work(row["pass"], row["shape"]["B"], row["shape"]["T"], row["shape"]["T"], 8, 4).flops
        assert row["tflops"] == pytest.approx(row["flops"] / (row["ms_p50"] * 1e-3) / 1e12)
        assert row["gbps_fraction"] == pytest.approx(row["gbps"] / doc["ceilings"]["copy_gbps"])
        assert row["best_peer"] in ("reference", "sdpa") and row["speedup_vs_best_peer"] > 0
        assert row["load_before"] >= 0 and row["load_after"] >= 0 and load.busy(row, doc["env"]) is not None
        if row["backend"] == "reference":
            assert row["speedup_vs_reference"] == 1.0 and row["parity_err"] is None
        else:
            assert row["parity_err"] < 1e-5
            assert row["detail"].startswith("SDPA kernel: ")
    broken = copy.deepcopy(doc)
    broken["rows"][0]["ms_p50"] = None
    with pytest.raises(schema.SchemaError, match=r"rows\[0\] has status 'ok' but no ms_p50"):
        schema.validate(broken, "broken")


def test_model_step_times_the_seed_beside_ours_after_checking_ours(tmp_path):
    out = tmp_path / "model.json"
    assert main(["bench", "--device", "cpu", "--quick", "--cases", "model_step", "--model-shapes", "2x8",
                 "--out", str(out)]) == 0
    rows = schema.load(out)["rows"]
    by = {(r["pass"], r["backend"]): r for r in rows}
    assert {p for p, _ in by} == {"step", "lstm", "attention"}
    assert by[("lstm", "seed")]["status"] == "ok" and by[("step", "seed")]["speedup_vs_reference"] == 1.0
    for pass_ in ("step", "attention"):
        ours = by[(pass_, "ours-reference")]
        assert ours["status"] == "ok", ours["status"]
        assert ours["parity_err"] is not None and ours["speedup_vs_reference"] > 0


class _Counted:
    def __init__(self, fn):
        self.fn, self.calls = fn, 0

    def __call__(self, *args):
        self.calls += 1
        return self.fn(*args)


def _off_by_one_percent(q, k, v, residual, weight, bias):
    return reference_ops.attention_layernorm(q, k, v, residual, weight, bias) * 1.01


def _wrong_gradient(q, k, v, residual, weight, bias):
    out = reference_ops.attention_layernorm(q, k, v, residual, weight, bias)
    return out + 0.5 * (out - out.detach())  # the right values, gradients 1.5 times too large


@pytest.mark.parametrize("wrong, passes, refused", [
    (_off_by_one_percent, "fwd", {"fwd"}),
    (_wrong_gradient, "fwd,fwd+bwd", {"fwd+bwd"}),
], ids=["wrong-output", "wrong-gradient"])
def test_a_wrong_backend_is_refused_and_never_timed(tmp_path, monkeypatch, wrong, passes, refused):
    counted = _Counted(wrong)
    monkeypatch.setitem(cases.PROVIDERS, "wrong", cases.Provider("wrong", "ours", lambda: counted,
                                                                    lambda device, dtype, H: None))
    doc = _sweep(tmp_path, "--backends", "reference,wrong", "--T", "16", "--passes", passes)
    rows = {row["pass"]: row for row in doc["rows"] if row["backend"] == "wrong" and row["timing"] == "eager"}
    for pass_, row in rows.items():
        if pass_ in refused:
            assert row["status"].startswith("refused: "), row["status"]
            assert row["ms_p50"] is None and row["speedup_vs_reference"] is None
        else:
            assert row["status"] == "ok"
    if passes == "fwd":
        assert counted.calls == 2  # the parity checks of the host group and the op group; nothing was timed
        host = [row for row in doc["rows"] if row["backend"] == "wrong" and row["timing"] == "host"]
        assert [row["status"][:8] for row in host] == ["refused:"]  # host rows are checked first, too


def _result(device, device_type, timestamp, ms, timing="eager"):
    """A hand-written result file: attention_layernorm fwd+bwd at T in (256, 1024), H=128, float32."""
    method = {"graph": "cuda-graph", "eager": "synchronised", "host": "host-issue"}[timing]
    rows = []
    for T in (256, 1024):
        timed = {backend: factor * T / 256 for backend, factor in ms.items()}
        best = min(("reference", "sdpa"), key=timed.get)
        for backend, t in timed.items():
            flops = op_work("fwd+bwd", 16384 // T, T, T, 128, 4).flops
            rows.append({
                "case": "attention_layernorm", "pass": "fwd+bwd", "backend": backend,
                "kind": "peer" if backend in ("reference", "sdpa") else "ours", "dtype": "float32",
                "shape": {"B": 16384 // T, "T": T, "H": 128}, "tokens": 16384, "status": "ok", "timing": timing,
                "method": method, "detail": None, "metric": "time",
                "unit": "ms", "ms_p20": t * 0.9, "ms_p50": t, "ms_p80": t * 1.1, "reps": 10, "parity_err": 1e-7,
                "speedup_vs_reference": timed["reference"] / t, "best_peer": best,
                "speedup_vs_best_peer": timed[best] / t, "flops": flops, "bytes": 1000, "tflops": flops / t / 1e9,
                "gbps": 1.0, "tflops_fraction": 0.1, "gbps_fraction": 0.01, "peak_mb": None, "device": device,
                "timestamp": timestamp, "version": "0.1.0"})
    rows.append({**rows[-1], "backend": "triton", "status": "skipped: no GPU", "ms_p20": None, "ms_p50": None,
                 "ms_p80": None, "reps": None, "speedup_vs_reference": None, "best_peer": None,
                 "speedup_vs_best_peer": None, "tflops": None, "gbps": None, "tflops_fraction": None,
                 "gbps_fraction": None})
    return {"schema": schema.SCHEMA, "env": {"device": device, "device_type": device_type, "timestamp": timestamp,
                                             "torch": "2.11.0", "version": "0.1.0", "git_commit": "abc123"},
            "ceilings": {"copy_gbps": 3000.0, "matmul_tflops": {"float32": 50.0}}, "models": {}, "config": {},
            "rows": rows}


def test_report_merges_two_devices_into_a_table_and_plots(tmp_path, capsys):
    a = tmp_path / "h100.json"
    b = tmp_path / "a100.json"
    a.write_text(json.dumps(_result("NVIDIA H100", "cuda", "2025-01-02T00:00:00+00:00",
                                    {"reference": 4.0, "sdpa": 2.0, "cuda": 1.0}, timing="graph")))
    b.write_text(json.dumps(_result("NVIDIA A100", "cuda", "2025-01-01T00:00:00+00:00",
                                    {"reference": 6.0, "sdpa": 3.0, "cuda": 2.5}, timing="graph")))
    out = tmp_path / "report"
    assert main(["report", str(a), str(b), "--out", str(out), "--stem", "summary"]) == 0
    md = (out / "summary.md").read_text()
    assert "## Device time (CUDA-graph replay)" in md and "## Eager wall time" not in md
    assert "cuda on NVIDIA H100" in md and "cuda on NVIDIA A100" in md
    assert "4.00x (2.00x)" in md  # H100 cuda: 4 ms / 1 ms vs reference, 2 ms / 1 ms vs sdpa, the best peer
    assert "2.40x (1.20x)" in md  # A100 cuda
    assert "### NVIDIA H100, 2025-01-02, commit abc123 (h100.json)" in md
    assert "| GPU: cuda ≥ 1.3x the best peer, every shape | NVIDIA H100 | cuda | float32 | 64 | 256 | 128 | 2.00x vs sdpa " \
           "(goal 1.3x) | yes |" in md
    assert "| NVIDIA A100 | cuda | float32 | 64 | 256 | 128 | 1.20x vs sdpa (goal 1.3x) | **no** |" in md
    assert "NVIDIA H100, triton (1 row): skipped: no GPU" in md
    assert md in capsys.readouterr().out
    for png in ("summary-nvidia-h100-speedup.png", "summary-nvidia-a100-tflops.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_keeps_the_timings_apart_and_reads_every_kind_of_file(tmp_path):
    """Graph, eager and host rows of one run go to their own sections; a schema-1 file and a profile file in the
    same folder are read too, and a graph row that fell back to eager timing is marked."""
    graph = _result("NVIDIA H200", "cuda", "2025-01-03T00:00:00+00:00", {"reference": 2.0, "sdpa": 1.0, "cuda": 0.5},
                    timing="graph")
    graph["rows"][0].update(method="synchronised", detail="not capturable in a CUDA graph (RuntimeError: x)")
    eager = _result("NVIDIA H200", "cuda", "2025-01-03T00:00:00+00:00", {"reference": 3.0, "sdpa": 2.0, "cuda": 1.5})
    host = _result("NVIDIA H200", "cuda", "2025-01-03T00:00:00+00:00", {"reference": 0.2, "sdpa": 0.1, "cuda": 0.05},
                   timing="host")
    doc = {**graph, "rows": graph["rows"] + eager["rows"] + host["rows"]}
    old = _result("AMD EPYC", "cpu", "2024-12-01T00:00:00+00:00", {"reference": 5.0, "sdpa": 4.0, "cpu": 2.0})
    old["schema"] = "lstm_attn.bench/1"
    for row in old["rows"]:
        del row["timing"], row["method"], row["detail"], row["peak_mb"]
    profile = {"schema": "lstm_attn.profile/1", "env": {**doc["env"], "device_type": "cuda"}, "rows": [
        {"backend": "cuda", "dtype": "float32", "shape": {"B": 64, "T": 256, "H": 128}, "status": "ok",
         "wall_ms": 0.6, "host_ms": 0.1, "device_ms": 0.5, "kernels": [{"name": "fwd_kernel", "ms": 0.3, "calls": 1}]}]}
    paths = []
    for name, content in (("run.json", doc), ("old.json", old), ("profile.json", profile)):
        paths.append(tmp_path / name)
        paths[-1].write_text(json.dumps(content))
    out = tmp_path / "report"
    assert main(["report", *map(str, paths), "--out", str(out), "--quiet"]) == 0
    md = (out / "report.md").read_text()
    sections = [md.index(h) for h in ("## Device time", "## Eager wall time", "## Host cost", "## Goals",
                                      "## Where the time goes", "## Rows not timed")]
    assert sections == sorted(sections)
    device, eager_part, host_part = (md[a:b] for a, b in zip(sections, sections[1:4]))
    assert "| float32 | 64 | 256 | 128 | 2† | 1 | 0.5 |  | 4.00x | 2.00x (sdpa) | – | – |" in device
    assert "† not capturable in a CUDA graph" in device
    assert "| float32 | 64 | 256 | 128 | 3 | 2 | 1.5 |  | 2.00x | 1.33x (sdpa) | – | – |" in eager_part
    assert "| float32 | 64 | 256 | 128 | 5 | 4 | 2 |  | 2.50x | 2.00x (sdpa) | – | – |" in eager_part  # schema 1, CPU
    assert "| float32 | 64 | 256 | 128 | 0.2 | 0.1 | 0.05 |  | 4.00x | 2.00x (sdpa) |" in host_part
    assert "fwd_kernel" in md[sections[4]:]
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == ["report-amd-epyc-speedup.png", "report-amd-epyc-tflops.png", "report-nvidia-h200-speedup.png",
                    "report-nvidia-h200-tflops.png"]


def test_report_reads_the_committed_results(tmp_path):
    """CI's check that `lstm-attn report benchmarks/results/*.json` works on the folder as it is."""
    from pathlib import Path

    files = sorted(str(p) for p in (Path(__file__).parent.parent / "benchmarks" / "results").glob("*.json"))
    assert files, "no committed result files"
    assert main(["report", *files, "--out", str(tmp_path), "--quiet"]) == 0
    assert "## Where the time goes" in (tmp_path / "report.md").read_text()
    # The other tools' results in the folder are named and left out, and alone they are no report.
    tools = {f: report.other_tool(json.loads(Path(f).read_text())) for f in files}
    others = [f for f, tool in tools.items() if tool]
    assert {tools[f] for f in others} == {"benchmarks/host_cost.py", "benchmarks/kernel_resources.py",
                                          "benchmarks/lstm_memory.py"}
    assert main(["report", *others, "--out", str(tmp_path), "--quiet"]) == 2


@pytest.mark.parametrize("argv, message", [
    (["--backends", "reference,nope"], "--backends has unknown value 'nope'"),
    (["--dtypes", "float8"], "--dtypes has unknown value 'float8'"),
    (["--passes", "sideways"], "--passes has unknown value 'sideways'"),
    (["--cases", "everything"], "--cases has unknown value 'everything'"),
    (["--T", "24"], "--tokens 64 is not a multiple of T = 24"),
    (["--elements", "96"], "--tokens and --elements both size the op shapes"),
    (["--timings", "graph"], "--timings graph needs a CUDA GPU"),
    (["--host-shape", "1x16"], "--host-shape takes items such as 1x16x64"),
    (["--H", "0"], "--H must be positive, got 0"),
    (["--H", "8,wide"], "--H must be comma-separated positive integers"),
    (["--model-shapes", "256"], "--model-shapes takes items such as 256x1024"),
    (["--threads", "0"], "--threads must be positive"),
], ids=["backend", "dtype", "pass", "case", "T", "elements", "graph-on-cpu", "host-shape", "H-zero", "H-text",
        "model-shape", "threads"])
def test_bad_sweep_input_is_a_clear_error(argv, message, capsys, tmp_path):
    assert main([*TINY, "--out", str(tmp_path), *argv]) == 2
    assert message in capsys.readouterr().err
    assert not list(tmp_path.iterdir())  # nothing measured, nothing written


def test_op_shapes_keep_the_elements_per_tensor_or_the_tokens():
    from lstm_attn.bench.options import ELEMENTS
    from lstm_attn.bench.sweep import op_shapes

    shapes = op_shapes(ELEMENTS, None, [256, 1024, 4096], [64, 512])
    assert all(B * T * H == ELEMENTS for B, T, H in shapes)
    assert shapes[0] == (2048, 256, 64) and shapes[-1] == (16, 4096, 512)
    assert op_shapes(None, 8192, [256], [64, 128]) == [(32, 256, 64), (32, 256, 128)]
    with pytest.raises(ValueError, match="--elements 96 is not a multiple of T \\* H = 16 \\* 8: B must be whole"):
        op_shapes(96, None, [16], [8])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error where there is no GPU")
def test_asking_for_a_missing_gpu_is_a_clear_error(capsys):
    assert main(["bench", "--device", "cuda"]) == 2
    assert "--device cuda, but torch sees no CUDA GPU here" in capsys.readouterr().err


def test_unreadable_result_files_are_clear_errors(tmp_path, capsys):
    missing = tmp_path / "missing.json"
    not_json = tmp_path / "not.json"
    not_json.write_text("{oops")
    bad_row = tmp_path / "bad.json"
    doc = _result("GPU", "cuda", "2025-01-01T00:00:00+00:00", {"reference": 1.0, "sdpa": 1.0})
    del doc["rows"][1]["ms_p80"]
    bad_row.write_text(json.dumps(doc))
    for path, message in ((missing, "cannot read result file"), (not_json, "is not JSON"),
                          (bad_row, "rows[1] has no field 'ms_p80'")):
        assert main(["report", str(path), "--out", str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err
        assert str(path) in err and message in err


def test_lstm_case_checks_ours_against_pytorchs_lstm_then_times_it(tmp_path):
    out = tmp_path / "lstm.json"
    assert main(["bench", "--device", "cpu", "--quick", "--cases", "lstm", "--lstm-shapes", "3x9x5",
                 "--dtypes", "float32,bfloat16", "--out", str(out)]) == 0
    rows = {(r["backend"], r["dtype"]): r for r in schema.load(out)["rows"]}
    assert set(rows) == {(b, d) for b in ("reference", "cpu") for d in ("float32", "bfloat16")}
    for (backend, dtype), row in rows.items():
        assert row["status"] == "ok", row["status"]
        assert row["shape"] == {"B": 3, "T": 9, "H": 5, "input_size": 8, "layers": 2}
        assert row["flops"] == 3 * 8 * 3 * 9 * 5 * ((8 + 5) + (5 + 5))
        if backend == "cpu":
            assert row["parity_err"] is not None and row["parity_err"] < (1e-5 if dtype == "float32" else 1e-1)


def test_rows_timed_on_a_busy_machine_are_flagged_and_old_files_are_not(tmp_path, capsys):
    """A row records the 1-minute load as its group started and as it ended; where the load less the benchmark's
    own threads was above half the cores, the report marks its time. Files from before the load was recorded are
    unknown: no mark, no failure."""
    env = {"device_type": "cpu", "cores": 2, "torch_threads": 2}
    assert load.busy({"load_before": 2.5, "load_after": 3.5}, env) is True  # 1.5 of others' on 2 cores
    assert load.busy({"load_before": 2.5, "load_after": 2.9}, env) is False
    assert load.busy({"load_before": 0.1, "load_after": 0.2}, {**env, "device_type": "cuda"}) is False
    assert load.busy({}, env) is None and load.busy({"load_before": 9, "load_after": 9}, {}) is None

    doc = _result("AMD EPYC", "cpu", "2025-01-01T00:00:00+00:00", {"reference": 144.0, "sdpa": 2.0, "cpu": 0.28})
    doc["env"].update(cores=2, torch_threads=2)
    busy_row, quiet_row = doc["rows"][0], doc["rows"][2]
    busy_row.update(load_before=4.0, load_after=5.1)
    quiet_row.update(load_before=0.3, load_after=0.4)
    path = tmp_path / "loaded.json"
    schema.dump(doc, path)
    strict_load(path)
    assert main(["report", str(path), "--out", str(tmp_path / "report"), "--quiet"]) == 0
    md = (tmp_path / "report" / "report.md").read_text()
    assert "| float32 | 64 | 256 | 128 | 144§ | 2 | 0.28 |" in md
    assert f"§ {report.MARK_NOTES['§']}" in md

    old = _result("AMD EPYC", "cpu", "2025-01-01T00:00:00+00:00", {"reference": 144.0, "sdpa": 2.0, "cpu": 0.28})
    old_path = tmp_path / "old.json"
    schema.dump(old, old_path)
    assert main(["report", str(old_path), "--out", str(tmp_path / "old"), "--quiet"]) == 0
    assert "§" not in (tmp_path / "old" / "report.md").read_text()


def test_result_files_are_strict_json(tmp_path):
    """NaN or Infinity in a result (a figure that could not be measured) is written as null."""
    path = tmp_path / "r.json"
    schema.write_json({"ratio": float("nan"), "rows": [{"ms": float("inf")}, {"ms": 1.5}]}, path)
    assert strict_load(path) == {"ratio": None, "rows": [{"ms": None}, {"ms": 1.5}]}


def test_host_cost_tool_measures_the_real_triton_launch_path(tmp_path):
    # CI runs benchmarks/host_cost.py after the tests; its kernels must load before it sets TRITON_INTERPRET (or they
    # would be the interpreter's, which its stubbed launch cannot run).
    pytest.importorskip("triton", reason="benchmarks/host_cost.py times Triton's launch path: needs the triton extra")
    import os
    import subprocess
    import sys
    from pathlib import Path
    tool = Path(__file__).resolve().parents[1] / "benchmarks" / "host_cost.py"
    out = tmp_path / "host.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # the test session's own setting
    run = subprocess.run([sys.executable, str(tool), "--calls", "4", "--blocks", "2", "--json", str(out)],
                         capture_output=True, text=True, timeout=300, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    rows = strict_load(out)["rows"]
    assert {(r["op"], r["provider"]) for r in rows} >= {("attention_layernorm", "triton"), ("softmax_pool", "triton")}


def test_lstm_memory_tool_measures_both_backends(tmp_path):
    import subprocess
    import sys
    from pathlib import Path
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError as exc:
        pytest.skip(f"benchmarks/lstm_memory.py resets the peak through /proc/self/clear_refs, not writable here: {exc}")
    tool = Path(__file__).resolve().parents[1] / "benchmarks" / "lstm_memory.py"
    out = tmp_path / "memory.json"
    run = subprocess.run([sys.executable, str(tool), "--shapes", "2x40x16", "--json", str(out)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    rows = strict_load(out)["rows"]
    assert [(r["B"], r["T"], r["H"]) for r in rows] == [(2, 40, 16)]
    assert all(r["reference_mb"] >= 0 and r["cpu_mb"] >= 0 for r in rows)
