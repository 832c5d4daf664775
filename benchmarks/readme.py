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
title line). FILE paths are relative
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

from lstm_attn.bench import report
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
