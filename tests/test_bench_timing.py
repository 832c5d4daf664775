"""The three timings of the benchmarks (lstm_attn.bench.timing): the CUDA-graph logic driven on a CPU through a
fake device, the fallback of a call that cannot be captured, and the real graph path on a GPU."""

import pytest
import torch

from lstm_attn.bench import group as group_module
from lstm_attn.bench import timing
from lstm_attn.bench.group import Candidate, Group, Runner, Work, run_group
from lstm_attn.bench.timing import Budget, Device, NotCapturable, measure_graph

BUDGET = Budget(warmup_ms=0.0, rep_ms=0.0, min_reps=6, max_reps=6)


class FakeDevice(Device):
    """A device whose clock advances only when a replay runs: set i costs i + 1 ms. Capturing runs the call once,
    as capture does, and records which set each replay ran."""

    def __init__(self, fail_capture: str | None = None):
        super().__init__(torch.device("cpu"))
        self.clock_ms = 0.0
        self.replayed: list[int] = []
        self.captured: list[int] = []
        self.fail_capture = fail_capture
        self.busy_ms = []

    def event(self):
        device = self

        class Event:
            def record(self):
                self.at = device.clock_ms
        return Event()

    def elapsed_ms(self, start, end) -> float:
        return end.at - start.at

    def busy_wait(self, ms: float) -> None:
        self.busy_ms.append(ms)

    def graph_pool(self):
        return "pool"

    def capture(self, call, pool):
        assert pool == "pool"
        if self.fail_capture:
            raise NotCapturable(self.fail_capture)
        call()
        index = len(self.captured)
        self.captured.append(index)

        def replay():
            self.replayed.append(index)
            self.clock_ms += index + 1
        return replay


def test_graph_replays_rotate_over_the_sets_and_events_time_each_replay():
    calls = []
    dev = FakeDevice()
    t = measure_graph(lambda i: calls.append(i), dev, n_sets=2, budget=BUDGET)
    # Warm-up runs every set eagerly, then one capture per set, one untimed round, six timed replays.
    assert dev.captured == [0, 1]
    assert dev.replayed == [0, 1] + [0, 1, 0, 1, 0, 1]
    assert t.reps == 6 and (t.p20, t.p50, t.p80) == (1.0, 1.5, 2.0)
    assert len(dev.busy_ms) == 1 and dev.busy_ms[0] > 0  # the host queues the replays behind a sleep
    assert calls[:2] == [0, 1]


def test_a_call_with_per_call_setup_is_not_capturable():
    with pytest.raises(NotCapturable, match="untimed set-up before each run"):
        measure_graph(lambda i: None, FakeDevice(), setup=lambda i: None, budget=BUDGET)


def test_capture_failure_is_reported():
    with pytest.raises(NotCapturable, match="RuntimeError: operation not permitted"):
        measure_graph(lambda i: None, FakeDevice("RuntimeError: operation not permitted"), budget=BUDGET)


def _group(timings):
    x = torch.ones(3)
    runner = lambda: Runner(run=lambda i: x * 2, outputs=lambda: {"out": x * 2})  # noqa: E731
    expected = lambda: ({"out": (x * 2).double()}, {"out": x * 2})  # noqa: E731
    return Group("case", "fwd", torch.float32, {"B": 1, "T": 3, "H": 1}, Work(3, 12), "ref", ("ref",),
                 [Candidate("ref", "peer", runner, checked=False), Candidate("ours", "ours", runner)], expected,
                 timings=timings)


def test_a_graph_row_that_cannot_be_captured_is_timed_eagerly_and_says_why(monkeypatch):
    def not_capturable(*args, **kwargs):
        raise NotCapturable("RuntimeError: capture failed")

    eager_calls = []
    real_eager = timing.measure_eager

    def counted_eager(*args, **kwargs):
        eager_calls.append(1)
        return real_eager(*args, **kwargs)

    monkeypatch.setitem(timing.MEASURE, "graph", not_capturable)
    monkeypatch.setitem(timing.MEASURE, "eager", counted_eager)
    monkeypatch.setattr(group_module, "measure_eager", counted_eager)
    rows = run_group(_group(("graph", "eager")), torch.device("cpu"), BUDGET,
                     {"copy_gbps": 1.0, "matmul_tflops": {}}, {"device": "cpu", "timestamp": "t", "version": "v"},
                     progress=lambda row: None)
    assert [(r["backend"], r["timing"], r["method"]) for r in rows] == [
        ("ref", "graph", "synchronised"), ("ref", "eager", "synchronised"),
        ("ours", "graph", "synchronised"), ("ours", "eager", "synchronised")]
    assert all(r["status"] == "ok" for r in rows)
    graph_rows = [r for r in rows if r["timing"] == "graph"]
    assert all("not capturable in a CUDA graph (RuntimeError: capture failed)" in r["detail"] for r in graph_rows)
    assert len(eager_calls) == 2  # one eager measurement per candidate serves both of its rows
    assert [r["ms_p50"] for r in rows[:2]] == [rows[0]["ms_p50"]] * 2


def test_host_rows_have_no_rates_and_speedups_compare_rows_of_one_timing():
    rows = run_group(_group(("eager", "host")), torch.device("cpu"), BUDGET,
                     {"copy_gbps": 1.0, "matmul_tflops": {"float32": 1.0}},
                     {"device": "cpu", "timestamp": "t", "version": "v"}, progress=lambda row: None)
    by = {(r["backend"], r["timing"]): r for r in rows}
    assert by[("ours", "host")]["tflops"] is None and by[("ours", "eager")]["tflops"] > 0
    for t in ("eager", "host"):
        assert by[("ours", t)]["speedup_vs_reference"] == pytest.approx(
            by[("ref", t)]["ms_p50"] / by[("ours", t)]["ms_p50"])


@pytest.mark.gpu
def test_graph_timing_on_a_gpu():
    a = torch.randn(2048, 2048, device="cuda")
    t = measure_graph(lambda i: a @ a, torch.device("cuda"), budget=Budget(rep_ms=20))
    assert 0 < t.p20 <= t.p50 <= t.p80 < 100
    with pytest.raises(NotCapturable):  # a host synchronization inside the call
        measure_graph(lambda i: (a @ a).sum().item(), torch.device("cuda"), budget=Budget(rep_ms=20))
    torch.cuda.synchronize()
    assert (a @ a).isfinite().all()  # the failed capture left the device usable
