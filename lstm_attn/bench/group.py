"""One group: a (case, pass, dtype, shape) and the candidates timed side by side on it.

run_group checks each candidate against the reference, times the ones that pass in each of the group's timings
(graph, eager, host: see timing.py), and turns the lot into schema rows, one per candidate and timing, with
speedups (against the other rows of the same timing), rates and fractions of the device's ceilings.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Callable, ContextManager

import torch

from lstm_attn.bench import parity
from lstm_attn.bench.timing import MEASURE, Budget, NotCapturable, measure_eager

# How each timing slot was filled: the method a row's time comes from.
METHODS = {"graph": "cuda-graph", "eager": "synchronised", "host": "host-issue"}

Outputs = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Work:
    """What one call must do at least: FLOPs and bytes moved (see the models in cases.py and model_step.py)."""
    flops: int
    bytes: int


@dataclass
class Runner:
    run: Callable[[int], object]  # the timed call on input set i
    outputs: Callable[[], Outputs]  # what parity compares, computed on input set 0
    setup: Callable[[int], None] | None = None  # untimed, before each call


@dataclass
class Candidate:
    backend: str
    kind: str  # "ours" or "peer"
    build: Callable[[], Runner]
    skip_reason: str | None = None  # set when it cannot run here; the row says why
    checked: bool = True  # parity before timing; False only for the reference itself
    describe: Callable[[], str | None] | None = None  # a note for its rows (which SDPA kernel ran, say)


@dataclass
class Group:
    case: str
    pass_: str
    dtype: torch.dtype
    shape: dict[str, int]
    work: Work
    reference: str  # the candidate the speedups are against
    peers: tuple[str, ...]  # "best peer" is the fastest of these
    candidates: list[Candidate]
    expected: Callable[[], tuple[Outputs, Outputs]]  # (float64 truth, the reference run in dtype), on set 0
    n_sets: int = 1
    rule: parity.Rule = parity.parity_failure
    dtype_label: str = ""  # defaults to the dtype's name
    timings: tuple[str, ...] = ("eager",)  # one row per candidate and timing
    # Entered around the whole group: the precision flags its dtype label stands for (TF32 on or off).
    context: Callable[[], ContextManager] = field(default=contextlib.nullcontext)

    def __post_init__(self):
        self.dtype_label = self.dtype_label or str(self.dtype).removeprefix("torch.")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


def run_group(group: Group, device: torch.device, budget: Budget, ceilings: dict, stamp: dict,
              progress: Callable[[dict], None]) -> list[dict]:
    """Rows for every candidate and timing of the group: timed if it matches the reference, else the reason."""
    with group.context():
        return _run_group(group, device, budget, ceilings, stamp, progress)


def _run_group(group: Group, device: torch.device, budget: Budget, ceilings: dict, stamp: dict,
               progress: Callable[[dict], None]) -> list[dict]:
    expected = None
    rows = []
    for cand in group.candidates:
        base = {
            "case": group.case, "pass": group.pass_, "backend": cand.backend, "kind": cand.kind,
            "dtype": group.dtype_label, "shape": dict(group.shape), "tokens": group.shape["B"] * group.shape["T"],
            "status": "ok", "timing": None, "method": None, "detail": None, "metric": "time", "unit": "ms",
            "ms_p20": None, "ms_p50": None, "ms_p80": None, "reps": None, "parity_err": None,
            "speedup_vs_reference": None, "best_peer": None, "speedup_vs_best_peer": None,
            "flops": group.work.flops, "bytes": group.work.bytes,
            "tflops": None, "gbps": None, "tflops_fraction": None, "gbps_fraction": None, "peak_mb": None, **stamp,
        }
        if cand.skip_reason:
            found = [{"status": f"skipped: {cand.skip_reason}"}] * len(group.timings)
        else:
            try:
                if cand.checked and expected is None:
                    expected = group.expected()
                found = _measure(cand, group, expected, device, budget)
            # A candidate that fails on one shape (no kernel for it, out of memory, a compiler error) becomes an
            # error row; the sweep goes on to the next.
            except Exception as exc:  # noqa: BLE001
                found = [{"status": f"error: {_first_line(exc)}"}] * len(group.timings)
        for timing, update in zip(group.timings, found):
            row = {**base, "timing": timing, **update}
            if row["status"] == "ok" and timing != "host":  # issuing a call moves no FLOPs
                _add_rates(row, ceilings)
            rows.append(row)
            progress(row)
    for timing in group.timings:
        _add_speedups([r for r in rows if r["timing"] == timing], group)
    return rows


def _measure(cand: Candidate, group: Group, expected, device: torch.device, budget: Budget) -> list[dict]:
    """Build, check, then time in each of the group's timings: one dict of row fields per timing. A function
    of its own so the candidate's tensors and graphs are freed on return."""
    runner = cand.build()
    found = {"detail": cand.describe() if cand.describe else None}
    if cand.checked:
        result = parity.check(runner.outputs(), *expected, rule=group.rule)
        # JSON has no NaN: an error that cannot be measured (NaN in the result) is recorded as null.
        found["parity_err"] = result.err if math.isfinite(result.err) else None
        if result.failure:
            return [{**found, "status": f"refused: {result.failure}"}] * len(group.timings)
    timed = {}  # method -> Timing: an eager fallback for the graph slot serves the eager slot too
    updates = []
    for timing in group.timings:
        method, note = METHODS[timing], None
        kwargs = dict(n_sets=group.n_sets, setup=runner.setup, budget=budget)
        if method not in timed:
            try:
                timed[method] = MEASURE[timing](runner.run, device, **kwargs)
            except NotCapturable as exc:
                method = METHODS["eager"]
                note = f"not capturable in a CUDA graph ({exc}): timed eagerly, synchronised per call"
                if method not in timed:
                    timed[method] = measure_eager(runner.run, device, **kwargs)
        t = timed[method]
        detail = "; ".join(d for d in (found["detail"], note) if d) or None
        updates.append({**found, "detail": detail, "method": method, "ms_p20": t.p20, "ms_p50": t.p50,
                        "ms_p80": t.p80, "reps": t.reps})
    return updates


def _add_rates(row: dict, ceilings: dict) -> None:
    seconds = row["ms_p50"] * 1e-3
    row["tflops"] = row["flops"] / seconds / 1e12
    row["gbps"] = row["bytes"] / seconds / 1e9
    matmul = ceilings["matmul_tflops"].get(row["dtype"].removesuffix("-autocast"))
    row["tflops_fraction"] = row["tflops"] / matmul if matmul else None
    row["gbps_fraction"] = row["gbps"] / ceilings["copy_gbps"]


def _add_speedups(rows: list[dict], group: Group) -> None:
    timed = {r["backend"]: r["ms_p50"] for r in rows if r["status"] == "ok"}
    ref = timed.get(group.reference)
    peers = {name: ms for name, ms in timed.items() if name in group.peers}
    best = min(peers, key=peers.get) if peers else None
    for r in rows:
        if r["status"] != "ok":
            continue
        if ref is not None:
            r["speedup_vs_reference"] = ref / r["ms_p50"]
        if best is not None:
            r["best_peer"] = best
            r["speedup_vs_best_peer"] = peers[best] / r["ms_p50"]
