"""Timing: the three measurements a row can hold, each a question of its own.

  graph  device time. One call is captured in a CUDA graph per input set after warm-up, and the replays are
         queued behind a short sleep kernel so that the host is far ahead of the device: the events between
         replays then time the device alone, with no launch gaps. Input sets rotate (together they exceed twice
         the L2), so no replay reads what the one before left in cache. A call that cannot be captured raises
         NotCapturable, and the caller times it eagerly instead, marked so.
  eager  wall time of one call followed by a synchronize, the device idle at its start and the L2 flushed
         before it (outside the clock): what a training loop without graphs waits for. On a CPU this is
         time.perf_counter around the call.
  host   the time the host takes to issue one call, started on an idle device and stopped when the call
         returns, before any synchronize: Python, the dispatcher, autograd and the launchers.
Every measurement warms up first (compilation, autotuning, first allocations), then takes enough calls to fill
the budget, and reports the 20th, 50th and 80th percentiles. `setup(i)` runs before call i, outside the clock.

The CUDA parts sit behind Device, so that tests drive the graph logic on a CPU with a fake one.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from lstm_attn.bench.env import cache_bytes

TIMINGS = ("graph", "eager", "host")


@dataclass(frozen=True)
class Timing:
    p20: float
    p50: float
    p80: float
    reps: int


@dataclass(frozen=True)
class Budget:
    """How long to spend on one measurement: warm-up, then enough calls to fill rep_ms, within the bounds."""
    warmup_ms: float = 25.0
    rep_ms: float = 100.0
    min_reps: int = 5
    max_reps: int = 1000


class NotCapturable(RuntimeError):
    """The call cannot be captured in (or replayed from) a CUDA graph; the message says why."""


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Device:
    """What the timing needs from a device. The CUDA one is real; a test passes a fake."""

    def __init__(self, device: torch.device):
        self.device = device
        self.is_cuda = device.type == "cuda"
        # Writing twice the L2's size evicts whatever the previous call left there.
        self._flush = torch.empty(2 * cache_bytes(device), dtype=torch.uint8, device=device) if self.is_cuda else None

    def sync(self) -> None:
        sync(self.device)

    def flush_cache(self) -> None:
        if self._flush is not None:
            self._flush.zero_()

    def event(self):
        return torch.cuda.Event(enable_timing=True)

    def elapsed_ms(self, start, end) -> float:
        return start.elapsed_time(end)

    def busy_wait(self, ms: float) -> None:
        """Keep the device busy for about `ms` (a spinning kernel), so that the host can queue work behind it."""
        torch.cuda._sleep(max(1, int(ms * self._cycles_per_ms())))

    def _cycles_per_ms(self) -> float:
        # The spin counts clock cycles; its rate is measured once rather than read from a datasheet clock.
        if not hasattr(self, "_rate"):
            cycles = 1_000_000
            start, end = self.event(), self.event()
            torch.cuda._sleep(cycles)  # the first launch loads the kernel
            start.record()
            torch.cuda._sleep(cycles)
            end.record()
            self.sync()
            self._rate = cycles / max(self.elapsed_ms(start, end), 1e-3)
        return self._rate

    def capture(self, call: Callable[[], object], pool) -> Callable[[], None]:
        """A graph of call(), its replay. Warm-up on a side stream first, as torch.cuda.graphs requires."""
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        try:
            with torch.cuda.stream(stream):
                call()
            torch.cuda.current_stream(self.device).wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                call()
        except Exception as exc:  # any failure to capture, from the CUDA runtime or from Python
            text = str(exc).strip().splitlines()
            raise NotCapturable(f"{type(exc).__name__}: {text[0] if text else ''}") from exc
        return graph.replay

    def graph_pool(self):
        return torch.cuda.graph_pool_handle()


def _warm_up(run: Callable[[int], object], dev: Device, n_sets: int, setup: Callable[[int], None],
             budget: Budget) -> int:
    """Every input set at least once, then until warmup_ms has passed; its rate sizes the timed loop."""
    calls, start = 0, time.perf_counter()
    while calls < max(n_sets, 2) or (time.perf_counter() - start) * 1e3 < budget.warmup_ms:
        setup(calls % n_sets)
        run(calls % n_sets)
        dev.sync()
        calls += 1
        if calls == 1:  # the first call may compile: leave it out of the estimate
            start = time.perf_counter()
    return _reps(budget, (time.perf_counter() - start) * 1e3 / (calls - 1))


def _reps(budget: Budget, per_call_ms: float) -> int:
    """Enough calls at this rate to fill rep_ms, within the budget's bounds."""
    return int(min(max(budget.rep_ms / max(per_call_ms, 1e-3), budget.min_reps), budget.max_reps))


def _timing(times: list[float]) -> Timing:
    p20, p50, p80 = np.percentile(times, [20, 50, 80]).tolist()
    return Timing(p20, p50, p80, len(times))


def _per_call(run: Callable[[int], object], device: torch.device | Device, n_sets: int,
              setup: Callable[[int], None] | None, budget: Budget, *, until_done: bool) -> Timing:
    """run(i) timed call by call from an idle device: until the device is done (eager: the cache flushed first,
    outside the clock) or until the call returns (host)."""
    dev = device if isinstance(device, Device) else Device(device)
    setup = setup or (lambda i: None)
    reps = _warm_up(run, dev, n_sets, setup, budget)
    times = []
    for r in range(reps):
        setup(r % n_sets)
        if until_done:
            dev.flush_cache()
        dev.sync()
        t0 = time.perf_counter()
        run(r % n_sets)
        if until_done:
            dev.sync()
        times.append((time.perf_counter() - t0) * 1e3)
        dev.sync()  # a host measurement lets the device finish outside the clock
    return _timing(times)


def measure_eager(run: Callable[[int], object], device: torch.device | Device, *, n_sets: int = 1,
                  setup: Callable[[int], None] | None = None, budget: Budget = Budget()) -> Timing:
    """Wall time of run(i), synchronised, the cache flushed before each call; i cycles over the input sets."""
    return _per_call(run, device, n_sets, setup, budget, until_done=True)


def measure_host(run: Callable[[int], object], device: torch.device | Device, *, n_sets: int = 1,
                 setup: Callable[[int], None] | None = None, budget: Budget = Budget()) -> Timing:
    """The host's time to issue run(i) on an idle device, before any synchronize."""
    return _per_call(run, device, n_sets, setup, budget, until_done=False)


# The sleep ahead of the replays covers the host's time to queue them: about this much per replay, and capped.
_HOST_MS_PER_REPLAY = 0.05
_MAX_SLEEP_MS = 200.0


def measure_graph(run: Callable[[int], object], device: torch.device | Device, *, n_sets: int = 1,
                  setup: Callable[[int], None] | None = None, budget: Budget = Budget()) -> Timing:
    """Device time of run(i) replayed from a CUDA graph per input set. Raises NotCapturable when it cannot be."""
    if setup is not None:
        raise NotCapturable("the call needs untimed set-up before each run (the backward alone after its "
                            "forward, zeroed gradients), which one graph cannot replay")
    dev = device if isinstance(device, Device) else Device(device)
    _warm_up(run, dev, n_sets, lambda i: None, budget)
    pool = dev.graph_pool()  # one pool: the graphs are replayed one after another, never at once
    replays = [dev.capture(lambda i=i: run(i), pool) for i in range(n_sets)]
    dev.sync()
    # The replays' own rate sizes the timed loop.
    start = time.perf_counter()
    for replay in replays:
        replay()
    dev.sync()
    reps = _reps(budget, (time.perf_counter() - start) * 1e3 / n_sets)

    events = [dev.event() for _ in range(reps + 1)]
    dev.busy_wait(min(_MAX_SLEEP_MS, reps * _HOST_MS_PER_REPLAY))
    events[0].record()
    for r in range(reps):
        replays[r % n_sets]()
        events[r + 1].record()
    dev.sync()
    return _timing([dev.elapsed_ms(a, b) for a, b in zip(events, events[1:])])


MEASURE = {"graph": measure_graph, "eager": measure_eager, "host": measure_host}
