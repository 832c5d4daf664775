"""The one JSON format of every benchmark result file, and its reader and writer.

A file is one run on one device:
  {"schema": SCHEMA, "env": {...}, "ceilings": {...}, "models": {...}, "config": {...}, "rows": [row, ...]}
Each row is flat, after Liger-Kernel's benchmark rows (kernel/provider/mode/metric/unit/x/quantiles/gpu/version):
  case, pass, backend, kind ("ours" or "peer"), dtype, shape ({"B", "T", "H", ...}), tokens (B * T),
  status ("ok", or "refused: why" / "skipped: why" / "error: why" with no timing), metric "time", unit "ms",
  ms_p20, ms_p50, ms_p80, reps, parity_err (max |x - float64 reference| / max(1, max |reference|)),
  speedup_vs_reference, best_peer,
  speedup_vs_best_peer, flops, bytes, tflops, gbps, tflops_fraction, gbps_fraction (of the measured ceilings),
  device, timestamp, version.
"""

from __future__ import annotations

import json
import os
from numbers import Real
from pathlib import Path

SCHEMA = "lstm_attn.bench/1"

_STR, _INT, _NUM, _DICT = (str,), (int,), (Real,), (dict,)
_OPTIONAL = type(None)

# field -> (allowed types, may be null)
ROW_FIELDS: dict[str, tuple[tuple[type, ...], bool]] = {
    "case": (_STR, False),
    "pass": (_STR, False),
    "backend": (_STR, False),
    "kind": (_STR, False),
    "dtype": (_STR, False),
    "shape": (_DICT, False),
    "tokens": (_INT, False),
    "status": (_STR, False),
    "metric": (_STR, False),
    "unit": (_STR, False),
    "ms_p20": (_NUM, True),
    "ms_p50": (_NUM, True),
    "ms_p80": (_NUM, True),
    "reps": (_INT, True),
    "parity_err": (_NUM, True),
    "speedup_vs_reference": (_NUM, True),
    "best_peer": (_STR, True),
    "speedup_vs_best_peer": (_NUM, True),
    "flops": (_NUM, False),
    "bytes": (_NUM, False),
    "tflops": (_NUM, True),
    "gbps": (_NUM, True),
    "tflops_fraction": (_NUM, True),
    "gbps_fraction": (_NUM, True),
    "device": (_STR, False),
    "timestamp": (_STR, False),
    "version": (_STR, False),
}
TIMED_FIELDS = ("ms_p20", "ms_p50", "ms_p80", "reps")
TOP_FIELDS = {"schema": _STR, "env": _DICT, "ceilings": _DICT, "models": _DICT, "config": _DICT, "rows": (list,)}
ENV_FIELDS = ("device", "device_type", "timestamp", "torch", "version", "git_commit")
KINDS = ("ours", "peer")


class SchemaError(ValueError):
    """A result file that does not follow SCHEMA; the message names the file and the field."""


def _type_ok(value, types: tuple[type, ...], nullable: bool) -> bool:
    if value is None:
        return nullable
    if isinstance(value, bool):  # bool is an int to Python, never a number here
        return False
    return isinstance(value, types)


def validate_row(row, where: str) -> None:
    if not isinstance(row, dict):
        raise SchemaError(f"{where} must be an object, got {type(row).__name__}")
    for field, (types, nullable) in ROW_FIELDS.items():
        if field not in row:
            raise SchemaError(f"{where} has no field {field!r}")
        if not _type_ok(row[field], types, nullable):
            want = " or ".join(t.__name__ for t in types) + (" or null" if nullable else "")
            raise SchemaError(f"{where}.{field} must be {want}, got {row[field]!r}")
    if row["kind"] not in KINDS:
        raise SchemaError(f"{where}.kind must be one of {KINDS}, got {row['kind']!r}")
    for dim in ("B", "T", "H"):
        if not isinstance(row["shape"].get(dim), int):
            raise SchemaError(f"{where}.shape.{dim} must be an integer, got {row['shape'].get(dim)!r}")
    timed = row["status"] == "ok"
    for field in TIMED_FIELDS:
        if timed and row[field] is None:
            raise SchemaError(f"{where} has status 'ok' but no {field}")
        if not timed and row[field] is not None:
            raise SchemaError(f"{where} has status {row['status']!r} yet a timing in {field}")
    if timed and not row["ms_p20"] <= row["ms_p50"] <= row["ms_p80"]:
        raise SchemaError(f"{where}: ms_p20 <= ms_p50 <= ms_p80 does not hold")


def validate(doc, source: str = "result") -> None:
    """Raise SchemaError naming `source` and the first field that breaks SCHEMA."""
    if not isinstance(doc, dict):
        raise SchemaError(f"{source}: the top level must be a JSON object, got {type(doc).__name__}")
    if doc.get("schema") != SCHEMA:
        raise SchemaError(f"{source}: schema is {doc.get('schema')!r}; this version reads {SCHEMA!r}")
    for field, types in TOP_FIELDS.items():
        if not isinstance(doc.get(field), types):
            raise SchemaError(f"{source}: field {field!r} is missing or not a {types[0].__name__}")
    for field in ENV_FIELDS:
        if not isinstance(doc["env"].get(field), str):
            raise SchemaError(f"{source}: env.{field} is missing or not a string")
    for i, row in enumerate(doc["rows"]):
        validate_row(row, f"{source}: rows[{i}]")


def load(path) -> dict:
    """Read and validate one result file; every failure is a SchemaError that names the file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SchemaError(f"cannot read result file {path}: {exc}") from exc
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SchemaError(f"{path} is not JSON: {exc}") from exc
    validate(doc, str(path))
    return doc


def dump(doc: dict, path) -> None:
    """Validate, then write atomically, so a run killed mid-write leaves the previous complete file."""
    validate(doc, str(path))
    write_json(doc, path)


def write_json(doc: dict, path) -> None:
    """Write atomically: a run killed mid-write leaves the previous complete file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    os.replace(tmp, path)
