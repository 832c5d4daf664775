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

from lstm_attn.bench import cases, model_step, schema
from lstm_attn.bench.ceilings import measure_ceilings
from lstm_attn.bench.env import device_slug, environment
from lstm_attn.bench.group import run_group
from lstm_attn.bench.report import device_tables, fmt_ms
from lstm_attn.bench.timing import Budget

CASES = (cases.CASE, model_step.CASE)

# Defaults per device type; the GPU ones are sized for device_check.sh's time budget on an H100 (an estimate:
# not yet run on a GPU; --time-budget guards it).
DEFAULTS = {
    "cuda": dict(tokens=16384, T="256,1024", H="64,128,256,512", dtypes="float32,bfloat16",
                 model_shapes="256x256,256x1024", model_dtypes="float32,bfloat16-autocast"),
    "cpu": dict(tokens=8192, T="64,128,256", H="64,128", dtypes="float32",
                model_shapes="32x256", model_dtypes="float32"),
}
QUICK = {
    "cuda": dict(tokens=16384, T="256", H="128", dtypes="float32,bfloat16",
                 model_shapes="64x256", model_dtypes="float32,bfloat16-autocast"),
    # The CPU goal's shape alone: with torch.compile's first compilation it still fits in a minute on 2 cores.
    "cpu": dict(tokens=8192, T="256", H="128", dtypes="float32", model_shapes="16x128", model_dtypes="float32"),
}
BUDGETS = {"cuda": Budget(warmup_ms=25, rep_ms=100), "cpu": Budget(warmup_ms=20, rep_ms=250, min_reps=5),
           "quick": Budget(warmup_ms=10, rep_ms=100, min_reps=3)}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    lists = "comma-separated"
    parser.add_argument("--device", choices=("cuda", "cpu"), help="default: cuda when a GPU is visible, else cpu")
    parser.add_argument("--cases", default=cases.CASE, help=f"{lists}: {', '.join(CASES)} (default: %(default)s)")
    defaults = {kind: ",".join(names) for kind, names in cases.DEFAULT_PROVIDERS.items()}
    parser.add_argument("--backends", help=f"{lists}, from {', '.join(cases.PROVIDERS)} (default: cuda: "
                        f"{defaults['cuda']}; cpu: {defaults['cpu']})")
    parser.add_argument("--tokens", type=int, help="B*T of every op shape (default: cuda 16384, cpu 8192)")
    parser.add_argument("--T", dest="T", help=f"{lists} sequence lengths (default: cuda 256,1024; cpu 64,128,256)")
    parser.add_argument("--H", dest="H", help=f"{lists} hidden sizes (default: cuda 64,128,256,512; cpu 64,128)")
    parser.add_argument("--dtypes", help=f"{lists}, from {', '.join(cases.DTYPES)} (default: cuda float32,bfloat16; "
                        "cpu float32)")
    parser.add_argument("--passes", default="fwd+bwd", help=f"{lists}, from {', '.join(cases.PASSES)} "
                        "(default: %(default)s)")
    parser.add_argument("--model-shapes", help=f"{lists} BxT of the model case, input {model_step.INPUT_SIZE}, "
                        f"H {model_step.HIDDEN}, {model_step.LAYERS} layers (default: cuda 256x256,256x1024; "
                        "cpu 32x256)")
    parser.add_argument("--model-dtypes", help=f"{lists}, from {', '.join(model_step.DTYPES)}")
    parser.add_argument("--quick", action="store_true", help="a short sweep, under a minute on CPU: T 256, H 128, model shapes "
                        "16x128 (cuda: 64x256)")
    parser.add_argument("--out", default=".", help="result file (*.json), or a folder for <device>-<date>.json "
                        "(default: the current folder)")
    parser.add_argument("--time-budget", type=float, help="seconds: start no new group after this; the file "
                        "lists the groups left out")
    parser.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice); the result "
                        "file records the number used")
    parser.add_argument("--seed", type=int, default=0)


@dataclass
class Config:
    device: torch.device
    cases: list[str]
    providers: list[str]
    tokens: int
    Ts: list[int]
    Hs: list[int]
    dtypes: list[str]
    passes: list[str]
    model_shapes: list[tuple[int, int]]
    model_dtypes: list[str]
    budget: Budget
    out: Path
    quick: bool
    time_budget: float | None
    threads: int | None
    seed: int


def names_in(text: str, option: str, known) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise ValueError(f"{option} is empty")
    for n in names:
        if n not in known:
            raise ValueError(f"{option} has unknown value {n!r}; choose from {', '.join(known)}")
    return names


def positive_ints(text: str, what: str) -> list[int]:
    values = []
    for item in text.split(","):
        try:
            value = int(item)
        except ValueError:
            raise ValueError(f"{what} must be comma-separated positive integers, got {text!r}") from None
        if value <= 0:
            raise ValueError(f"{what} must be positive, got {value}")
        values.append(value)
    return values


def _model_shapes(text: str) -> list[tuple[int, int]]:
    shapes = []
    for item in text.split(","):
        parts = item.lower().split("x")
        if len(parts) != 2:
            raise ValueError(f"--model-shapes takes BxT items such as 256x1024, got {item!r}")
        B, T = positive_ints(",".join(parts), f"--model-shapes item {item!r}")
        shapes.append((B, T))
    return shapes


def device_kind(requested: str | None) -> str:
    """--device, defaulting to cuda when a GPU is visible; asking for a missing GPU is an error."""
    kind = requested or ("cuda" if torch.cuda.is_available() else "cpu")
    if kind == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda, but torch sees no CUDA GPU here")
    return kind


def sequence_lengths(tokens: int, T_text: str) -> list[int]:
    """--T, each length a divisor of --tokens (B = tokens / T must be whole)."""
    if tokens <= 0:
        raise ValueError(f"--tokens must be positive, got {tokens}")
    Ts = positive_ints(str(T_text), "--T")
    for T in Ts:
        if tokens % T:
            raise ValueError(f"--tokens {tokens} is not a multiple of T = {T}: B = tokens / T must be whole")
    return Ts


def check_limits(time_budget: float | None, threads: int | None) -> None:
    if time_budget is not None and time_budget <= 0:
        raise ValueError(f"--time-budget must be positive seconds, got {time_budget}")
    if threads is not None and threads <= 0:
        raise ValueError(f"--threads must be positive, got {threads}")


def config_from_args(args: argparse.Namespace) -> Config:
    """The sweep to run; a ValueError that names the argument for anything it cannot be."""
    kind = device_kind(args.device)
    given = {k: getattr(args, k) for k in ("tokens", "T", "H", "dtypes", "model_shapes", "model_dtypes")}
    spec = {**(QUICK if args.quick else DEFAULTS)[kind], **{k: v for k, v in given.items() if v is not None}}
    tokens = spec["tokens"]
    Ts = sequence_lengths(tokens, spec["T"])
    check_limits(args.time_budget, args.threads)
    out = Path(args.out)
    return Config(
        device=torch.device(kind),
        cases=names_in(args.cases, "--cases", CASES),
        providers=names_in(args.backends or ",".join(cases.DEFAULT_PROVIDERS[kind]), "--backends", cases.PROVIDERS),
        tokens=tokens, Ts=Ts, Hs=positive_ints(str(spec["H"]), "--H"),
        dtypes=names_in(spec["dtypes"], "--dtypes", cases.DTYPES),
        passes=names_in(args.passes, "--passes", cases.PASSES),
        model_shapes=_model_shapes(spec["model_shapes"]),
        model_dtypes=names_in(spec["model_dtypes"], "--model-dtypes", model_step.DTYPES),
        budget=BUDGETS["quick" if args.quick else kind], out=out, quick=args.quick,
        time_budget=args.time_budget, threads=args.threads, seed=args.seed,
    )


def _group_specs(cfg: Config):
    """(description, number of candidates, build) for every group, in the order they run."""
    specs = []
    if cases.CASE in cfg.cases:
        # Shapes outermost: a sweep cut short by --time-budget still has every dtype of the shapes it ran.
        for T in cfg.Ts:
            for H in cfg.Hs:
                for dtype in cfg.dtypes:
                    for pass_ in cfg.passes:
                        B = cfg.tokens // T
                        specs.append((f"{cases.CASE} {pass_} {dtype} B={B} T={T} H={H}", len(cfg.providers),
                                      lambda p=pass_, d=dtype, B=B, T=T, H=H: cases.op_group(
                                          p, cases.DTYPES[d], B, T, H, cfg.providers, cfg.device, cfg.seed)))
    if model_step.CASE in cfg.cases:
        ours = len(model_step.OUR_BACKENDS[cfg.device.type])
        for B, T in cfg.model_shapes:
            for dtype in cfg.model_dtypes:
                for pass_ in model_step.PASSES:
                    specs.append((f"{model_step.CASE} {pass_} {dtype} B={B} T={T}",
                                  1 if pass_ == "lstm" else 1 + ours,
                                  lambda p=pass_, d=dtype, B=B, T=T: model_step.model_group(
                                      p, d, B, T, cfg.device, cfg.seed)))
    return specs


def progress_line(row: dict) -> str:
    shape = " ".join(f"{k}={v}" for k, v in row["shape"].items())
    head = f"{row['case']} {row['pass']} {row['dtype']} {shape} {row['backend']}:"
    if row["status"] != "ok":
        return f"{head} {row['status']}"
    line = (f"{head} {fmt_ms(row['ms_p50'])} ms (p20 {fmt_ms(row['ms_p20'])}, p80 {fmt_ms(row['ms_p80'])}), "
            f"{row['tflops']:.3g} TFLOP/s, {row['gbps']:.3g} GB/s")
    return line + (f", {row['parity_err']:.1e} off" if row["parity_err"] is not None else "")


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
    dtypes = set()
    if cases.CASE in cfg.cases:
        dtypes |= {cases.DTYPES[d] for d in cfg.dtypes}
    if model_step.CASE in cfg.cases:
        dtypes |= {model_step.DTYPES[d][0] for d in cfg.model_dtypes}
    ceilings = measure_ceilings(cfg.device, sorted(dtypes, key=str), quick=cfg.quick)
    print(f"  ceilings: copy {ceilings['copy_gbps']:.3g} GB/s, matmul "
          + ", ".join(f"{d} {v:.3g} TFLOP/s" for d, v in ceilings["matmul_tflops"].items()), flush=True)

    specs = _group_specs(cfg)
    total = sum(n for _, n, _ in specs)
    doc = {
        "schema": schema.SCHEMA, "env": env, "ceilings": ceilings,
        "models": {cases.CASE: cases.op_work.__doc__.strip(), model_step.CASE: model_step.model_work.__doc__.strip()},
        "config": {"argv": sys.argv[1:], "quick": cfg.quick, "tokens": cfg.tokens, "budget": vars(cfg.budget),
                   "time_budget_s": cfg.time_budget, "not_run": []},
        "rows": [],
    }
    stamp = {"device": env["device"], "timestamp": env["timestamp"], "version": env["version"]}

    counter = itertools.count(1)

    def progress(row):
        elapsed = time.perf_counter() - started
        print(f"[{next(counter):>{len(str(total))}}/{total} {elapsed:4.0f}s] {progress_line(row)}", flush=True)

    for description, _, build in specs:
        if cfg.time_budget is not None and time.perf_counter() - started > cfg.time_budget:
            doc["config"]["not_run"].append(description)
            continue
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
    schema.dump(doc, path)
    if doc["config"]["not_run"]:
        print(f"not run (time budget of {cfg.time_budget} s spent, or set-up failed): "
              + "; ".join(doc["config"]["not_run"]), flush=True)
    print(f"wrote {path} ({len(doc['rows'])} rows, {time.perf_counter() - started:.0f} s)\n", flush=True)
    print(device_tables([doc]), flush=True)
    return 0
