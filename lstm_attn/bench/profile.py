"""`lstm-attn profile`: where one forward+backward call's time goes, per provider: host or device, which kernels.

The sweep (`lstm-attn bench`) answers "how fast"; this answers "why". For each shape, dtype and provider it runs
the op's forward+backward (the sweep's inputs and runners) and records, per call:
  wall_ms    median time of the call followed by a synchronize: what a training step waits for (the sweep's
             "eager" timing)
  host_ms    median time the host takes to issue the call, started on an idle device and stopped before any
             synchronize: Python, the dispatcher, autograd, the launchers (the sweep's "host" timing)
  device_ms  (GPU) the summed duration of the kernels the call ran, from torch.profiler's CUDA activity;
             kernels lists them, heaviest first, with their time and launches per call (null where the
             profiler could record no kernels)
On a GPU, host_ms close to wall_ms with device_ms well below means the call is launch-bound: faster kernels would
not show. On a CPU host and device are one: device_ms is null and kernels lists the operators by self CPU time.
Unlike the sweep nothing is checked against the reference (the sweep does that), and the kernels are profiled
without flushing the L2 between calls: these are diagnostics, not the published speed.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

from lstm_attn.bench import cases
from lstm_attn.bench.env import device_kind, device_slug, environment
from lstm_attn.bench.options import PROFILE_DEFAULTS, check_limits, names_in, positive_ints, sequence_lengths
from lstm_attn.bench.schema import write_json
from lstm_attn.bench.tables import fmt_ms, markdown_table
from lstm_attn.bench.timing import Budget, measure_eager, measure_host, sync

SCHEMA = "lstm_attn.profile/1"
PASS = "fwd+bwd"
TOP_KERNELS = 8


def _config(args: argparse.Namespace) -> dict:
    kind = device_kind(args.device)
    spec = {**PROFILE_DEFAULTS[kind], **{k: v for k in ("tokens", "T", "H", "dtypes", "backends")
                                 if (v := getattr(args, k)) is not None}}
    tokens = spec["tokens"]
    Ts = sequence_lengths(tokens, spec["T"])
    if args.iters < 1:
        raise ValueError(f"--iters must be at least 1, got {args.iters}")
    check_limits(args.time_budget, args.threads)
    return dict(device=torch.device(kind), tokens=tokens, Ts=Ts, Hs=positive_ints(str(spec["H"]), "--H"),
                dtypes=names_in(spec["dtypes"], "--dtypes", cases.DTYPES),
                backends=names_in(spec["backends"], "--backends", cases.PROVIDERS))


def _kernels(prof, device: torch.device, iters: int) -> tuple[float | None, list[dict]]:
    """(device ms per call, the heaviest kernels) from a profile of `iters` calls. On CPU: (None, operators by
    self CPU time), top-level and nested alike, since a self time counts each microsecond once."""
    ms, launches = defaultdict(float), defaultdict(int)
    for event in prof.events():
        if device.type == "cuda":
            if event.device_type != DeviceType.CUDA:
                continue
            elapsed = event.time_range.elapsed_us()
        else:
            if event.device_type != DeviceType.CPU:
                continue
            elapsed = event.self_cpu_time_total
        ms[event.name] += elapsed / 1e3
        launches[event.name] += 1
    if device.type == "cuda" and not ms:
        # CUPTI can be unavailable (a container without profiling rights): no kernel time is not zero kernel time.
        print("  torch.profiler recorded no CUDA kernels (is CUPTI available?): device time left unknown", flush=True)
        return None, []
    top = sorted(ms, key=ms.get, reverse=True)[:TOP_KERNELS]
    kernels = [{"name": name, "ms": ms[name] / iters, "calls": launches[name] / iters} for name in top]
    return (sum(ms.values()) / iters if device.type == "cuda" else None), kernels


def profile_row(provider: str, dtype: str, B: int, T: int, H: int, device: torch.device, iters: int,
                seed: int) -> dict:
    """One provider on one shape: the row of the result file."""
    row = {"backend": provider, "dtype": dtype, "shape": {"B": B, "T": T, "H": H}, "status": "ok",
           "wall_ms": None, "host_ms": None, "device_ms": None, "kernels": []}
    p = cases.PROVIDERS[provider]
    reason = p.unavailable(device, cases.DTYPES[dtype], H)
    if reason:
        return {**row, "status": f"skipped: {reason}"}
    generator = torch.Generator(device).manual_seed(seed)
    sets = [cases.make_inputs(B, T, H, cases.DTYPES[dtype], device, True, generator) for _ in range(2)]
    run = cases.op_runner(p.build(), PASS, sets).run
    budget = Budget(warmup_ms=0.0, rep_ms=0.0, min_reps=iters, max_reps=iters)  # warm-up: compile, autotune
    try:
        row["wall_ms"] = measure_eager(run, device, n_sets=len(sets), budget=budget).p50
        row["host_ms"] = measure_host(run, device, n_sets=len(sets), budget=budget).p50
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        sync(device)
        with profile(activities=activities) as prof:
            for i in range(iters):
                run(i % len(sets))
            sync(device)
    except Exception as exc:  # noqa: BLE001  (one provider failing on one shape leaves the rest to run)
        return {**row, "status": f"error: {type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc) else ''}"}
    row["device_ms"], row["kernels"] = _kernels(prof, device, iters)
    return row


def table(rows: list[dict], device_type: str) -> str:
    """Markdown: one line per row, the heaviest kernels abbreviated."""
    body = []
    for r in rows:
        s = r["shape"]
        head = [r["dtype"], str(s["B"]), str(s["T"]), str(s["H"]), r["backend"]]
        if r["status"] != "ok":
            body.append([*head, r["status"], "", "", ""])
            continue
        top = "; ".join(f"{k['name'][:48]} {fmt_ms(k['ms'])}×{k['calls']:g}" for k in r["kernels"][:3])
        body.append([*head, fmt_ms(r["wall_ms"]), fmt_ms(r["host_ms"]), fmt_ms(r["device_ms"]), top])
    text = markdown_table(["dtype", "B", "T", "H", "backend", "wall ms", "host ms", "device ms",
                           "heaviest (ms per call × launches)"], body)
    if device_type == "cpu":
        text += ("\n\nOn CPU host and device are one: device ms is left out and the operators are listed by self "
                 "CPU time.")
    return text


def run(args: argparse.Namespace) -> int:
    try:
        cfg = _config(args)
    except ValueError as exc:
        print(f"lstm-attn profile: error: {exc}", file=sys.stderr)
        return 2
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = cfg["device"]
    started = time.perf_counter()
    env = environment(device)
    out = Path(args.out)
    path = out if out.suffix == ".json" else out / f"profile-{device_slug(device)}-{env['timestamp'][:10]}.json"
    doc = {"schema": SCHEMA, "env": env, "method": __doc__.strip(),
           "config": {"argv": sys.argv[1:], "pass": PASS, "tokens": cfg["tokens"], "iters": args.iters,
                      "not_run": []},
           "rows": []}
    print(f"lstm-attn profile on {env['device']}; torch {env['torch']}, triton {env['triton']}, lstm_attn "
          f"{env['version']} at {env['git_commit']}", flush=True)
    for T in cfg["Ts"]:
        for H in cfg["Hs"]:
            for dtype in cfg["dtypes"]:
                for provider in cfg["backends"]:
                    label = f"{dtype} B={cfg['tokens'] // T} T={T} H={H} {provider}"
                    if args.time_budget is not None and time.perf_counter() - started > args.time_budget:
                        doc["config"]["not_run"].append(label)
                        continue
                    with cases.precision(dtype):
                        row = profile_row(provider, dtype, cfg["tokens"] // T, T, H, device, args.iters, args.seed)
                    doc["rows"].append(row)
                    write_json(doc, path)
                    detail = (f"wall {fmt_ms(row['wall_ms'])} ms, host {fmt_ms(row['host_ms'])} ms, device "
                              f"{fmt_ms(row['device_ms'])} ms" if row["status"] == "ok" else row["status"])
                    print(f"{label}: {detail}", flush=True)
    write_json(doc, path)
    if doc["config"]["not_run"]:
        print(f"not run (time budget of {args.time_budget} s spent): " + "; ".join(doc["config"]["not_run"]))
    print(f"wrote {path} ({len(doc['rows'])} rows, {time.perf_counter() - started:.0f} s)\n", flush=True)
    print(table(doc["rows"], device.type), flush=True)
    return 0
