"""JSON read as a strict parser reads it: Python's json.loads takes NaN and Infinity, which are not JSON."""

import json
from pathlib import Path


def _refuse(constant: str):
    raise ValueError(f"{constant} is not JSON")


def strict_load(path: Path):
    return json.loads(Path(path).read_text(), parse_constant=_refuse)
