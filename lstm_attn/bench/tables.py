"""The few formatting rules every table of the benchmarks shares (the report's, the profile's, the sweep's
printout): how a time is written and how a markdown table is laid out."""

from __future__ import annotations


def fmt_ms(x: float | None) -> str:
    return "–" if x is None else f"{x:.0f}" if x >= 100 else f"{x:.1f}" if x >= 10 else f"{x:.3g}"


def markdown_table(header: list[str], body: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in body])
