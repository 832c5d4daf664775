"""The README's figures, rendered from committed result files: none is typed by hand, and a test re-renders
every one and fails when the README and its files disagree.

A generated block in a markdown file:

    <!-- generated: KIND FILE [FILE ...] -->
    (what the renderer wrote)
    <!-- end generated -->

KIND is one of RENDERERS: `graph`, `eager` and `host` the sweep tables of that timing, `goals` the goals table,
`profile` a profile's table, `kernels` a summary of a `lstm-attn kernels --json` file, `scaling` the
model_scaling tables (time and peak memory against T), `include` a committed markdown result as it is (less its
title line). FILE paths are relative
to the markdown file. `lstm-attn report --readme README.md` rewrites every block; with `--check` it only says
which blocks are stale, and exits 1 if any is.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from pathlib import Path
from typing import Callable

from lstm_attn.bench import report

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
    return report.markdown_table(["kernel", "arch", "instances", "registers", "blocks/SM ≤", "LDL/STL"], body)


def _include(paths: list[Path]) -> str:
    """A committed markdown result (benchmarks/host_cost.py's, say) as it is, less its title line."""
    return "\n\n".join(re.sub(r"\A# [^\n]*\n+", "", p.read_text(encoding="utf-8")).strip() for p in paths)


RENDERERS: dict[str, Callable[[list[Path]], str]] = {
    "graph": _sweep("graph"), "eager": _sweep("eager"), "host": _sweep("host"),
    "goals": _goals, "profile": _profile, "kernels": _kernels, "scaling": _scaling, "include": _include,
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
