"""The one JSON format of every benchmark result file, and its reader and writer.

A file is one run on one device:
  {"schema": SCHEMA, "env": {...}, "ceilings": {...}, "models": {...}, "config": {...}, "rows": [row, ...]}
Each row is flat, after Liger-Kernel's benchmark rows (kernel/provider/mode/metric/unit/x/quantiles/gpu/version):
  case, pass, backend, kind ("ours" or "peer"), dtype, shape ({"B", "T", "H", ...}), tokens (B * T),
  status ("ok", or "refused: why" / "skipped: why" / "error: why" with no timing),
  timing: the question the row answers (lstm_attn.bench.timing): "graph" (device time), "eager" (synchronised
    wall time per call) or "host" (the host's time to issue a call),
  method: how its time was taken: "cuda-graph", "synchronised", "host-issue"; a graph row whose call could not
    be captured holds "synchronised" and says why in detail; schema 1's GPU rows read as "unsynchronised-events",
  detail: a note or null (which SDPA kernel ran, why a graph fell back),
  metric "time", unit "ms", ms_p20, ms_p50, ms_p80, reps,
  parity_err (max |x - float64 reference| / max(1, max |reference|)), speedup_vs_reference, best_peer,
  speedup_vs_best_peer (against rows of the same timing), flops, bytes, tflops, gbps, tflops_fraction,
  gbps_fraction (of the measured ceilings; null for host rows), peak_mb (the peak memory of the timed calls, where
  the case measures it: model_scaling), device, timestamp, version. model_scaling rows add base_mb (what was held
  before the timed steps; may be null), so that the report can tell the step's own memory from the process's.
Files of schema 1 (no timing, method or detail) are read and upgraded: their CPU rows were synchronised wall
times, their GPU rows CUDA events recorded without a synchronize.
"""

from __future__ import annotations

import json
from numbers import Real
from pathlib import Path

# Every result file (the sweep's, profile's, host_cost.py's, tune_triton.py's) is written by this one strict writer.
from lstm_attn.strict_json import write as write_json

SCHEMA = "lstm_attn.bench/2"
READABLE = ("lstm_attn.bench/1", SCHEMA)
TIMINGS = ("graph", "eager", "host")
METHODS = ("cuda-graph", "synchronised", "host-issue", "unsynchronised-events")

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
    "timing": (_STR, False),
    "method": (_STR, True),
    "detail": (_STR, True),
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
    "peak_mb": (_NUM, True),
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
    if row["timing"] not in TIMINGS:
        raise SchemaError(f"{where}.timing must be one of {TIMINGS}, got {row['timing']!r}")
    if row["method"] is not None and row["method"] not in METHODS:
        raise SchemaError(f"{where}.method must be one of {METHODS} or null, got {row['method']!r}")
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


def upgrade(doc: dict) -> dict:
    """A schema-1 document as schema 2: every row an eager one, its method what schema 1 did on its device."""
    if not isinstance(doc, dict) or doc.get("schema") != READABLE[0] or not isinstance(doc.get("rows"), list):
        return doc
    gpu = isinstance(doc.get("env"), dict) and doc["env"].get("device_type") == "cuda"
    method = "unsynchronised-events" if gpu else "synchronised"
    rows = [{**row, "timing": "eager", "method": method if row.get("status") == "ok" else None, "detail": None,
             "peak_mb": None}
            if isinstance(row, dict) else row for row in doc["rows"]]
    return {**doc, "schema": SCHEMA, "rows": rows}


def validate(doc, source: str = "result") -> None:
    """Raise SchemaError naming `source` and the first field that breaks SCHEMA."""
    if not isinstance(doc, dict):
        raise SchemaError(f"{source}: the top level must be a JSON object, got {type(doc).__name__}")
    if doc.get("schema") != SCHEMA:
        raise SchemaError(f"{source}: schema is {doc.get('schema')!r}; this version reads {', '.join(READABLE)}")
    for field, types in TOP_FIELDS.items():
        if not isinstance(doc.get(field), types):
            raise SchemaError(f"{source}: field {field!r} is missing or not a {types[0].__name__}")
    for field in ENV_FIELDS:
        if not isinstance(doc["env"].get(field), str):
            raise SchemaError(f"{source}: env.{field} is missing or not a string")
    for i, row in enumerate(doc["rows"]):
        validate_row(row, f"{source}: rows[{i}]")


def read(path) -> dict:
    """One JSON file as it is, of any schema; a SchemaError naming the file if it cannot be read."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SchemaError(f"cannot read result file {path}: {exc}") from exc
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise SchemaError(f"{path} is not JSON: {exc}") from exc


def load(path, doc: dict | None = None) -> dict:
    """Read (unless `doc` holds it already), upgrade (schema 1) and validate one result file; every failure is a
    SchemaError naming the file."""
    doc = upgrade(read(path) if doc is None else doc)
    validate(doc, str(path))
    return doc


def dump(doc: dict, path) -> None:
    """Validate, then write atomically, so a run killed mid-write leaves the previous complete file."""
    validate(doc, str(path))
    write_json(doc, path)
