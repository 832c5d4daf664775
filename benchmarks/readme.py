"""The READMEs' figures, rendered from committed result files: none is typed by hand, and a test re-renders
every one and fails when a README and its files disagree (developer tooling).

    python benchmarks/readme.py [--check] [MARKDOWN ...]      (default: README.md and benchmarks/README.md)

A generated block in a markdown file:

    <!-- generated: KIND FILE [FILE ...] -->
    (what the renderer wrote)
    <!-- end generated -->

KIND is one of RENDERERS: `graph`, `eager` and `host` the sweep tables of that timing, `goals` the goals table,
`profile` a profile's table, `kernels` a summary of a `benchmarks/kernel_resources.py --json` file, `scaling` the
model_scaling tables (time and peak memory against T), `include` a committed markdown result as it is (less its
title line), `summary` the range of speedups per machine, case and backend. FILE paths are relative
to the markdown file. The script rewrites every block; with `--check` it only says which blocks are stale, and
exits 1 if any is.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import defaultdict
from pathlib import Path
from typing import Callable

from lstm_attn.bench import load, report
from lstm_attn.bench.tables import markdown_table

BLOCK = re.compile(r"(<!-- generated: (?P<spec>[^>]*?) -->\n)(?P<body>.*?)(<!-- end generated -->)", re.DOTALL)


def _sweep(timing: str) -> Callable[[list[Path]], str]:
    def render(paths: list[Path]) -> str:
        benches, _ = report.load_runs([str(p) for p in paths])
        return report.timing_tables(report.merge(benches), timing, heading="####")
    return render


def _scaling(paths: list[Path]) -> str:
    benches, _ = report.load_runs([str(p) for p in paths])
    return report.scaling_tables(report.merge(benches), heading="####")


def _goals(paths: list[Path]) -> str:
    benches, _ = report.load_runs([str(p) for p in paths])
    return report.goals_table(report.merge(benches))


def _profile(paths: list[Path]) -> str:
    _, profiles = report.load_runs([str(p) for p in paths])
    return report.profile_sections(profiles).replace("\n### ", "\n#### ").removeprefix("### ")


def _kernels(paths: list[Path]) -> str:
    """Per kernel family (its name before the template arguments): how many instantiations, their registers,
    blocks per SM and spills."""
    families = defaultdict(list)
    for path in paths:
        for k in json.loads(path.read_text()):
            families[(k["name"].split("<")[0], k["arch"])].append(k)
    body = []
    for (name, arch), ks in sorted(families.items()):
        regs = sorted(k["registers"] for k in ks)
        blocks = sorted(k["blocks_per_sm"] for k in ks if k["blocks_per_sm"] is not None)
        limits = sorted({k["limited_by"] for k in ks})
        body.append([f"`{name}`", arch, str(len(ks)), f"{regs[0]}–{regs[-1]}",
                     f"{blocks[0]}–{blocks[-1]} ({', '.join(limits)})" if blocks else ", ".join(limits),
                     str(sum(k["local_accesses"] for k in ks))])
    return markdown_table(["kernel", "arch", "instances", "registers", "blocks/SM ≤", "LDL/STL"], body)


def _include(paths: list[Path]) -> str:
    """A committed markdown result (benchmarks/host_cost.py's, say) as it is, less its title line."""
    return "\n\n".join(re.sub(r"\A# [^\n]*\n+", "", p.read_text(encoding="utf-8")).strip() for p in paths)


# The cases a reader asks "is it faster?" about, what ours is compared with in each, and how the row is named.
_SUMMARY_CASES = {
    ("model_step", "step"): "the model's training step (forward, loss, backward, Adam)",
    ("model_scaling", "step"): "the model's training step, T from {T}",
    ("lstm", "fwd+bwd"): "the LSTM, forward and backward",
    ("lstm", "fwd"): "the LSTM, forward (inference)",
    ("attention_layernorm", "fwd+bwd"): "attention + residual + LayerNorm, forward and backward",
}


_PEER_NAMES = {"seed": "the original model", "reference": "eager PyTorch", "sdpa": "SDPA", "compile": "torch.compile",
               ("lstm", "reference"): "PyTorch's LSTM"}


def _summary(paths: list[Path]) -> str:
    """What is faster today: per machine, case and backend of ours, the range of speedups over the best peer of
    the same run (the original model for the model's cases), over every shape and dtype timed, with the marks of
    rows whose timing was flawed (‡) or taken on a busy machine (§)."""
    benches, _ = report.load_runs([str(p) for p in paths])
    groups: dict[tuple, list[tuple[report.Run, dict]]] = defaultdict(list)
    for run, row in report.merge(benches):
        what = (row["case"], row["pass"])
        if what in _SUMMARY_CASES and row["kind"] == "ours" and row["status"] == "ok" and \
                row.get("speedup_vs_best_peer") is not None:
            groups[(run.env["device"], run.env["device_type"], what, row["backend"])].append((run, row))
    body, marks = [], set()
    for (device, device_type, what, backend), pairs in groups.items():
        rows = [row for _, row in pairs]
        run = pairs[0][0]
        # A CPU row is synchronised eager time by design; on a GPU that, or unsynchronised events, is a mark.
        flawed = {report.MARKS.get(r.get("method"), "") for r in rows} if device_type == "cuda" else set()
        mark = "".join(sorted(flawed | {report.BUSY_MARK if load.busy(r, run.env) else "" for r in rows}))
        marks.update(mark)
        speedups = sorted(r["speedup_vs_best_peer"] for r in rows)
        Ts = sorted({r["shape"]["T"] for r in rows})
        Hs = sorted({r["shape"]["H"] for r in rows})
        peers = sorted({r["best_peer"] for r in rows})
        machine = device if device_type == "cuda" else f"{device} ({run.env.get('cores')} cores)"
        span = f"{speedups[0]:.2f}x" if len(speedups) == 1 else f"{speedups[0]:.2f}x – {speedups[-1]:.2f}x"
        body.append([machine, _SUMMARY_CASES[what].format(T=f"{Ts[0]} to {Ts[-1]}"),
                     f"`{backend.removeprefix('ours-')}`", ", ".join(sorted({r["dtype"] for r in rows})),
                     ", ".join(map(str, Hs)), str(len(rows)), ", ".join(_PEER_NAMES.get((what[0], p), _PEER_NAMES.get(p, p)) for p in peers),
                     span + mark, f"`{Path(run.source).name}`"])
    notes = [report.MARK_NOTES[m] for m in sorted(marks) if m in report.MARK_NOTES]
    table = markdown_table(["machine", "what", "backend", "dtype", "H", "shapes", "against", "speedup", "file"], body)
    return table + "".join(f"\n\n{m} {n}" for m, n in zip(sorted(m for m in marks if m in report.MARK_NOTES),
                                                           notes))


RENDERERS: dict[str, Callable[[list[Path]], str]] = {
    "graph": _sweep("graph"), "eager": _sweep("eager"), "host": _sweep("host"),
    "goals": _goals, "profile": _profile, "kernels": _kernels, "scaling": _scaling, "include": _include,
    "summary": _summary,
}


def render(spec: str, base: Path) -> str:
    kind, *files = spec.split()
    if kind not in RENDERERS:
        raise ValueError(f"generated block {spec!r}: unknown kind {kind!r}; kinds: {', '.join(RENDERERS)}")
    if not files:
        raise ValueError(f"generated block {spec!r} names no file")
    paths = [base / f for f in files]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise ValueError(f"generated block {spec!r}: no file {', '.join(missing)}")
    return RENDERERS[kind](paths).strip() + "\n"


def update(markdown_path: Path, check: bool = False) -> list[str]:
    """Re-render every block of the file (in place unless `check`); the specs of the blocks that changed."""
    text = markdown_path.read_text(encoding="utf-8")
    stale = []

    def replace(m: re.Match) -> str:
        body = render(m["spec"], markdown_path.parent)
        if body != m["body"]:
            stale.append(m["spec"])
        return m.group(1) + body + m.group(4)

    new = BLOCK.sub(replace, text)
    if not check and new != text:
        markdown_path.write_text(new, encoding="utf-8")
    return stale


ROOT = Path(__file__).resolve().parent.parent
DEFAULT_FILES = (ROOT / "README.md", ROOT / "benchmarks" / "README.md")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks/readme.py", description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="*", type=Path, help="markdown files (default: README.md, benchmarks/README.md)")
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a block differs from its files")
    args = parser.parse_args(argv)
    stale_any = False
    for path in args.files or DEFAULT_FILES:
        try:
            stale = update(path, check=args.check)
        except (OSError, ValueError) as exc:  # SchemaError is a ValueError
            print(f"readme: error: {exc}", file=sys.stderr)
            return 2
        stale_any = stale_any or bool(stale)
        verb = "differ from their files" if args.check else "re-rendered"
        print(f"{path}: {len(stale)} generated block(s) {verb}" + "".join(f"\n  {s}" for s in stale), file=sys.stderr)
    return 1 if args.check and stale_any else 0


if __name__ == "__main__":
    sys.exit(main())
