"""JSON that every strict parser reads: Python's json writes NaN and Infinity, which are not JSON at all.

A figure that was not measured (a throughput of no timed steps, a ratio of nothing) is null in the file, never a
non-finite number. Files are written atomically, so a run killed mid-write leaves the previous complete file.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path


def finite_or_null(value):
    """`value` with every non-finite float in it, however deep, replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite_or_null(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_null(v) for v in value]
    return value


def dumps(value, **kwargs) -> str:
    return json.dumps(finite_or_null(value), allow_nan=False, **kwargs)


def write(value, path, indent: int = 1) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(dumps(value, indent=indent) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path

