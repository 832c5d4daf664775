"""`lstm-attn report`: merge result files (one per device and run) into a markdown table and PNG plots.

Where several files hold the same row (device, case, pass, backend, dtype, shape), the latest run wins.
Writes <out>/<stem>.md, <stem>-speedup.png and <stem>-tflops.png, and prints the markdown (unless --quiet).
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

from lstm_attn.bench import schema

# The performance goals the benchmarks report against (from the issues), checked on every matching row.
GOALS = (
    {"device_type": "cuda", "case": "attention_layernorm", "pass": "fwd+bwd", "backends": ("triton", "cuda"),
     "tokens": (16384,), "T": (256, 1024), "H": (64, 128, 256, 512), "dtypes": ("float32", "bfloat16"),
     "vs": {"reference": 2.0, "sdpa": 1.3}},
    {"device_type": "cpu", "case": "attention_layernorm", "pass": "fwd+bwd", "backends": ("cpu",),
     "tokens": (8192,), "T": (256,), "H": (128,), "dtypes": ("float32",), "vs": {"reference": 1.5}},
)
PLOTTED = {"attention_layernorm": "fwd+bwd", "model_step": "step"}  # the pass each case's plots show


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("files", nargs="+", help="result files written by `lstm-attn bench`")
    parser.add_argument("--out", default="bench-report", help="output folder (default: %(default)s)")
    parser.add_argument("--stem", default="report", help="file name stem of the outputs (default: %(default)s)")
    parser.add_argument("--quiet", action="store_true", help="write the files without printing the markdown")


def _key(row: dict) -> tuple:
    return (row["device"], row["case"], row["pass"], row["backend"], row["dtype"], tuple(sorted(row["shape"].items())))


def merge(docs: list[dict]) -> tuple[list[dict], dict[str, dict]]:
    """The rows, the latest of each kind per device, in first-seen order; and each device's latest env."""
    latest: dict[tuple, dict] = {}
    envs: dict[str, dict] = {}
    for doc in sorted(docs, key=lambda d: d["env"]["timestamp"]):
        for row in doc["rows"]:
            latest[_key(row)] = row
        envs[doc["env"]["device"]] = {**doc["env"], "ceilings": doc["ceilings"]}
    order = {}
    for doc in docs:
        for row in doc["rows"]:
            order.setdefault(_key(row), len(order))
    return sorted(latest.values(), key=lambda r: order[_key(r)]), envs


def fmt_ms(x: float | None) -> str:
    return "–" if x is None else f"{x:.0f}" if x >= 100 else f"{x:.1f}" if x >= 10 else f"{x:.3g}"


def _x(x: float | None) -> str:
    return "–" if x is None else f"{x:.2f}x"


def markdown_table(header: list[str], body: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in body])


def _unique(values) -> list:
    return list(dict.fromkeys(values))


def _shape_key(row: dict) -> tuple:
    return row["dtype"], row["shape"]["B"], row["shape"]["T"], row["shape"]["H"]


def _env_line(env: dict) -> str:
    if env["device_type"] == "cuda":
        hw = (f"{env.get('sm_count')} SMs, {env.get('memory_gib')} GiB, driver {env.get('driver')}, "
              f"CUDA {env.get('cuda')}")
    else:
        hw = (f"{env.get('cores')} cores ({env.get('cpu_capability', 'ISA not recorded')}), "
              f"{env.get('torch_threads')} torch threads (load {env.get('load_average_1min')} at the start), "
              f"{env.get('memory_gib')} GiB")
    c = env["ceilings"]
    mm = ", ".join(f"{d} {v:.3g}" for d, v in c["matmul_tflops"].items())
    return (f"{hw}; torch {env['torch']}, triton {env.get('triton')}, lstm_attn {env['version']}, "
            f"commit {env['git_commit']}, run {env['timestamp']}. Measured ceilings: copy {c['copy_gbps']:.3g} "
            f"GB/s, matmul TFLOP/s {mm}.")


def device_tables(docs: list[dict]) -> str:
    """Per device, case and pass: ms (p50) of every backend and peer per (dtype, B, T, H), and the speedup of
    each of our backends vs the reference and vs the best peer."""
    rows, envs = merge(docs)
    parts = []
    for device, env in envs.items():
        parts.append(f"### {device}\n\n{_env_line(env)}\n")
        mine = [r for r in rows if r["device"] == device]
        for case, pass_ in _unique((r["case"], r["pass"]) for r in mine):
            sel = [r for r in mine if r["case"] == case and r["pass"] == pass_]
            backends = _unique(r["backend"] for r in sel)
            ours = _unique(r["backend"] for r in sel if r["kind"] == "ours")
            # With the reference as the only peer, "vs best peer" would repeat "vs reference".
            peers = {r["backend"] for r in sel if r["kind"] == "peer"}
            labels = ("ref", "best peer") if len(peers) > 1 else ("ref",)
            cells = {(_shape_key(r), r["backend"]): r for r in sel}
            header = ["dtype", "B", "T", "H", *(f"{b} ms" for b in backends),
                      *(f"{b} ×{label}" for b in ours for label in labels)]
            body = []
            for shape in _unique(_shape_key(r) for r in sel):
                line = [str(v) for v in shape]
                for b in backends:
                    r = cells.get((shape, b))
                    line.append("" if r is None else fmt_ms(r["ms_p50"]) if r["status"] == "ok"
                                else r["status"].split(":")[0])
                for b in ours:
                    r = cells.get((shape, b))
                    ok = r is not None and r["status"] == "ok"
                    line.append(_x(r["speedup_vs_reference"]) if ok else "–")
                    if len(labels) > 1:
                        line.append(f"{_x(r['speedup_vs_best_peer'])} ({r['best_peer']})"
                                    if ok and r["best_peer"] else "–")
                body.append(line)
            parts.append(f"**{case} {pass_}** (ms: median; ×: speedup)\n\n{markdown_table(header, body)}\n")
    return "\n".join(parts)


def cross_device_table(rows: list[dict]) -> str:
    """Speedup vs the reference (and vs the best peer) per backend and device, per case, pass and shape."""
    devices = _unique(r["device"] for r in rows)
    ours = _unique(r["backend"] for r in rows if r["kind"] == "ours")
    columns = [(d, b) for d in devices for b in ours if any(r["device"] == d and r["backend"] == b for r in rows)]
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


def goals_table(rows: list[dict], envs: dict[str, dict]) -> str:
    p50 = {(r["device"], r["case"], r["pass"], *_shape_key(r), r["backend"]): r["ms_p50"]
           for r in rows if r["status"] == "ok"}
    body = []
    for goal in GOALS:
        for r in rows:
            if (envs[r["device"]]["device_type"] != goal["device_type"] or r["case"] != goal["case"]
                    or r["pass"] != goal["pass"] or r["backend"] not in goal["backends"] or r["status"] != "ok"
                    or r["tokens"] not in goal["tokens"] or r["shape"]["T"] not in goal["T"]
                    or r["shape"]["H"] not in goal["H"] or r["dtype"] not in goal["dtypes"]):
                continue
            verdicts, met = [], True
            for peer, target in goal["vs"].items():
                peer_ms = p50.get((r["device"], r["case"], r["pass"], *_shape_key(r), peer))
                if peer_ms is None:
                    verdicts.append(f"vs {peer}: not measured")
                    met = False
                    continue
                speedup = peer_ms / r["ms_p50"]
                met &= speedup >= target
                verdicts.append(f"vs {peer} {speedup:.2f}x (goal {target}x)")
            body.append([r["device"], r["backend"], *map(str, _shape_key(r)), "; ".join(verdicts),
                         "yes" if met else "**no**"])
    return markdown_table(["device", "backend", "dtype", "B", "T", "H", "speedups", "met"], body) if body else \
        "No row matches a goal's shape, dtype and backend."


def not_timed(rows: list[dict]) -> str:
    counts = defaultdict(int)
    for r in rows:
        if r["status"] != "ok":
            counts[(r["device"], r["backend"], r["status"])] += 1
    return "\n".join(f"- {d}, {b} ({n} row{'s' if n > 1 else ''}): {s}" for (d, b, s), n in counts.items()) or "None."


def markdown(docs: list[dict], sources: list[str]) -> str:
    rows, envs = merge(docs)
    src = "\n".join(f"- {s}: {d['env']['device']}, {d['env']['timestamp']}, commit {d['env']['git_commit']}"
                    for s, d in zip(sources, docs))
    parts = ["# lstm_attn benchmarks", f"Sources:\n{src}",
             "## Speedup vs reference (vs best peer), per backend and device", cross_device_table(rows),
             "## Goals", goals_table(rows, envs),
             "## Per device", device_tables(docs),
             "## Rows not timed", not_timed(rows)]
    return "\n\n".join(parts) + "\n"


def plot(rows: list[dict], metric: str, ylabel: str, path: Path) -> None:
    """One panel per device (rows) and H (columns): `metric` against T, one line per backend and dtype."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    case = next((c for c in PLOTTED if any(r["case"] == c for r in rows)), None)
    sel = [r for r in rows if r["case"] == case and r["pass"] == PLOTTED.get(case) and r["status"] == "ok"
           and r[metric] is not None and not (metric == "speedup_vs_reference" and r["backend"] == "reference")]
    devices = _unique(r["device"] for r in sel) or ["(no timed rows)"]
    Hs = sorted({r["shape"]["H"] for r in sel}) or [0]
    backends = _unique(r["backend"] for r in rows)
    colors = {b: plt.get_cmap("tab10")(i % 10) for i, b in enumerate(backends)}
    styles = ["-", "--", ":", "-."]
    dtypes = _unique(r["dtype"] for r in sel)
    fig, axes = plt.subplots(len(devices), len(Hs), figsize=(3.6 * len(Hs) + 1, 2.8 * len(devices) + 0.8),
                             squeeze=False)
    for i, device in enumerate(devices):
        for j, H in enumerate(Hs):
            ax = axes[i][j]
            for b in backends:
                for k, dtype in enumerate(dtypes):
                    pts = sorted((r["shape"]["T"], r[metric]) for r in sel
                                 if r["device"] == device and r["shape"]["H"] == H and r["backend"] == b
                                 and r["dtype"] == dtype)
                    if pts:
                        ax.plot(*zip(*pts), marker="o", color=colors[b], linestyle=styles[k % len(styles)],
                                label=f"{b} {dtype}")
            if metric == "speedup_vs_reference":
                ax.axhline(1.0, color="gray", linewidth=0.8)
            ax.set_xscale("log", base=2)
            Ts = sorted({r["shape"]["T"] for r in sel if r["device"] == device and r["shape"]["H"] == H})
            ax.set_xticks(Ts, [str(T) for T in Ts])
            ax.minorticks_off()
            ax.set_title(f"{device}\nH={H}", fontsize=8)
            ax.set_xlabel("T")
            ax.set_ylabel(ylabel)
            ax.tick_params(labelsize=7)
    handles, labels = axes[0][0].get_legend_handles_labels()
    for ax in axes.flat:
        for h, label in zip(*ax.get_legend_handles_labels()):
            if label not in labels:
                handles.append(h)
                labels.append(label)
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 4), fontsize=7)
    fig.suptitle(f"{case} {PLOTTED.get(case, '')}: {ylabel}", fontsize=9)
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(args: argparse.Namespace) -> int:
    try:
        docs = [schema.load(p) for p in args.files]
    except schema.SchemaError as exc:
        print(f"lstm-attn report: error: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    text = markdown(docs, args.files)
    md = out / f"{args.stem}.md"
    md.write_text(text, encoding="utf-8")
    rows, _ = merge(docs)
    pngs = [out / f"{args.stem}-speedup.png", out / f"{args.stem}-tflops.png"]
    plot(rows, "speedup_vs_reference", "speedup vs reference", pngs[0])
    plot(rows, "tflops", "TFLOP/s", pngs[1])
    if not args.quiet:
        print(text)
    print("wrote " + ", ".join(map(str, [md, *pngs])), file=sys.stderr)
    return 0
