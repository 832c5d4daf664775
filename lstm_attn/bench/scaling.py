"""The model_scaling case: how a training step's time and peak memory grow with the sequence length T, for the
seed's LSTMWithAttention and ours.

The seed builds (B, T, T) attention scores in its forward and keeps them for its backward; ours computes the
one row its head reads (the exact last-step path), so its cost grows as T, the seed's as T^2. Each point is
one provider at one T: a training step (forward, MSE loss, backward, Adam step) at fixed B, input size, H and
layers, float32, dropout 0.
  1. Parity first: ours against the seed computed in float64, output and every gradient, on the first batch rows
     (as many as keep the seed's float64 scores within PARITY_BYTES; none where one row does not fit, and the
     row says so). The seed's own rows are the reference and are not checked.
  2. One step, timed: past --time-cap, the point is marked "skipped: time cap" and larger T are not tried for
     that provider; running out of memory marks it "skipped: out of memory". Such rows stay in the file.
  3. Then the median of 3 to 25 synchronised steps (as many as fit in a few seconds), and their peak memory: on
     a GPU torch.cuda.max_memory_allocated after reset_peak_memory_stats; on a CPU the process's peak resident set
     (VmHWM), reset through /proc/self/clear_refs after set-up, with each point in a process of its own so that
     no earlier point's allocations count. Each row also keeps base_mb, what was held just before the steps (on a
     CPU the interpreter and torch's libraries, some 500 MB, the same for every T; the model and its inputs): the
     step's own memory, peak_mb - base_mb, is what grows with T, and the report fits its exponent on that.
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

import lstm_attn
from lstm_attn import reference
from lstm_attn.bench import model_step, parity
from lstm_attn.bench.options import SCALING_BATCH, SCALING_CASE, SCALING_HIDDEN, SCALING_INPUT_SIZE, SCALING_LAYERS
from lstm_attn.bench.timing import sync

CASE = SCALING_CASE
PASS = "step"
SEED = "seed"
INPUT_SIZE, HIDDEN, LAYERS, BATCH = SCALING_INPUT_SIZE, SCALING_HIDDEN, SCALING_LAYERS, SCALING_BATCH
PARITY_BYTES = 4 * 2**30  # the seed's float64 scores and their gradient, for the rows checked
# Timed steps per point: at least MIN_STEPS, then more while they fit in STEP_SECONDS (a cheap point's median of
# three would move by half between runs on a busy 2-core machine), at most MAX_STEPS.
MIN_STEPS, MAX_STEPS, STEP_SECONDS = 3, 25, 3.0


def providers(device: torch.device) -> list[str]:
    """The seed, then ours with every backend that runs on the device (named ours-<backend>)."""
    statuses = lstm_attn.available_backends(device)
    names = model_step.OUR_BACKENDS[device.type]
    return [SEED, *(f"ours-{b}" for b in names if statuses[b].available)]


def lengths(start: int, stop: int) -> list[int]:
    """T doubling from start up to stop."""
    if start < 1 or stop < start:
        raise ValueError(f"the sequence lengths must run from a positive start to a stop at least as large, got "
                         f"{start}..{stop}")
    Ts = [start]
    while Ts[-1] * 2 <= stop:
        Ts.append(Ts[-1] * 2)
    return Ts


def _models(provider: str, device: torch.device, H: int):
    torch.manual_seed(0)
    seed = reference.LSTMWithAttention(INPUT_SIZE, H, LAYERS, 0.0).to(device)
    if provider == SEED:
        return seed, seed
    from lstm_attn.modules import LSTMWithAttention  # Lightning: only for the points that need it

    ours = LSTMWithAttention(INPUT_SIZE, H, LAYERS, 0.0, backend=provider.removeprefix("ours-")).to(device)
    ours.load_state_dict(seed.state_dict(), strict=True)
    return ours, seed


def _parity(model, seed, x, y, H: int) -> tuple[float | None, str | None, str | None]:
    """(error, failure, note) of ours against the seed in float64 on the first rows that fit PARITY_BYTES."""
    T = x.shape[1]
    rows = min(x.shape[0], PARITY_BYTES // (3 * 8 * T * T))  # scores, probabilities and their gradient
    if rows == 0:
        return None, None, f"parity not checked: the seed's float64 scores at T={T} need more than " \
                           f"{PARITY_BYTES >> 20} MiB for one row"
    note = f"parity on the first {rows} of {x.shape[0]} rows" if rows < x.shape[0] else None
    x, y = x[:rows], y[:rows]
    got = model_step.step_outputs(model, x, y, autocast=False)
    truth = model_step.step_outputs(copy.deepcopy(seed).double(), x.double(), y.double(), autocast=False)
    same = model_step.step_outputs(seed, x, y, autocast=False)
    result = parity.check(got, truth, same, rule=model_step.relative_to_seed(1e-5))
    model.zero_grad(set_to_none=True)
    return result.err, result.failure, note


def _reset_peak(device: torch.device) -> bool:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return True
    # The cpu backend's LSTM keeps its workspaces between calls; the parity check's call filled that cache, which the
    # step's own memory must count, so it goes back first.
    lstm_attn.empty_cache()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand freed set-up memory back before the high-water mark resets
    except OSError:
        pass
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _resident_mb(device: torch.device) -> float:
    """What is held now: torch's allocations on a GPU, the resident set (VmRSS) on a CPU."""
    if device.type == "cuda":
        return torch.cuda.memory_allocated(device) / 2**20
    return _status_mb("VmRSS:")


def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def _peak_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return _status_mb("VmHWM:")


def point(provider: str, T: int, device: torch.device, *, H: int = HIDDEN, B: int = BATCH,
          time_cap: float = 60.0) -> dict:
    """One provider at one T: the fields of its row (status, timing, peak_mb, parity_err, detail)."""
    model, seed = _models(provider, device, H)
    g = torch.Generator(device).manual_seed(1)
    x = torch.randn(B, T, INPUT_SIZE, generator=g, device=device)
    y = torch.randn(B, 1, generator=g, device=device)
    found = {"parity_err": None, "detail": None, "peak_mb": None, "base_mb": None}
    try:
        if model is not seed:
            err, failure, note = _parity(model, seed, x, y, H)
            found.update(parity_err=err, detail=note)
            if failure:
                return {**found, "status": f"refused: {failure}"}
        del seed
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

        def step():
            optimizer.zero_grad(set_to_none=True)
            model.loss_fn(model(x), y).backward()
            optimizer.step()
            sync(device)

        exact_peak = _reset_peak(device)
        base = _resident_mb(device) if exact_peak else None
        if not exact_peak:
            found["detail"] = "; ".join(filter(None, [found["detail"], "peak since the process started "
                                                                       "(/proc/self/clear_refs not writable)"]))
        start = time.perf_counter()
        step()
        first = time.perf_counter() - start
        if first > time_cap:
            return {**found, "status": f"skipped: time cap: one step took {first:.0f} s > {time_cap:.0f} s"}
        times = []
        while len(times) < MIN_STEPS or (len(times) < MAX_STEPS and sum(times) < STEP_SECONDS * 1e3):
            start = time.perf_counter()
            step()
            times.append((time.perf_counter() - start) * 1e3)
        found["peak_mb"] = _peak_mb(device)
        found["base_mb"] = base
    except torch.OutOfMemoryError as exc:
        return {**found, "status": f"skipped: out of memory ({str(exc).splitlines()[0][:120]})"}
    except MemoryError:
        return {**found, "status": "skipped: out of memory (the host's allocator refused)"}
    p20, p50, p80 = np.percentile(times, [20, 50, 80]).tolist()
    return {**found, "status": "ok", "ms_p20": p20, "ms_p50": p50, "ms_p80": p80, "reps": len(times)}


def point_in_subprocess(provider: str, T: int, *, H: int, B: int, time_cap: float) -> dict:
    """point() in a fresh Python process (the CPU's peak memory must count this point alone)."""
    spec = json.dumps({"provider": provider, "T": T, "H": H, "B": B, "time_cap": time_cap})
    done = subprocess.run([sys.executable, "-m", "lstm_attn.bench.scaling", spec], capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        # Killed by the kernel's OOM killer, or a crash: the row says which.
        killed = done.returncode in (-9, 137)
        why = "out of memory (the process was killed)" if killed else \
            f"error: the point's process exited with {done.returncode}: {done.stderr.strip()[-300:]}"
        return {"status": f"skipped: {why}" if killed else why, "parity_err": None, "detail": None, "peak_mb": None,
                "base_mb": None}
    return json.loads(lines[-1])


def scaling_rows(device: torch.device, Ts: list[int], *, H: int = HIDDEN, B: int = BATCH, time_cap: float = 60.0,
                 names: list[str] | None = None, progress=lambda row: None, stamp: dict) -> list[dict]:
    """Every provider over the lengths, smallest first; a provider stops after its first point that did not fit
    (memory or time), whose row stays."""
    rows = []
    for name in names or providers(device):
        for T in Ts:
            if device.type == "cpu":
                found = point_in_subprocess(name, T, H=H, B=B, time_cap=time_cap)
            else:
                found = point(name, T, device, H=H, B=B, time_cap=time_cap)
                torch.cuda.empty_cache()
            row = _row(name, T, H, B, found, stamp)
            rows.append(row)
            progress(row)
            if row["status"] != "ok" and not row["status"].startswith("refused"):
                break
    _speedups(rows)
    return rows


def _row(name: str, T: int, H: int, B: int, found: dict, stamp: dict) -> dict:
    work = model_step.model_work(PASS, B, T, INPUT_SIZE, H, LAYERS, 4)
    row = {"case": CASE, "pass": PASS, "backend": name, "kind": "peer" if name == SEED else "ours",
           "dtype": "float32", "shape": {"B": B, "T": T, "H": H, "input_size": INPUT_SIZE, "layers": LAYERS},
           "tokens": B * T, "status": found["status"], "timing": "eager", "method": None, "detail": found["detail"],
           "metric": "time", "unit": "ms", "ms_p20": None, "ms_p50": None, "ms_p80": None, "reps": None,
           "parity_err": found["parity_err"], "speedup_vs_reference": None, "best_peer": None,
           "speedup_vs_best_peer": None, "flops": work.flops, "bytes": work.bytes, "tflops": None, "gbps": None,
           "tflops_fraction": None, "gbps_fraction": None, "peak_mb": found["peak_mb"],
           "base_mb": found.get("base_mb"), **stamp}
    if found["status"] == "ok":
        row.update({k: found[k] for k in ("ms_p20", "ms_p50", "ms_p80", "reps")}, method="synchronised")
        row["tflops"] = work.flops / (row["ms_p50"] * 1e-3) / 1e12
        row["gbps"] = work.bytes / (row["ms_p50"] * 1e-3) / 1e9
    return row


def _speedups(rows: list[dict]) -> None:
    seed = {r["shape"]["T"]: r["ms_p50"] for r in rows if r["backend"] == SEED and r["status"] == "ok"}
    for r in rows:
        if r["status"] == "ok" and r["shape"]["T"] in seed:
            r["speedup_vs_reference"] = r["speedup_vs_best_peer"] = seed[r["shape"]["T"]] / r["ms_p50"]
            r["best_peer"] = SEED


def step_mb(row: dict) -> float | None:
    """The memory a row's training step added to what was held before it (peak_mb - base_mb), where known."""
    peak, base = row.get("peak_mb"), row.get("base_mb")
    return None if peak is None or base is None else max(peak - base, 0.0)


def slope(points: list[tuple[float, float]]) -> float | None:
    """The exponent k of y ~ x^k fitted on a log-log scale over the points (None for fewer than two)."""
    if len(points) < 2:
        return None
    x, y = np.log([p[0] for p in points]), np.log([p[1] for p in points])
    return float(np.polyfit(x, y, 1)[0])


def main(argv: list[str] | None = None) -> int:
    """`python -m lstm_attn.bench.scaling SPEC`: one CPU point, its fields printed as one JSON line."""
    parser = argparse.ArgumentParser(description="one point of the model_scaling case (used by lstm-attn bench)")
    parser.add_argument("spec", help='JSON: {"provider", "T", "H", "B", "time_cap"}')
    spec = json.loads(parser.parse_args(argv).spec)
    found = point(spec["provider"], spec["T"], torch.device("cpu"), H=spec["H"], B=spec["B"],
                  time_cap=spec["time_cap"])
    print(json.dumps(found), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
