"""`lstm-attn report`: every result file of a folder (sweeps, model runs, profiles) into one markdown report and
PNG plots.

The markdown keeps apart the three questions a row can answer (lstm_attn.bench.timing), each table headed by the
run it comes from (device, date, commit):
  Device time       CUDA-graph replay: how fast the kernels are
  Eager wall time   one call and a synchronize: what a training loop without graphs waits for
  Host cost         the time to issue one call: what bounds small shapes
then the goals, where each profiled call's time goes, and the rows that were not timed. Where several files hold
the same row (device, case, pass, backend, dtype, shape, timing), the latest run wins. Plots, one pair per device:
speedup against the reference and TFLOP/s against T, a panel for each H that has rows, from the device-time
rows (the eager ones on a device that has none).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from lstm_attn.bench import load, schema
from lstm_attn.bench.tables import fmt_ms, markdown_table
from lstm_attn.extras import require

PROFILE_SCHEMA = "lstm_attn.profile/1"
SECTIONS = {  # timing -> (heading, the method the timing asks for)
    "graph": ("Device time (CUDA-graph replay)", "cuda-graph"),
    "eager": ("Eager wall time (one call, synchronised)", "synchronised"),
    "host": ("Host cost (time to issue one call on an idle device)", "host-issue"),
}
MARKS = {"synchronised": "†", "unsynchronised-events": "‡"}
BUSY_MARK = "§"
MARK_NOTES = {
    "†": "not capturable in a CUDA graph (the row's detail says why): synchronised eager time instead",
    "‡": "schema 1: CUDA events recorded without a synchronize, so the host's issue time when it was the slower",
    BUSY_MARK: "timed while other processes kept the machine busy (lstm_attn.bench.load: the 1-minute load less the "
               "benchmark's own threads above half the cores): likely slower than on a quiet machine",
}
PLOTTED = {"attention_layernorm": "fwd+bwd"}  # the case and pass the plots show
SCALING = "model_scaling"  # rows with their own section and plot: time and peak memory against T


@dataclass(frozen=True)
class Goal:
    """A performance goal of the project, checked on every row it applies to."""
    name: str
    applies: Callable[[dict, dict], bool]  # (row, its run's env)
    versus: str  # "reference" or "best peer"
    target: float


def _op(row: dict, env: dict, device_type: str, timing: str, backends: tuple[str, ...]) -> bool:
    return (env["device_type"] == device_type and row["case"] == "attention_layernorm" and row["pass"] == "fwd+bwd"
            and row["timing"] == timing and row["backend"] in backends)


_SIXTEEN_BIT = ("bfloat16", "float16")


def _cpu_lstm(row: dict, env: dict, pass_: str, H: int | None) -> bool:
    return (env["device_type"] == "cpu" and row["case"] == "lstm" and row["pass"] == pass_ and row["backend"] == "cpu"
            and row["dtype"] == "float32" and (H is None or row["shape"]["H"] == H))


def _cpu_step(row: dict, env: dict, H: int) -> bool:
    return (env["device_type"] == "cpu" and row["case"] == "model_step" and row["pass"] == "step"
            and row["backend"] == "ours-cpu" and row["dtype"] == "float32" and row["shape"]["H"] == H)
GOALS = (
    Goal("GPU: cuda ≥ 1.3x the best peer, every shape", lambda r, e: _op(r, e, "cuda", "graph", ("cuda",)), "best peer", 1.3),
    Goal("GPU: triton ≥ 1.3x the best peer, 16-bit, H ≤ 128",
         lambda r, e: _op(r, e, "cuda", "graph", ("triton",)) and r["dtype"] in _SIXTEEN_BIT
         and r["shape"]["H"] <= 128, "best peer", 1.3),
    Goal("GPU: triton ≥ the best peer, every other shape",
         lambda r, e: _op(r, e, "cuda", "graph", ("triton",)) and not (r["dtype"] in _SIXTEEN_BIT
                                                                        and r["shape"]["H"] <= 128),
         "best peer", 1.0),
    # Host cost at most 0.4x the reference's: the reference's time over ours at least 2.5.
    Goal("GPU: triton's host cost ≤ 0.4x the reference's", lambda r, e: _op(r, e, "cuda", "host", ("triton",)),
         "reference", 2.5),
    Goal("GPU: fused LSTM ≥ 2.5x cuDNN at B = 256",
         lambda r, e: e["device_type"] == "cuda" and r["case"] == "lstm" and r["timing"] == "graph"
         and r["backend"] == "cuda" and r["dtype"] in ("float32-tf32", "bfloat16") and r["shape"]["B"] == 256,
         "reference", 2.5),
    Goal("GPU: the model's training step ≥ 3x the original's at B = 256, H = 128",
         lambda r, e: e["device_type"] == "cuda" and r["case"] == "model_step" and r["pass"] == "step"
         and r["backend"] == "ours-cuda" and r["shape"]["B"] == 256 and r["shape"]["H"] == 128, "reference", 3.0),
    Goal("CPU: cpu ≥ 1.5x the reference at B·T = 8192, T = 256, H = 128",
         lambda r, e: _op(r, e, "cpu", "eager", ("cpu",)) and r["dtype"] == "float32" and r["tokens"] == 8192
         and r["shape"]["T"] == 256 and r["shape"]["H"] == 128, "reference", 1.5),
    Goal("CPU: LSTM forward+backward ≥ 2x PyTorch's at H = 64", lambda r, e: _cpu_lstm(r, e, "fwd+bwd", 64),
         "reference", 2.0),
    Goal("CPU: LSTM forward+backward ≥ 1.4x PyTorch's at H = 128", lambda r, e: _cpu_lstm(r, e, "fwd+bwd", 128),
         "reference", 1.4),
    Goal("CPU: LSTM forward ≥ 1.5x PyTorch's", lambda r, e: _cpu_lstm(r, e, "fwd", None), "reference", 1.5),
    Goal("CPU: the model's training step ≥ 3x the original's at H = 64", lambda r, e: _cpu_step(r, e, 64),
         "reference", 3.0),
    Goal("CPU: the model's training step ≥ 2x the original's at H = 128", lambda r, e: _cpu_step(r, e, 128),
         "reference", 2.0),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("files", nargs="*", help="result files written by `lstm-attn bench` and `lstm-attn profile`")
    parser.add_argument("--out", default="bench-report", help="output folder (default: %(default)s)")
    parser.add_argument("--stem", default="report", help="file name stem of the outputs (default: %(default)s)")
    parser.add_argument("--quiet", action="store_true", help="write the files without printing the markdown")


@dataclass(frozen=True, eq=False)  # compared and hashed by identity: one object per file
class Run:
    """One result file: where it came from and what it holds."""
    source: str
    doc: dict

    @property
    def env(self) -> dict:
        return self.doc["env"]

    @property
    def title(self) -> str:
        e = self.env
        return f"{e['device']}, {e['timestamp'][:10]}, commit {e['git_commit'][:12]} ({Path(self.source).name})"


# Result files of the other tools that share benchmarks/results/, which a report has no table for: host_cost.py's
# (rendered into the README as they are) and benchmarks/kernel_resources.py's --json (the README's kernels block).
HOST_COST_SCHEMA = "lstm_attn.host_cost/1"


def other_tool(doc) -> str | None:
    """What wrote `doc` (a result file's JSON), when it is a result of host_cost.py, kernel_resources.py or a tool that
    names itself in a "tool" field (lstm_memory.py) rather than a bench or profile file; None otherwise."""
    if isinstance(doc, dict) and isinstance(doc.get("tool"), str):
        return doc["tool"]
    if isinstance(doc, dict) and doc.get("schema") == HOST_COST_SCHEMA:
        return "benchmarks/host_cost.py"
    if isinstance(doc, list) and doc and all(isinstance(k, dict) and {"name", "registers"} <= k.keys() for k in doc):
        return "benchmarks/kernel_resources.py"
    return None


def load_runs(paths: list[str], skipped: list[tuple[str, str]] | None = None) -> tuple[list[Run], list[Run]]:
    """(sweep and model runs, profile runs): every file read by its schema; an unknown one is a SchemaError. With a
    `skipped` list, the results of other tools (other_tool) go into it as (path, tool) instead of failing."""
    benches, profiles = [], []
    for path in paths:
        doc = schema.read(path)
        tool = other_tool(doc) if skipped is not None else None
        if tool:
            skipped.append((path, tool))
        elif isinstance(doc, dict) and doc.get("schema") == PROFILE_SCHEMA:
            if not isinstance(doc.get("rows"), list) or not isinstance(doc.get("env"), dict):
                raise schema.SchemaError(f"{path}: a {PROFILE_SCHEMA} file needs its env and rows")
            profiles.append(Run(path, doc))
        else:
            benches.append(Run(path, schema.load(path, doc)))
    return benches, profiles


def _key(row: dict) -> tuple:
    return (row["device"], row["case"], row["pass"], row["backend"], row["dtype"],
            tuple(sorted(row["shape"].items())), row["timing"])


def merge(runs: list[Run]) -> list[tuple[Run, dict]]:
    """(run, row) for the latest row of each kind, in the order the files list them."""
    latest: dict[tuple, tuple[Run, dict]] = {}
    for run in sorted(runs, key=lambda r: r.env["timestamp"]):
        for row in run.doc["rows"]:
            latest[_key(row)] = (run, row)
    order = {}
    for run in runs:
        for row in run.doc["rows"]:
            order.setdefault(_key(row), len(order))
    return sorted(latest.values(), key=lambda pair: order[_key(pair[1])])


def _x(x: float | None) -> str:
    return "–" if x is None else f"{x:.2f}x"


def _unique(values) -> list:
    return list(dict.fromkeys(values))


def _shape_key(row: dict) -> tuple:
    return row["dtype"], row["shape"]["B"], row["shape"]["T"], row["shape"]["H"]


def env_line(env: dict, ceilings: dict | None = None) -> str:
    if env["device_type"] == "cuda":
        hw = (f"{env.get('sm_count')} SMs, {env.get('memory_gib')} GiB, driver {env.get('driver')}, "
              f"CUDA {env.get('cuda')}")
    else:
        hw = (f"{env.get('cores')} cores ({env.get('cpu_capability', 'ISA not recorded')}), "
              f"{env.get('torch_threads')} torch threads (load {env.get('load_average_1min')} at the start), "
              f"{env.get('memory_gib')} GiB")
        if env.get("allocator"):  # recorded since the allocator was found to move the LSTM rows by up to 1.8x
            hw += ", allocator " + " ".join(f"{k}={v}" for k, v in env["allocator"].items())
        if env.get("plans_forced"):
            hw += ", plans forced: " + " ".join(f"{k}={v}" for k, v in env["plans_forced"].items())
    line = (f"{hw}; torch {env['torch']}, triton {env.get('triton')}, lstm_attn {env['version']}, "
            f"commit {env['git_commit']}, run {env['timestamp']}.")
    if ceilings:
        mm = ", ".join(f"{d} {v:.3g}" for d, v in ceilings["matmul_tflops"].items())
        line += f" Measured ceilings: copy {ceilings['copy_gbps']:.3g} GB/s, matmul TFLOP/s {mm}."
    return line


def _busy(row: dict, env: dict) -> str:
    return BUSY_MARK if load.busy(row, env) else ""


def _ms_cell(row: dict | None, method: str, env: dict) -> str:
    if row is None:
        return ""
    if row["status"] != "ok":
        return row["status"].split(":")[0]
    return fmt_ms(row["ms_p50"]) + (MARKS.get(row["method"], "") if row["method"] != method else "") + _busy(row, env)


def _case_table(sel: list[dict], method: str, env: dict) -> tuple[str, set[str]]:
    """One (case, pass) of one run and timing: ms of every provider per shape, and our speedups."""
    backends = _unique(r["backend"] for r in sel)
    ours = _unique(r["backend"] for r in sel if r["kind"] == "ours")
    # With the reference as the only peer, "vs best peer" would repeat "vs reference".
    peers = {r["backend"] for r in sel if r["kind"] == "peer"}
    labels = ("ref", "best peer") if len(peers) > 1 else ("ref",)
    cells = {(_shape_key(r), r["backend"]): r for r in sel}
    header = ["dtype", "B", "T", "H", *(f"{b} ms" for b in backends),
              *(f"{b} ×{label}" for b in ours for label in labels)]
    body, marks = [], set()
    for shape in _unique(_shape_key(r) for r in sel):
        line = [str(v) for v in shape]
        for b in backends:
            cell = _ms_cell(cells.get((shape, b)), method, env)
            marks |= {m for m in MARK_NOTES if m in cell}
            line.append(cell)
        for b in ours:
            r = cells.get((shape, b))
            ok = r is not None and r["status"] == "ok"
            line.append(_x(r["speedup_vs_reference"]) if ok else "–")
            if len(labels) > 1:
                line.append(f"{_x(r['speedup_vs_best_peer'])} ({r['best_peer']})" if ok and r["best_peer"] else "–")
        body.append(line)
    return markdown_table(header, body), marks


def _kernel_notes(sel: list[dict]) -> str:
    notes = defaultdict(int)
    for r in sel:
        if r["detail"] and r["detail"].startswith("SDPA kernel"):
            notes[r["detail"].split(";")[0]] += 1
    return "; ".join(f"{note} ({n} row{'s' if n > 1 else ''})" for note, n in notes.items())


def cross_device_table(rows: list[dict]) -> str:
    """Speedup vs the reference (and vs the best peer) per backend and device, per case, pass and shape, for the
    backends measured on more than one device; empty if there are none."""
    devices = _unique(r["device"] for r in rows)
    ours = [b for b in _unique(r["backend"] for r in rows if r["kind"] == "ours")
            if len({r["device"] for r in rows if r["backend"] == b}) > 1]
    columns = [(d, b) for d in devices for b in ours if any(r["device"] == d and r["backend"] == b for r in rows)]
    if not columns:
        return ""
    rows = [r for r in rows if r["backend"] in ours]
    cells = {(r["case"], r["pass"], *_shape_key(r), r["device"], r["backend"]): r for r in rows}
    body = []
    for key in _unique((r["case"], r["pass"], *_shape_key(r)) for r in rows):
        line = [str(v) for v in key]
        for d, b in columns:
            r = cells.get((*key, d, b))
            line.append(f"{_x(r['speedup_vs_reference'])} ({_x(r['speedup_vs_best_peer'])})"
                        if r and r["status"] == "ok" else "–")
        body.append(line)
    return markdown_table(["case", "pass", "dtype", "B", "T", "H", *(f"{b} on {d}" for d, b in columns)], body)


def timing_tables(merged: list[tuple[Run, dict]], timing: str, heading: str = "###") -> str:
    """One timing's tables: across devices (where there are several), then per run and (case, pass)."""
    method = SECTIONS[timing][1]
    mine = [(run, row) for run, row in merged if row["timing"] == timing and row["case"] != SCALING]
    parts = []
    across = cross_device_table([row for _, row in mine])
    if across:
        parts.append(f"Speedup vs reference (vs best peer), per backend and device:\n\n{across}")
    for run in _unique(run for run, _ in mine):
        rows = [row for r, row in mine if r is run]
        parts.append(f"{heading} {run.title}\n\n{env_line(run.env, run.doc.get('ceilings'))}")
        for case, pass_ in _unique((r["case"], r["pass"]) for r in rows):
            sel = [r for r in rows if r["case"] == case and r["pass"] == pass_]
            table, marks = _case_table(sel, method, run.env)
            notes = [f"{m} {MARK_NOTES[m]}" for m in sorted(marks)]
            if _kernel_notes(sel):
                notes.append(_kernel_notes(sel))
            parts.append(f"**{case} {pass_}** (ms: median; ×: speedup)\n\n{table}" + "".join(f"\n\n{n}" for n in notes))
    return "\n\n".join(parts)


def timing_sections(merged: list[tuple[Run, dict]]) -> str:
    """Every timing that has rows, under its own heading."""
    return "\n\n".join(f"## {heading}\n\n{timing_tables(merged, timing)}" for timing, (heading, _) in SECTIONS.items()
                       if any(row["timing"] == timing and row["case"] != SCALING for _, row in merged))


def _why_not(row: dict | None) -> str:
    """A short cell for a row without a time: "out of memory", "time cap", "refused", ... (not run: empty)."""
    if row is None:
        return ""
    kind, _, rest = row["status"].partition(": ")
    return rest.split(" (")[0].split(":")[0] if kind == "skipped" else kind


def _fmt_mb(x: float | None) -> str:
    return "–" if x is None else f"{x:.0f}"


def _fmt_peak(row: dict) -> str:
    """Peak MB, and in brackets what the step itself added to what was held before it, where known."""
    from lstm_attn.bench.scaling import step_mb

    step = step_mb(row)
    return _fmt_mb(row["peak_mb"]) + (f" ({_fmt_mb(step)})" if step is not None else "")


def _memory(row: dict) -> float | None:
    """The memory a scaling row is compared and fitted on: the step's own where the row knows it (the process's
    fixed cost, some 500 MB on a CPU, would otherwise flatten every curve), else the whole peak."""
    from lstm_attn.bench.scaling import step_mb

    step = step_mb(row)
    return step if step is not None else row["peak_mb"]


def scaling_tables(merged: list[tuple[Run, dict]], heading: str = "###") -> str:
    """Per run of the model_scaling case: time and peak memory of every provider against T, ours' ratios to the
    seed, and the fitted growth exponents (slope on a log-log scale)."""
    from lstm_attn.bench.scaling import SEED, slope

    mine = [(run, row) for run, row in merged if row["case"] == SCALING]
    parts = []
    for run in _unique(run for run, _ in mine):
        rows = [row for r, row in mine if r is run]
        names = _unique(r["backend"] for r in rows)
        ours = [n for n in names if n != SEED]
        cells = {(r["shape"]["T"], r["backend"]): r for r in rows}
        stepwise = any(r.get("base_mb") is not None for r in rows)
        header = ["T", *(f"{n} {what}" for n in names for what in ("ms", "peak MB (step)" if stepwise else "peak MB")),
                  *(f"{n} ×seed {what}" for n in ours for what in ("time", "step memory" if stepwise else "memory"))]
        body = []
        for T in sorted({r["shape"]["T"] for r in rows}):
            line = [str(T)]
            for n in names:
                r = cells.get((T, n))
                ok = r is not None and r["status"] == "ok"
                line += [fmt_ms(r["ms_p50"]) + _busy(r, run.env), _fmt_peak(r) if r["peak_mb"] is not None else ""] \
                    if ok else [_why_not(r), ""]
            seed = cells.get((T, SEED))
            for n in ours:
                r = cells.get((T, n))
                both = r is not None and seed is not None and r["status"] == seed["status"] == "ok"
                mine_mb, seed_mb = (_memory(r), _memory(seed)) if both else (None, None)
                line += [_x(seed["ms_p50"] / r["ms_p50"]) if both else "–",
                         _x(seed_mb / mine_mb) if mine_mb and seed_mb else "–"]
            body.append(line)
        fits = []
        for n in names:
            ok = sorted((r["shape"]["T"], r) for r in rows if r["backend"] == n and r["status"] == "ok")
            k_time = slope([(T, r["ms_p50"]) for T, r in ok])
            k_mem = slope([(T, _memory(r)) for T, r in ok if _memory(r)])
            if k_time is not None:
                fits.append(f"{n}: time ∝ T^{k_time:.2f}" +
                            (f", {'step' if stepwise else 'peak'} memory ∝ T^{k_mem:.2f}" if k_mem else ""))
        shape = rows[0]["shape"]
        where = " (peak resident set of a process per point)" if run.env["device_type"] == "cpu" else \
            " (torch.cuda.max_memory_allocated)"
        step_note = (" In brackets, the memory the step added to what was held before it (the interpreter, torch's "
                     "libraries, the model and its inputs): the ratios and the fitted exponents use that."
                     if stepwise else "")
        parts.append(f"{heading} {run.title}\n\n{env_line(run.env)}\n\nOne training step (forward, loss, backward, "
                     f"Adam), float32, B={shape['B']}, input {shape['input_size']}, H={shape['H']}, "
                     f"{shape['layers']} layers; median of the timed steps and their peak memory{where}.{step_note}"
                     f"\n\n{markdown_table(header, body)}\n\nFitted over the points that ran: {'; '.join(fits)}."
                     + (f"\n\n{BUSY_MARK} {MARK_NOTES[BUSY_MARK]}" if any(_busy(r, run.env) for r in rows) else ""))
    return "\n\n".join(parts)


def plot_scaling(device: str, rows: list[dict], path: Path) -> bool:
    """Time and memory against T on log-log axes, one line per provider, its fitted exponent in the legend."""
    from lstm_attn.bench.scaling import slope

    names = _unique(r["backend"] for r in rows if r["status"] == "ok")
    if not names:
        return False
    plt = _pyplot()

    stepwise = any(r.get("base_mb") is not None for r in rows)
    memory_label = "memory the step adds (MB)" if stepwise else "peak memory (MB)"
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.8))
    for ax, metric, label in ((axes[0], lambda r: r["ms_p50"], "ms per training step"),
                              (axes[1], _memory, memory_label)):
        for i, n in enumerate(names):
            pts = sorted((r["shape"]["T"], metric(r)) for r in rows
                         if r["backend"] == n and r["status"] == "ok" and metric(r))
            if pts:
                k = slope(pts)
                ax.plot(*zip(*pts), marker="o", color=plt.get_cmap("tab10")(i % 10),
                        label=f"{n} (∝ T^{k:.2f})" if k is not None else n)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("T")
        ax.set_ylabel(label)
        ax.legend(fontsize=7)
        ax.tick_params(labelsize=7)
    fig.suptitle(f"{device}: {SCALING}, time and memory of a training step against T", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def goals_table(merged: list[tuple[Run, dict]]) -> str:
    body = []
    for goal in GOALS:
        for run, r in merged:
            if r["status"] != "ok" or not goal.applies(r, run.env):
                continue
            speedup = r["speedup_vs_reference"] if goal.versus == "reference" else r["speedup_vs_best_peer"]
            peer = "reference" if goal.versus == "reference" else r["best_peer"]
            met = speedup is not None and speedup >= goal.target
            mark = (MARKS.get(r["method"], "") if r["method"] != SECTIONS[r["timing"]][1] else "") + _busy(r, run.env)
            body.append([goal.name, r["device"], r["backend"], *map(str, _shape_key(r)),
                         f"{_x(speedup)}{mark} vs {peer or 'no peer measured'} (goal {goal.target}x)",
                         "yes" if met else "**no**"])
    if not body:
        return ("No timed row falls under a goal (the goals ask for device-time rows on a GPU, and the CPU goal's "
                "shape).")
    marks = sorted({m for line in body for m in MARK_NOTES if m in line[-2]})
    return markdown_table(["goal", "device", "backend", "dtype", "B", "T", "H", "speedup", "met"], body) + "".join(
        f"\n\n{m} {MARK_NOTES[m]}" for m in marks)


def not_timed(merged: list[tuple[Run, dict]]) -> str:
    counts = defaultdict(int)
    for _, r in merged:
        if r["status"] != "ok":
            counts[(r["device"], r["backend"], r["status"])] += 1
    return "\n".join(f"- {d}, {b} ({n} row{'s' if n > 1 else ''}): {s}" for (d, b, s), n in counts.items()) or "None."


def profile_sections(profiles: list[Run]) -> str:
    from lstm_attn.bench.profile import table  # imports torch.profiler: only when there is a profile to show

    return "\n\n".join(f"### {run.title}\n\n{env_line(run.env)}\n\n{table(run.doc['rows'], run.env['device_type'])}"
                       for run in profiles)


def markdown(benches: list[Run], profiles: list[Run]) -> str:
    merged = merge(benches)
    src = "\n".join(f"- {run.source}: {run.env['device']}, {run.env['timestamp']}, commit {run.env['git_commit']}"
                    for run in [*benches, *profiles])
    parts = ["# lstm_attn benchmarks", f"Sources:\n{src}", timing_sections(merged)]
    if any(row["case"] == SCALING for _, row in merged):
        parts += ["## Cost against sequence length (model_scaling)", scaling_tables(merged)]
    parts += ["## Goals", goals_table(merged)]
    if profiles:
        parts += ["## Where the time goes (lstm-attn profile)", profile_sections(profiles)]
    parts += ["## Rows not timed", not_timed(merged)]
    return "\n\n".join(p for p in parts if p) + "\n"


def plot_rows(merged: list[tuple[Run, dict]]) -> dict[str, list[dict]]:
    """Per device, the rows its plots show: the plotted case and pass, device time (else eager), timed."""
    per_device = defaultdict(list)
    for _, r in merged:
        if r["case"] in PLOTTED and r["pass"] == PLOTTED[r["case"]] and r["status"] == "ok" and r["timing"] != "host":
            per_device[r["device"]].append(r)
    chosen = {}
    for device, rows in per_device.items():
        timing = "graph" if any(r["timing"] == "graph" for r in rows) else "eager"
        chosen[device] = [r for r in rows if r["timing"] == timing]
    return chosen


def plot(device: str, rows: list[dict], metric: str, ylabel: str, path: Path) -> bool:
    """One panel per H that has rows: `metric` against T, one line per backend and dtype. False (and no file)
    when no row has the metric."""
    sel = [r for r in rows if r[metric] is not None
           and not (metric == "speedup_vs_reference" and r["backend"] == "reference")]
    if not sel:
        return False
    plt = _pyplot()

    Hs = sorted({r["shape"]["H"] for r in sel})
    backends = _unique(r["backend"] for r in rows)
    colors = {b: plt.get_cmap("tab10")(i % 10) for i, b in enumerate(backends)}
    styles = ["-", "--", ":", "-."]
    dtypes = _unique(r["dtype"] for r in sel)
    fig, axes = plt.subplots(1, len(Hs), figsize=(3.6 * len(Hs) + 1, 3.6), squeeze=False)
    for ax, H in zip(axes[0], Hs):
        for b in backends:
            for k, dtype in enumerate(dtypes):
                pts = sorted((r["shape"]["T"], r[metric]) for r in sel
                             if r["shape"]["H"] == H and r["backend"] == b and r["dtype"] == dtype)
                if pts:
                    ax.plot(*zip(*pts), marker="o", color=colors[b], linestyle=styles[k % len(styles)],
                            label=f"{b} {dtype}")
        if metric == "speedup_vs_reference":
            ax.axhline(1.0, color="gray", linewidth=0.8)
        ax.set_xscale("log", base=2)
        Ts = sorted({r["shape"]["T"] for r in sel if r["shape"]["H"] == H})
        ax.set_xticks(Ts, [str(T) for T in Ts])
        ax.minorticks_off()
        ax.set_title(f"H={H}", fontsize=8)
        ax.set_xlabel("T")
        ax.set_ylabel(ylabel)
        ax.tick_params(labelsize=7)
    handles, labels = [], []
    for ax in axes.flat:
        for h, label in zip(*ax.get_legend_handles_labels()):
            if label not in labels:
                handles.append(h)
                labels.append(label)
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 4), fontsize=7)
    timing = "device time" if rows and rows[0]["timing"] == "graph" else "eager wall time"
    case = rows[0]["case"]
    fig.suptitle(f"{device}: {case} {PLOTTED[case]}, {ylabel} ({timing})", fontsize=9)
    fig.tight_layout(rect=(0, 0.16, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _pyplot():
    """matplotlib's pyplot drawing to files (no display), or MissingExtra naming the extra."""
    require("matplotlib", "lstm-attn report's plots").use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _slug(device: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", device.lower()).strip("-")


def run(args: argparse.Namespace) -> int:
    if not args.files:
        print("lstm-attn report: error: give result files", file=sys.stderr)
        return 2
    skipped: list[tuple[str, str]] = []
    try:
        benches, profiles = load_runs(args.files, skipped)
    except schema.SchemaError as exc:
        print(f"lstm-attn report: error: {exc}", file=sys.stderr)
        return 2
    for path, tool in skipped:
        print(f"lstm-attn report: skipped {path}: a result of {tool}, not a bench or profile file", file=sys.stderr)
    if not benches and not profiles:
        print("lstm-attn report: error: no bench or profile file among the files given", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    text = markdown(benches, profiles)
    written = [out / f"{args.stem}.md"]
    written[0].write_text(text, encoding="utf-8")
    merged = merge(benches)
    for device, rows in plot_rows(merged).items():
        for metric, ylabel, suffix in (("speedup_vs_reference", "speedup vs reference", "speedup"),
                                       ("tflops", "TFLOP/s", "tflops")):
            path = out / f"{args.stem}-{_slug(device)}-{suffix}.png"
            if plot(device, rows, metric, ylabel, path):
                written.append(path)
    for device in _unique(row["device"] for _, row in merged if row["case"] == SCALING):
        path = out / f"{args.stem}-{_slug(device)}-scaling.png"
        if plot_scaling(device, [row for _, row in merged if row["case"] == SCALING and row["device"] == device],
                        path):
            written.append(path)
    if not args.quiet:
        print(text)
    print("wrote " + ", ".join(map(str, written)), file=sys.stderr)
    return 0
