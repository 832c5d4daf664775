"""Result files of fake rows, for benchmarks/device_check.sh's DRY_RUN: each file that a stage would write, valid in
lstm_attn.bench.schema, with a few made-up rows of its case (a peer and ours at two shapes), so that the report and
the packing run over the same names as on a GPU. Nothing in them was measured: every row's detail says so.

    python benchmarks/fake_results.py FILE:CASE [FILE:CASE ...]
"""

from __future__ import annotations

import datetime
import sys
from pathlib import Path

from lstm_attn.bench import cases, lstm_rows, model_step, scaling, schema

# case -> (pass, a peer, ours, the shape's keys beside B, T and H), as the real rows have them
_LAYERED = {"input_size": model_step.INPUT_SIZE, "layers": model_step.LAYERS}
CASES = {cases.CASE: ("fwd+bwd", "sdpa", "cuda", {}),
         lstm_rows.CASE: ("fwd+bwd", "reference", "cuda", {"input_size": lstm_rows.INPUT_SIZE,
                                                                 "layers": lstm_rows.LAYERS}),
         model_step.CASE: ("step", "reference", "cuda", _LAYERED),
         scaling.CASE: (scaling.PASS, scaling.SEED, "cuda", _LAYERED)}


def fake_doc(case: str) -> dict:
    pass_, peer, ours, extra = CASES[case]
    now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    rows = []
    for T in (256, 1024):
        for backend, ms in ((peer, 2.0 * T / 256), (ours, 1.0 * T / 256)):
            rows.append({
                "case": case, "pass": pass_, "backend": backend, "kind": "peer" if backend == peer else "ours",
                "dtype": "bfloat16", "shape": {"B": 256, "T": T, "H": 128, **extra}, "tokens": 256 * T, "status": "ok",
                "timing": "graph", "method": "cuda-graph", "detail": "fake row (DRY_RUN): nothing was measured",
                "metric": "time", "unit": "ms", "ms_p20": 0.9 * ms, "ms_p50": ms, "ms_p80": 1.1 * ms, "reps": 10,
                "parity_err": 1e-3, "speedup_vs_reference": None, "best_peer": peer,
                "speedup_vs_best_peer": 2.0 * T / 256 / ms, "flops": 1e12, "bytes": 1e9, "tflops": 1e9 / ms / 1e9,
                "gbps": 1e6 / ms / 1e9, "tflops_fraction": 0.1, "gbps_fraction": 0.1, "peak_mb": 100.0,
                "device": "fake GPU", "timestamp": now, "version": "0.1.0"})
    env = {"device": "fake GPU", "device_type": "cuda", "timestamp": now, "torch": "fake", "version": "0.1.0",
           "git_commit": "fake"}
    return {"schema": schema.SCHEMA, "env": env, "ceilings": {"copy_gbps": 1.0, "matmul_tflops": {"bfloat16": 1.0}},
            "models": {}, "config": {}, "rows": rows}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    for item in argv:
        path, _, case = item.rpartition(":")
        if case not in CASES:
            print(f"fake_results: unknown case {case!r} in {item!r}; cases: {', '.join(CASES)}", file=sys.stderr)
            return 2
        schema.dump(fake_doc(case), Path(path))
    print(f"fake_results: wrote {len(argv)} files of fake rows")
    return 0


if __name__ == "__main__":
    sys.exit(main())
