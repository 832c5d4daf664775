"""The workloads that benchmarks/device_check.sh runs under a tool: one forward+backward through every kernel family.

sanitizer (stage 2, under compute-sanitizer memcheck, racecheck and synccheck; small for the tools' slowdown):
- attention_layernorm, every CUDA plan (lstm_attn/plans.py) in float32 and in one 16-bit dtype where it takes them,
  the tiled plan's float32 with TF32 on (tensor-core tiles) and off (exact FFMA tiles): shapes with a tail in every
  tiled dimension, an H that is no multiple of 16 (the element-wise copies), and an empty batch;
- softmax_pool in float32 and bfloat16, with tails;
- the LSTM: the fused plan in every cluster size its configurations use (1, 2, 4, 8 blocks), on padded units (H
  between buckets) and a partial tile of batch rows, float32 with TF32 on and off (the exact float32 kernels),
  three layers (a two-layer launch and a one-layer one) with dropout between them; and the stepwise plan.
  Head dims stay in the 64 and 128 buckets, which stage 2's trimmed build has: the other buckets compile the same
  code with other sizes.
ncu (stage 3, under Nsight Compute): each CUDA and Triton attention plan in float32 and a 16-bit dtype where it takes
them, at a goal shape (B = 16, T = 1024, H = 128), softmax_pool, the fused LSTM at the LSTM goal's shape (B = T =
256, H = 128) in bfloat16 and TF32, and two steps of the stepwise LSTM; one call each: every kernel profiled once.

    python benchmarks/device_workloads.py sanitizer|ncu [--dry-run]

--dry-run lists the calls and checks that they name every plan, without a GPU.
"""

from __future__ import annotations

import argparse
import contextlib
import sys

import torch

import lstm_attn
from lstm_attn import plans

SANITIZER_SHAPES = ((2, 37, 53, 64), (1, 130, 130, 128), (2, 70, 97, 59), (0, 4, 4, 64))  # (B, Tq, Tk, H)
NCU_SHAPE = (16, 1024, 1024, 128)
POOL_SHAPES = {"sanitizer": (3, 41, 59), "ncu": (256, 1024, 128)}  # (B, T, H)
LSTM_INPUT = 8
# (plan, dtype, TF32, B, T, H, layers, dropout). Sanitizer: the fused LSTM's cluster sizes (lstm.h's table) 1
# (16-bit, 64 bucket), 2 (TF32 and exact float32, 64 bucket), 4 (16-bit, 128 bucket) and 8 (TF32 and exact float32,
# 128 bucket), B = 20 rows: a full tile of 16 and a partial one.
LSTM_CALLS = {
    "sanitizer": [
        ("fused", torch.bfloat16, False, 20, 5, 50, 3, 0.3),
        ("fused", torch.float32, True, 20, 5, 64, 2, 0.0),
        ("fused", torch.float32, False, 20, 5, 40, 3, 0.3),
        ("fused", torch.float16, False, 20, 5, 100, 2, 0.0),
        ("fused", torch.float32, True, 20, 5, 128, 2, 0.3),
        ("fused", torch.float32, False, 20, 5, 100, 3, 0.0),
        ("stepwise", torch.bfloat16, False, 20, 5, 50, 2, 0.3),
    ],
    # The stepwise plan's kernels repeat every step: two steps show each of them.
    "ncu": [
        ("fused", torch.bfloat16, False, 256, 256, 128, 2, 0.0),
        ("fused", torch.float32, True, 256, 256, 128, 2, 0.0),
        ("stepwise", torch.bfloat16, False, 256, 2, 128, 1, 0.0),
    ],
}


@contextlib.contextmanager
def tf32(allowed: bool):
    """Both TF32 settings, as lstm_attn.bench.cases.precision sets them: cuBLAS's (the attention plans' float32 path)
    and cuDNN's (the fused LSTM's)."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = allowed
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def attention_calls(workload: str):
    """(backend, plan, dtype, TF32, shape): every plan in float32 (TF32 off) and its first 16-bit dtype, where it
    takes them; the sanitizer's CUDA plans on every shape whose H they take, the tiled plan's float32 also with TF32
    on (its float32 kernels of its own are WMMA or FFMA tiles by TF32; the gemm plans' products are cuBLAS's); ncu's
    CUDA and Triton plans at the goal shape."""
    calls = []
    backends, shapes = (("cuda",), SANITIZER_SHAPES) if workload == "sanitizer" else (("cuda", "triton"), (NCU_SHAPE,))
    for backend in backends:
        for plan, cap in plans.CAN_RUN[(backend, "attention")].items():
            runs = [(dtype, False) for dtype in cap.dtypes if dtype != torch.float32][:1]
            if torch.float32 in cap.dtypes:
                tf32_modes = (True, False) if workload == "sanitizer" and plan == "tiled" else (False,)
                runs += [(torch.float32, allowed) for allowed in tf32_modes]
            calls += [(backend, plan, dtype, allowed, shape) for dtype, allowed in runs for shape in shapes
                      if cap.max_size is None or shape[3] <= cap.max_size]
    return calls


def leaf(dtype, *shape):
    return torch.randn(*shape, device="cuda", dtype=dtype, requires_grad=True)


def run_attention(backend, plan, dtype, shape):
    B, Tq, Tk, H = shape
    q, k, v, residual = leaf(dtype, B, Tq, H), leaf(dtype, B, Tk, H), leaf(dtype, B, Tk, H), leaf(dtype, B, Tq, H)
    with plans.forcing(backend, "attention", plan):
        out = lstm_attn.attention_layernorm(q, k, v, residual, leaf(dtype, H), leaf(dtype, H), backend=backend)
    out.backward(torch.randn_like(out))


def run_lstm(plan, dtype, B, T, H, layers, dropout):
    module = torch.nn.LSTM(LSTM_INPUT, H, layers, batch_first=True)
    weights = [w.detach().to("cuda", dtype).requires_grad_(True) for w in module._flat_weights]
    with plans.forcing("cuda", "lstm", plan):
        output, (h_n, c_n) = lstm_attn.lstm(leaf(dtype, B, T, LSTM_INPUT), weights, dropout=dropout, training=True,
                                            backend="cuda")
    (output.float().sum() + h_n.float().sum() + c_n.float().sum()).backward()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workload", choices=("sanitizer", "ncu"))
    parser.add_argument("--dry-run", action="store_true", help="list the calls and check them; no GPU needed")
    args = parser.parse_args(argv)
    attention, lstm = attention_calls(args.workload), LSTM_CALLS[args.workload]
    named = {(c[0], "attention", c[1]) for c in attention} | {("cuda", "lstm", c[0]) for c in lstm}
    wanted = {(backend, op, plan) for (backend, op), can_run in plans.CAN_RUN.items()
              if (backend == "cuda" or (args.workload == "ncu" and backend == "triton")) for plan in can_run}
    if wanted - named:
        print(f"{args.workload} workload: no call runs {sorted(wanted - named)}", file=sys.stderr)
        return 1
    summary = (f"{args.workload} workload: {len(attention)} attention calls (every plan), softmax_pool in float32 and "
               f"bfloat16, {len(lstm)} LSTM calls")
    if args.dry_run:
        print(summary + " (dry run: nothing ran)")
        return 0
    for backend in {c[0] for c in attention}:
        status = lstm_attn.available_backends("cuda")[backend]
        assert status.available, f"backend {backend!r} is unavailable: {status.reason}"
    torch.manual_seed(0)
    for backend, plan, dtype, allowed, shape in attention:
        with tf32(allowed):
            run_attention(backend, plan, dtype, shape)
    B, T, H = POOL_SHAPES[args.workload]
    for dtype in (torch.float32, torch.bfloat16):
        pooled = lstm_attn.softmax_pool(leaf(dtype, B, T, H), leaf(dtype, B, H), leaf(dtype, B), backend="cuda")
        pooled.backward(torch.randn_like(pooled))
    for plan, dtype, allowed, *sizes in lstm:
        with tf32(allowed):
            run_lstm(plan, dtype, *sizes)
    torch.cuda.synchronize()
    print(summary + " ran forward and backward on 'cuda'")
    return 0


if __name__ == "__main__":
    sys.exit(main())
