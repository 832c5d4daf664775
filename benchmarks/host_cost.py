"""Host cost of one forward+backward call per provider, measured on a machine without a GPU (a benchmark, not a test).

The triton rows run Triton's real launch path on CPU tensors: the autotuner, JITFunction.run, the project's
launchers and replays, autograd and every allocation. Only the GPU is missing: fake_triton_driver.py (beside
this file) stands in for the driver and compiler, and its stub replaces the compiled kernel's C launcher (so the
C launcher's own work, reading the pointers, packing the arguments and cuLaunchKernel, is not in these numbers,
and no kernel runs). The
reference rows are the seed's eager PyTorch on the same CPU tensors, timed in the same run, the rows taking turns
in short blocks (median per call of the calling thread's CPU time): on a shared machine ratios carry over better
than microseconds.

The cuda backend cannot be measured here: a CPU-only torch has no CUDA device to allocate on and no CUDA kernels
registered, so its calls cannot be dispatched at all. The `cpu` row runs the same C++ op schema, dispatcher and
C++ autograd (csrc/autograd.cpp) that the cuda backend uses, plus its CPU kernels' arithmetic at this tiny shape:
an upper bound on the layers the two share, not the cuda backend's host cost.

usage: python benchmarks/host_cost.py [--B 1 --T 16 --H 64 --dtype bfloat16] [--calls N] [--blocks N] [--json PATH]
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fake_triton_driver  # noqa: E402

fake_triton_driver.install()  # before lstm_attn: its kernels are defined against the fake driver

import torch  # noqa: E402

import lstm_attn  # noqa: E402
import lstm_attn.ops  # noqa: E402,F401  (loads the Triton kernels now, while TRITON_INTERPRET is unset)
from lstm_attn import plans  # noqa: E402
from lstm_attn.bench.env import environment  # noqa: E402
from lstm_attn.bench.tables import markdown_table  # noqa: E402
from lstm_attn.bench.schema import write_json  # noqa: E402

# lstm_attn lets backend="triton" take CPU tensors only under the interpreter. The kernels are already defined,
# compiled-style, against the fake driver (import lstm_attn alone does not load them: lstm_attn.ops above does):
# setting the variable now only opens that device check.
os.environ["TRITON_INTERPRET"] = "1"

STUBBED = ("the compiled Triton kernel's C launcher (a Python stub that counts the launch: its argument packing and "
           "cuLaunchKernel are not in the triton rows, and no kernel runs), the GPU driver (device 0, stream 0, "
           "sm_90) and the compiler; the autotuner's benchmark reports fixed times, so each table's first config "
           "is chosen")


def _no_hook(*args, **kwargs):
    pass


class LaunchHook:
    """A Triton launch hook that does nothing, as a profiler would register one: the replays step aside and
    every launch takes Triton's generic path."""

    def __enter__(self):
        from triton import knobs

        knobs.runtime.launch_enter_hook.add(_no_hook)

    def __exit__(self, *exc):
        from triton import knobs

        knobs.runtime.launch_enter_hook.remove(_no_hook)


class Floor(torch.autograd.Function):
    """Does nothing but what every backend's call must: one output, five saved inputs, six gradients."""

    @staticmethod
    def forward(ctx, q, k, v, residual, weight, bias):
        ctx.save_for_backward(q, k, v, residual, weight)
        return torch.empty_like(q)

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, residual, weight = ctx.saved_tensors
        return q, k, v, residual, weight, weight


def attention_inputs(B, T, H, dtype):
    torch.manual_seed(0)
    leaves = [torch.randn(*s).to(dtype).requires_grad_(True) for s in [(B, T, H)] * 4 + [(H,), (H,)]]
    return leaves, torch.randn(B, T, H).to(dtype)


def pool_inputs(B, T, H, dtype):
    torch.manual_seed(0)
    leaves = [t.to(dtype).requires_grad_(True) for t in (torch.randn(B, T, H), torch.randn(B, H), torch.randn(B))]
    return leaves, torch.randn(B, H).to(dtype)


def providers(B, T, H, dtype):
    """(op, provider, what runs, call) for every row; each call is one forward and torch.autograd.grad."""
    attn, g_attn = attention_inputs(B, T, H, dtype)
    pool, g_pool = pool_inputs(B, T, H, dtype)
    scale = H**-0.5

    def public(fn, leaves, grad, **kwargs):
        return lambda: torch.autograd.grad(fn(*leaves, **kwargs), leaves, grad)

    plan = plans.choose("triton", "attention", dtype, H, queries=T, keys=T)

    def registered():
        out = torch.ops.lstm_attn.triton_attention_layernorm_fwd(*attn, 1e-5, scale, plan)[0]
        return torch.autograd.grad(out, attn, g_attn)

    def with_hook(call):
        def run():
            with LaunchHook():
                return call()
        return run

    ops = lstm_attn.attention_layernorm, lstm_attn.softmax_pool
    rows = [
        ("attention_layernorm", "reference", "eager PyTorch (the seed's arithmetic)",
         public(ops[0], attn, g_attn, backend="reference")),
        ("attention_layernorm", "triton", "public call: autograd.Function, replays",
         public(ops[0], attn, g_attn, backend="triton")),
        ("attention_layernorm", "triton", "public call with a launch hook set: Triton's generic launch path",
         with_hook(public(ops[0], attn, g_attn, backend="triton"))),
        ("attention_layernorm", "triton", "the triton_op registration called directly (torch.library layers)",
         registered),
        ("attention_layernorm", "cpu", "C++ schema, dispatcher and autograd + CPU kernels (not cuda; see above)",
         public(ops[0], attn, g_attn, backend="cpu")),
        ("attention_layernorm", "floor", "a do-nothing autograd.Function on the six inputs: what no backend avoids",
         public(Floor.apply, attn, g_attn)),
        ("softmax_pool", "reference", "eager PyTorch", public(ops[1], pool, g_pool, backend="reference")),
        ("softmax_pool", "triton", "public call: autograd.Function, replays",
         public(ops[1], pool, g_pool, backend="triton")),
    ]
    return rows


def timed_calls(call, calls: int) -> list[int]:
    """Each call's CPU time on this thread (ns): other processes on a shared machine take turns on the cores, and
    the time they hold them is not the call's host cost. One torch thread, so the call's work is all on this one."""
    times = []
    for _ in range(calls):
        start = time.thread_time_ns()
        call()
        times.append(time.thread_time_ns() - start)
    return times


def launches_per_call(call) -> int:
    fake_triton_driver.RECORD.reset()
    call()
    return fake_triton_driver.RECORD.launches


def measure(B, T, H, dtype, calls: int, blocks: int) -> list[dict]:
    rows = providers(B, T, H, dtype)
    for *_, call in rows:  # warm-up: first calls compile (fake), autotune and record the replays
        for _ in range(20):
            call()
    launches = [launches_per_call(call) for *_, call in rows]
    times = [[] for _ in rows]
    gc.collect()
    gc.disable()
    try:
        # Providers take turns in short blocks, so that a busy spell on a shared machine hits them alike.
        for _ in range(blocks):
            for i, (*_, call) in enumerate(rows):
                times[i] += timed_calls(call, max(1, calls // blocks))
    finally:
        gc.enable()
    medians = [statistics.median(t) / 1e3 for t in times]
    reference = {op: us for (op, provider, _, _), us in zip(rows, medians) if provider == "reference"}
    return [{"op": op, "provider": provider, "path": path, "us_per_call": round(us, 1),
             "vs_reference": round(us / reference[op], 3), "triton_launches": n}
            for (op, provider, path, _), us, n in zip(rows, medians, launches)]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--B", type=int, default=1)
    parser.add_argument("--T", type=int, default=16)
    parser.add_argument("--H", type=int, default=64)
    parser.add_argument("--dtype", default="bfloat16", choices=("float32", "bfloat16", "float16"))
    parser.add_argument("--calls", type=int, default=1000, help="calls timed per row (default: %(default)s)")
    parser.add_argument("--blocks", type=int, default=50, help="turns the rows take, calls/blocks calls each "
                        "(default: %(default)s)")
    parser.add_argument("--json", help="also write the rows and the environment to this file")
    args = parser.parse_args(argv)
    # One thread: at this size threads only add their wake-up time, and the machine may be shared.
    torch.set_num_threads(1)
    start = time.perf_counter()
    rows = measure(args.B, args.T, args.H, getattr(torch, args.dtype), args.calls, args.blocks)
    env = environment(torch.device("cpu"))
    shape = f"B={args.B} T={args.T} H={args.H} {args.dtype}"
    print(f"Host cost per forward+backward call (forward, then torch.autograd.grad), {shape}, on {env['device']} "
          f"({env['cores']} cores, load {env['load_average_1min']}); torch {env['torch']}, triton {env['triton']}, "
          f"commit {env['git_commit']}. Median thread CPU time of {args.calls} calls per row, the rows taking turns "
          f"in {args.blocks} blocks.")
    print(f"Stubbed: {STUBBED}. Not measurable here: the cuda backend (no CUDA device in a CPU-only torch).\n")
    print(markdown_table(["op", "provider", "path", "µs per call", "× reference", "Triton launches per call"],
                         [[r["op"], r["provider"], r["path"], f"{r['us_per_call']:.0f}", f"{r['vs_reference']:.2f}x",
                           str(r["triton_launches"]) if r["provider"] == "triton" else "-"] for r in rows]))
    print(f"\n({time.perf_counter() - start:.0f} s)")
    if args.json:
        write_json({"schema": "lstm_attn.host_cost/1", "env": env, "stubbed": STUBBED,
                    "config": {"B": args.B, "T": args.T, "H": args.H, "dtype": args.dtype, "calls": args.calls,
                               "blocks": args.blocks}, "rows": rows}, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
