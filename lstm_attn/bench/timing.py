"""Timing: warm-up, rotating input sets, per-call times, percentiles.

On GPU every call is bracketed by CUDA events and the L2 cache is flushed before it (outside the events),
as triton.testing.do_bench does; the input sets rotate as well, so a small case never runs on data left
in cache by the call before. On CPU the clock is time.perf_counter. `setup(i)` runs before call i outside
the timed region (zeroing gradients, for instance).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from lstm_attn.bench.env import cache_bytes


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


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(run: Callable[[int], object], device: torch.device, *, n_sets: int = 1,
            setup: Callable[[int], None] | None = None, budget: Budget = Budget()) -> Timing:
    """Time run(i) for i cycling over the n_sets input sets; the first calls (compile, autotune) are warm-up."""
    setup = setup or (lambda i: None)
    # Writing twice the L2's size evicts whatever the previous call left there.
    flush = torch.empty(2 * cache_bytes(device), dtype=torch.uint8, device=device) if device.type == "cuda" else None

    # Warm-up: every input set at least once, then until warmup_ms has passed; its rate sizes the timed loop.
    calls, start = 0, time.perf_counter()
    while calls < max(n_sets, 2) or (time.perf_counter() - start) * 1e3 < budget.warmup_ms:
        setup(calls % n_sets)
        run(calls % n_sets)
        sync(device)
        calls += 1
        if calls == 1:  # the first call may compile: leave it out of the estimate
            start = time.perf_counter()
    per_call_ms = (time.perf_counter() - start) * 1e3 / (calls - 1)
    reps = int(min(max(budget.rep_ms / max(per_call_ms, 1e-3), budget.min_reps), budget.max_reps))

    times = []
    if device.type == "cuda":
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(reps)]
        for r, (begin, end) in enumerate(events):
            setup(r % n_sets)
            flush.zero_()
            begin.record()
            run(r % n_sets)
            end.record()
        torch.cuda.synchronize(device)
        times = [begin.elapsed_time(end) for begin, end in events]
    else:
        for r in range(reps):
            setup(r % n_sets)
            t0 = time.perf_counter()
            run(r % n_sets)
            times.append((time.perf_counter() - t0) * 1e3)
    p20, p50, p80 = np.percentile(times, [20, 50, 80]).tolist()
    return Timing(p20, p50, p80, reps)
