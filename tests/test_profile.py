"""`lstm-attn profile`: the host/device split and the heaviest operators, on CPU (the GPU run records kernels)."""

import json

import pytest
import torch

from lstm_attn.bench import profile
from lstm_attn.cli import main
from _strict_json import strict_load

TINY = ["profile", "--device", "cpu", "--tokens", "24", "--T", "8,12", "--H", "8", "--iters", "3"]


pytestmark = pytest.mark.usefixtures("one_thread")


def test_profile_splits_each_call_and_names_our_operators(tmp_path, capsys):
    out = tmp_path / "profile.json"
    assert main([*TINY, "--backends", "reference,cpu,triton", "--out", str(out)]) == 0
    doc = strict_load(out)
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


class _Event:
    def __init__(self, name, device_type, us):
        self.name, self.device_type, self.self_cpu_time_total = name, device_type, us
        self.time_range = type("Interval", (), {"elapsed_us": lambda _: us})()


class _Profile:
    def __init__(self, events):
        self._events = events

    def events(self):
        return self._events


def test_gpu_kernel_times_come_from_device_events_only():
    # The GPU branch of the aggregation, fed the events torch.profiler gives: CPU-side launch calls carry no
    # device time; kernels and memsets do.
    from torch.autograd import DeviceType
    cuda = torch.device("cuda")
    events = [_Event("cudaLaunchKernel", DeviceType.CPU, 50.0),
              *(_Event("_attention_bwd_dkdv_kernel", DeviceType.CUDA, 300.0) for _ in range(2)),
              *(_Event("_attention_layernorm_fwd_kernel", DeviceType.CUDA, 100.0) for _ in range(2)),
              _Event("Memset (Device)", DeviceType.CUDA, 4.0)]
    device_ms, kernels = profile._kernels(_Profile(events), cuda, iters=2)
    assert device_ms == pytest.approx((600 + 200 + 4) / 1e3 / 2)
    assert [k["name"] for k in kernels] == ["_attention_bwd_dkdv_kernel", "_attention_layernorm_fwd_kernel",
                                            "Memset (Device)"]
    assert kernels[0] == {"name": "_attention_bwd_dkdv_kernel", "ms": pytest.approx(0.3), "calls": 1.0}
    assert kernels[2]["calls"] == 0.5
    # Without CUPTI the profile holds CPU events only: the device time is unknown, not zero.
    assert profile._kernels(_Profile(events[:1]), cuda, iters=2) == (None, [])
