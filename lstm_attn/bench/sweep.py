"""`lstm-attn bench`: sweep shapes, dtypes, passes and backends; check each against the reference; time; write JSON.

One line per row is printed as it completes, and the result file is rewritten after every group, so a run
stopped early (a timeout, Ctrl-C) keeps what it measured. The summary table comes last.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from lstm_attn.bench import cases, load, lstm_rows, model_step, scaling, schema
from lstm_attn.bench.ceilings import measure_ceilings
from lstm_attn.bench.env import device_kind, device_slug, environment
from lstm_attn.bench.options import (CASES, SWEEP_DEFAULTS, SWEEP_QUICK, check_limits, names_in, positive_ints,
                                     sequence_lengths)
from lstm_attn.bench.group import run_group
from lstm_attn.bench.report import BUSY_MARK, Run, merge, timing_sections
from lstm_attn.bench.tables import fmt_ms
from lstm_attn.bench.timing import Budget

BUDGETS = {"cuda": Budget(warmup_ms=25, rep_ms=100), "cpu": Budget(warmup_ms=20, rep_ms=250, min_reps=5),
           "quick": Budget(warmup_ms=10, rep_ms=100, min_reps=3)}
HOST_TIMINGS = ("host",)


@dataclass
class Config:
    device: torch.device
    cases: list[str]
    providers: list[str]
    shapes: list[tuple[int, int, int]]  # (B, T, H) of the op groups
    dtypes: list[str]
    passes: list[str]
    timings: tuple[str, ...]
    host_shape: tuple[int, int, int] | None
    model_shapes: list[tuple[int, int, int]]  # (B, T, H)
    model_dtypes: list[str]
    lstm_shapes: list[tuple[int, int, int]]
    scaling_Ts: list[int]
    scaling_shape: tuple[int, int]  # (B, H)
    time_cap: float
    budget: Budget
    out: Path
    quick: bool
    time_budget: float | None
    threads: int | None
    seed: int


def _dims(item: str, option: str, example: str) -> tuple[int, ...]:
    parts = item.lower().split("x")
    if len(parts) != example.count("x") + 1:
        raise ValueError(f"{option} takes items such as {example}, got {item!r}")
    return tuple(positive_ints(",".join(parts), f"{option} item {item!r}"))


def _model_shapes(text: str) -> list[tuple[int, int, int]]:
    """BxT items (H the model case's default) or BxTxH."""
    return [_dims(item, "--model-shapes", "256x1024x128" if item.lower().count("x") == 2 else "256x1024")
            + ((model_step.HIDDEN,) if item.lower().count("x") == 1 else ()) for item in text.split(",")]


def _host_shape(text: str) -> tuple[int, int, int] | None:
    return None if text.strip().lower() == "none" else _dims(text, "--host-shape", "1x16x64")


def op_shapes(elements: int | None, tokens: int | None, Ts: list[int], Hs: list[int]) -> list[tuple[int, int, int]]:
    """(B, T, H) for every T and H: B = tokens / T with --tokens, else elements / (T * H); it must be whole."""
    shapes = []
    for T in Ts:
        for H in Hs:
            if tokens is not None:
                total, what = tokens, f"--tokens {tokens} is not a multiple of T = {T}"
            else:
                if elements is None or elements <= 0:
                    raise ValueError(f"--elements must be positive, got {elements}")
                total, what = elements // H, f"--elements {elements} is not a multiple of T * H = {T} * {H}"
                if elements % H:
                    raise ValueError(what)
            if total % T:
                raise ValueError(f"{what}: B must be whole")
            shapes.append((total // T, T, H))
    return shapes


def _scaling_lengths(text: str) -> list[int]:
    bounds = positive_ints(text, "--scaling-T")
    if len(bounds) != 2:
        raise ValueError(f"--scaling-T takes the first and the largest T, such as 256,16384; got {text!r}")
    return scaling.lengths(*bounds)


def _positive(seconds: float) -> float:
    if not seconds > 0:
        raise ValueError(f"--time-cap must be positive seconds, got {seconds}")
    return seconds


def config_from_args(args: argparse.Namespace) -> Config:
    """The sweep to run; a ValueError that names the argument for anything it cannot be."""
    kind = device_kind(args.device)
    given = {k: getattr(args, k) for k in ("elements", "tokens", "T", "H", "dtypes", "timings", "host_shape",
                                           "model_shapes", "model_dtypes", "lstm_shapes")}
    spec = {**(SWEEP_QUICK if args.quick else SWEEP_DEFAULTS)[kind],
            **{k: v for k, v in given.items() if v is not None}}
    if args.tokens is not None and args.elements is not None:
        raise ValueError("--tokens and --elements both size the op shapes: give one of them")
    if args.tokens is not None:  # B*T asked for: it replaces the default B*T*H, and the other way round
        spec["elements"] = None
    elif args.elements is not None:
        spec["tokens"] = None
    if spec["tokens"] is not None and spec["tokens"] <= 0:
        raise ValueError(f"--tokens must be positive, got {spec['tokens']}")
    Ts, Hs = positive_ints(str(spec["T"]), "--T"), positive_ints(str(spec["H"]), "--H")
    timings = tuple(names_in(spec["timings"], "--timings", ("graph", "eager")))
    if "graph" in timings and kind != "cuda":
        raise ValueError("--timings graph needs a CUDA GPU: CUDA-graph replay times the device alone")
    check_limits(args.time_budget, args.threads)
    return Config(
        device=torch.device(kind),
        cases=names_in(args.cases, "--cases", CASES),
        providers=names_in(args.backends or ",".join(cases.DEFAULT_PROVIDERS[kind]), "--backends", cases.PROVIDERS),
        shapes=op_shapes(spec["elements"], spec["tokens"], Ts, Hs),
        dtypes=names_in(spec["dtypes"], "--dtypes", cases.DTYPES),
        passes=names_in(args.passes, "--passes", cases.PASSES),
        timings=timings, host_shape=_host_shape(spec["host_shape"]),
        model_shapes=_model_shapes(spec["model_shapes"]),
        model_dtypes=names_in(spec["model_dtypes"], "--model-dtypes", model_step.DTYPES),
        lstm_shapes=[_dims(item, "--lstm-shapes", "32x256x128") for item in spec["lstm_shapes"].split(",")],
        scaling_Ts=_scaling_lengths(args.scaling_T),
        scaling_shape=_dims(args.scaling_shape, "--scaling-shape", "16x64"), time_cap=_positive(args.time_cap),
        budget=BUDGETS["quick" if args.quick else kind], out=Path(args.out), quick=args.quick,
        time_budget=args.time_budget, threads=args.threads, seed=args.seed,
    )


def _group_specs(cfg: Config):
    """(description, number of rows, build) for every group, in the order they run: the host-cost rows first
    (seconds in all), then the op shapes, T outermost (the longest sequences, slowest to check, last), then the
    model case."""
    specs = []
    n = len(cfg.providers)
    if cases.CASE in cfg.cases:
        if cfg.host_shape is not None:
            B, T, H = cfg.host_shape
            for dtype in cfg.dtypes:
                specs.append((f"{cases.CASE} fwd+bwd {dtype} B={B} T={T} H={H} host", n,
                              lambda d=dtype, B=B, T=T, H=H: cases.op_group(
                                  "fwd+bwd", d, B, T, H, cfg.providers, cfg.device, cfg.seed, timings=HOST_TIMINGS)))
        for B, T, H in cfg.shapes:
            for dtype in cfg.dtypes:
                for pass_ in cfg.passes:
                    specs.append((f"{cases.CASE} {pass_} {dtype} B={B} T={T} H={H}", n * len(cfg.timings),
                                  lambda p=pass_, d=dtype, B=B, T=T, H=H: cases.op_group(
                                      p, d, B, T, H, cfg.providers, cfg.device, cfg.seed, timings=cfg.timings)))
    if lstm_rows.CASE in cfg.cases:
        names = list(lstm_rows.DEFAULT_PROVIDERS[cfg.device.type])
        for B, T, H in cfg.lstm_shapes:
            for dtype in cfg.dtypes:
                for pass_ in (p for p in lstm_rows.PASSES if p in cfg.passes):
                    specs.append((f"{lstm_rows.CASE} {pass_} {dtype} B={B} T={T} H={H}", len(names) * len(cfg.timings),
                                  lambda d=dtype, B=B, T=T, H=H, p=pass_: lstm_rows.lstm_group(
                                      d, B, T, H, names, cfg.device, cfg.seed, timings=cfg.timings, pass_=p)))
    if model_step.CASE in cfg.cases:
        ours = len(model_step.OUR_BACKENDS[cfg.device.type])
        for B, T, H in cfg.model_shapes:
            for dtype in cfg.model_dtypes:
                for pass_ in model_step.PASSES:
                    specs.append((f"{model_step.CASE} {pass_} {dtype} B={B} T={T} H={H}",
                                  1 if pass_ == "lstm" else 1 + ours,
                                  lambda p=pass_, d=dtype, B=B, T=T, H=H: model_step.model_group(
                                      p, d, B, T, cfg.device, cfg.seed, H=H)))
    return specs


def progress_line(row: dict) -> str:
    shape = " ".join(f"{k}={v}" for k, v in row["shape"].items())
    head = f"{row['case']} {row['pass']} {row['dtype']} {shape} {row['backend']} [{row['timing']}]:"
    if row["status"] != "ok":
        return f"{head} {row['status']}"
    line = f"{head} {fmt_ms(row['ms_p50'])} ms (p20 {fmt_ms(row['ms_p20'])}, p80 {fmt_ms(row['ms_p80'])})"
    if row["tflops"] is not None:
        line += f", {row['tflops']:.3g} TFLOP/s, {row['gbps']:.3g} GB/s"
    if row["parity_err"] is not None:
        line += f", {row['parity_err']:.1e} off"
    return line + (f" ({row['detail']})" if row["detail"] else "")


def output_path(cfg: Config, env: dict) -> Path:
    if cfg.out.suffix == ".json":
        return cfg.out
    return cfg.out / f"{device_slug(cfg.device)}-{env['timestamp'][:10]}.json"


def run(args: argparse.Namespace) -> int:
    try:
        cfg = config_from_args(args)
    except ValueError as exc:
        print(f"lstm-attn bench: error: {exc}", file=sys.stderr)
        return 2
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    started = time.perf_counter()
    env = environment(cfg.device)
    path = output_path(cfg, env)
    print(f"lstm-attn bench on {env['device']} ({cfg.device.type}); torch {env['torch']}, triton {env['triton']}, "
          f"lstm_attn {env['version']} at {env['git_commit']}", flush=True)
    for name, status in env["backends"].items():
        print(f"  backend {name}: {status}", flush=True)
    labels = {"float32"} if scaling.CASE in cfg.cases else set()
    if cases.CASE in cfg.cases or lstm_rows.CASE in cfg.cases:
        labels |= set(cfg.dtypes)
    if model_step.CASE in cfg.cases:
        labels |= {d.removesuffix("-autocast") for d in cfg.model_dtypes}
    ceilings = measure_ceilings(cfg.device, sorted(labels), quick=cfg.quick)
    print(f"  ceilings: copy {ceilings['copy_gbps']:.3g} GB/s, matmul "
          + ", ".join(f"{d} {v:.3g} TFLOP/s" for d, v in ceilings["matmul_tflops"].items()), flush=True)

    specs = _group_specs(cfg)
    total = sum(n for _, n, _ in specs)
    if scaling.CASE in cfg.cases:
        total += len(scaling.providers(cfg.device)) * len(cfg.scaling_Ts)
    doc = {
        "schema": schema.SCHEMA, "env": env, "ceilings": ceilings,
        "models": {cases.CASE: cases.op_work.__doc__.strip(), model_step.CASE: model_step.model_work.__doc__.strip(),
                   lstm_rows.CASE: lstm_rows.__doc__.strip()},
        "config": {"argv": sys.argv[1:], "quick": cfg.quick, "shapes": cfg.shapes, "timings": list(cfg.timings),
                   "host_shape": cfg.host_shape, "budget": vars(cfg.budget),
                   "time_budget_s": cfg.time_budget, "not_run": []},
        "rows": [],
    }
    stamp = {"device": env["device"], "timestamp": env["timestamp"], "version": env["version"]}

    counter = itertools.count(1)

    group_load = load.load_average()

    def progress(row):
        # The load as the row's group started and as the row ended: lstm_attn.bench.load judges the row by both.
        row["load_before"], row["load_after"] = group_load, load.load_average()
        elapsed = time.perf_counter() - started
        flag = f" [{load.describe(row, env)}]" if load.busy(row, env) else ""
        print(f"[{next(counter):>{len(str(total))}}/{total} {elapsed:4.0f}s] {progress_line(row)}{flag}", flush=True)

    for description, _, build in specs:
        if cfg.time_budget is not None and time.perf_counter() - started > cfg.time_budget:
            doc["config"]["not_run"].append(description)
            continue
        group_load = load.load_average()
        try:
            rows = run_group(build(), cfg.device, cfg.budget, ceilings, stamp, progress)
        except Exception as exc:  # noqa: BLE001  (the inputs of one group did not fit, say; the rest can run)
            print(f"  {description}: could not set up: {type(exc).__name__}: {exc}", flush=True)
            doc["config"]["not_run"].append(f"{description} ({type(exc).__name__}: {exc})")
            continue
        doc["rows"].extend(rows)
        schema.dump(doc, path)
        if cfg.device.type == "cuda":
            torch.cuda.empty_cache()  # the next shape's inputs get the whole device
    if scaling.CASE in cfg.cases:
        if cfg.time_budget is not None and time.perf_counter() - started > cfg.time_budget:
            doc["config"]["not_run"].append(f"{scaling.CASE}: every point")
        else:
            B, H = cfg.scaling_shape
            group_load = load.load_average()
            doc["rows"].extend(scaling.scaling_rows(cfg.device, cfg.scaling_Ts, H=H, B=B, time_cap=cfg.time_cap,
                                                    progress=progress, stamp=stamp))
            doc["models"][scaling.CASE] = scaling.__doc__.strip()
    schema.dump(doc, path)
    if doc["config"]["not_run"]:
        print(f"not run (time budget of {cfg.time_budget} s spent, or set-up failed): "
              + "; ".join(doc["config"]["not_run"]), flush=True)
    print(f"wrote {path} ({len(doc['rows'])} rows, {time.perf_counter() - started:.0f} s)\n", flush=True)
    busy = sum(bool(load.busy(row, env)) for row in doc["rows"])
    if busy:
        print(f"warning: {busy} of {len(doc['rows'])} rows were timed while other processes kept this machine busy "
              f"(marked {BUSY_MARK} in the tables; lstm_attn.bench.load): rerun them on a quiet machine\n",
              flush=True)
    print(timing_sections(merge([Run(str(path), doc)])), flush=True)
    return 0
