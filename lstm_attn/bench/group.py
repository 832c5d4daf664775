"""One group: a (case, pass, dtype, shape) and the candidates timed side by side on it.

run_group checks each candidate against the reference, times the ones that pass, and turns the lot into
schema rows with speedups, rates and fractions of the device's ceilings.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from lstm_attn.bench import parity
from lstm_attn.bench.timing import Budget, measure

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

    def __post_init__(self):
        self.dtype_label = self.dtype_label or str(self.dtype).removeprefix("torch.")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


def run_group(group: Group, device: torch.device, budget: Budget, ceilings: dict, stamp: dict,
              progress: Callable[[dict], None]) -> list[dict]:
    """Rows for every candidate of the group: timed if it matches the reference, else the reason it is not."""
    expected = None
    rows = []
    for cand in group.candidates:
        row = {
            "case": group.case, "pass": group.pass_, "backend": cand.backend, "kind": cand.kind,
            "dtype": group.dtype_label, "shape": dict(group.shape), "tokens": group.shape["B"] * group.shape["T"],
            "status": "ok", "metric": "time", "unit": "ms", "ms_p20": None, "ms_p50": None, "ms_p80": None,
            "reps": None, "parity_err": None, "speedup_vs_reference": None,
            "best_peer": None, "speedup_vs_best_peer": None, "flops": group.work.flops, "bytes": group.work.bytes,
            "tflops": None, "gbps": None, "tflops_fraction": None, "gbps_fraction": None, **stamp,
        }
        if cand.skip_reason:
            row["status"] = f"skipped: {cand.skip_reason}"
        else:
            try:
                if cand.checked and expected is None:
                    expected = group.expected()
                row.update(_measure(cand, group, expected, device, budget))
            # A candidate that fails on one shape (no kernel for it, out of memory, a compiler error) becomes an
            # error row; the sweep goes on to the next.
            except Exception as exc:  # noqa: BLE001
                row["status"] = f"error: {_first_line(exc)}"
            if row["status"] == "ok":
                _add_rates(row, ceilings)
        rows.append(row)
        progress(row)
    _add_speedups(rows, group)
    return rows


def _measure(cand: Candidate, group: Group, expected, device: torch.device, budget: Budget) -> dict:
    """Build, check, time. A function of its own so the candidate's tensors and graphs are freed on return."""
    runner = cand.build()
    found = {}
    if cand.checked:
        result = parity.check(runner.outputs(), *expected, rule=group.rule)
        # JSON has no NaN: an error that cannot be measured (NaN in the result) is recorded as null.
        found["parity_err"] = result.err if math.isfinite(result.err) else None
        if result.failure:
            return {**found, "status": f"refused: {result.failure}"}
    t = measure(runner.run, device, n_sets=group.n_sets, setup=runner.setup, budget=budget)
    return {**found, "ms_p20": t.p20, "ms_p50": t.p50, "ms_p80": t.p80, "reps": t.reps}


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
