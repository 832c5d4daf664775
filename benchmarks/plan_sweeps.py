"""Stage 3's plan sweeps (benchmarks/device_check.sh): the attention sweep with each CUDA and each Triton plan forced
in turn, in the dtypes and head dims the plan takes, graph-timed, each into its own result file
plan-<backend>-<plan>-<tag>.json, from which lstm_attn/plans.py's tables are set. One process for all of them, the
time budget shared among the plans still to run: a process per plan would pay Python's, torch's and Triton's start
each time. The peers of the same shapes come from the stage's own sweep.

    python benchmarks/plan_sweeps.py --out-dir DIR --tag TAG --time-budget SECONDS [--dry-run]

--dry-run parses each sweep's arguments and, where the sweep would write its results, writes fake rows
(benchmarks/fake_results.py) for the report to read; it runs nothing and needs no GPU.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

import fake_results
from lstm_attn import plans
from lstm_attn.bench import cases, options, schema, sweep

# The plans that have never been measured first, then the ones whose numbers the tables already cite.
ORDER = (("cuda", "flash"), ("cuda", "gemm"), ("cuda", "gemm3xtf32"), ("triton", "matmul"), ("cuda", "tiled"),
         ("triton", "flash"))
# A share below this measures nothing useful: the plans after it get the time instead.
MIN_SHARE_S = 10.0


def sweep_args(backend: str, plan: str, path: Path, budget: float) -> list[str]:
    """The sweep of one forced plan: its backend alone, in every dtype label and default H the plan takes."""
    cap = plans.CAN_RUN[(backend, "attention")][plan]
    labels = [label for label, dtype in cases.DTYPES.items() if dtype in cap.dtypes and label != "float64"]
    heads = [h for h in options.SWEEP_DEFAULTS["cuda"]["H"].split(",") if cap.max_size is None or int(h) <= cap.max_size]
    return ["--device", "cuda", "--backends", backend, "--timings", "graph", "--host-shape", "none",
            "--dtypes", ",".join(labels), "--H", ",".join(heads), "--out", str(path), "--time-budget", f"{budget:.0f}"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", required=True, type=Path)
    parser.add_argument("--tag", required=True, help="<gpu>-<date>-<commit>: the result files' suffix")
    parser.add_argument("--time-budget", required=True, type=float, help="seconds for all the sweeps together")
    parser.add_argument("--dry-run", action="store_true",
                        help="parse every sweep's arguments and write fake rows; run none")
    args = parser.parse_args(argv)
    missing = {(b, p) for (b, op), can_run in plans.CAN_RUN.items() if op == "attention" and b in ("cuda", "triton")
               for p in can_run} - set(ORDER)
    if missing:
        print(f"plan_sweeps: ORDER leaves out {sorted(missing)}", file=sys.stderr)
        return 1
    bench_parser = argparse.ArgumentParser()
    options.add_bench_arguments(bench_parser)
    started, status = time.perf_counter(), 0
    for i, (backend, plan) in enumerate(ORDER):
        left = args.time_budget - (time.perf_counter() - started)
        share = left / (len(ORDER) - i)
        path = args.out_dir / f"plan-{backend}-{plan}-{args.tag}.json"
        bench_args = bench_parser.parse_args(sweep_args(backend, plan, path, share))
        if args.dry_run:
            options.names_in(bench_args.dtypes, "--dtypes", cases.DTYPES)
            schema.dump(fake_results.fake_doc(cases.CASE), path)
            print(f"plan_sweeps (dry run): {backend} {plan}: --dtypes {bench_args.dtypes} --H {bench_args.H}")
            continue
        if share < MIN_SHARE_S:
            print(f"plan_sweeps: {backend} {plan} not run: {left:.0f} s left for {len(ORDER) - i} plans", flush=True)
            status = 1
            continue
        print(f"== plan_sweeps: {backend} {plan} forced, {share:.0f} s", flush=True)
        with plans.forcing(backend, "attention", plan):
            status |= sweep.run(bench_args)
        torch.cuda.empty_cache()
    return status


if __name__ == "__main__":
    sys.exit(main())
