"""Autotune the Triton kernels on this GPU and print the winners as rows for kernels/tuned.py (GPU only).

Runs one forward+backward of each op per (dtype, H, T) with every config of each table benchmarked (Triton's
autotuner, LSTM_ATTN_TRITON_AUTOTUNE=1, the flash attention plan forced, since the matmul plan has nothing to
tune), then reads each autotuner's choices. A launch class's winner is the config chosen for most of its
sequence-length buckets (ties: the longest bucket's choice). Writes every choice to tune-<gpu>-<date>.json under
--out and prints the PINNED rows; pinning them is a reviewed edit of kernels/tuned.py, never automatic.

usage: python benchmarks/tune_triton.py [--out DIR] [--quick]   (about 5 minutes on an H200; --quick about 1)
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
from collections import Counter, defaultdict
from pathlib import Path

os.environ["LSTM_ATTN_TRITON_AUTOTUNE"] = "1"  # before lstm_attn: the autotuners are built at import
os.environ["LSTM_ATTN_PLAN_TRITON_ATTENTION"] = "flash"

import torch  # noqa: E402

import lstm_attn  # noqa: E402
from lstm_attn.bench.env import device_slug, environment  # noqa: E402
from lstm_attn.bench.schema import write_json  # noqa: E402

TOKENS = 16384
FULL = dict(dtypes=("float32", "bfloat16", "float16"), H=(64, 128, 256, 512), T=(256, 1024, 4096))
QUICK = dict(dtypes=("bfloat16",), H=(64, 128), T=(256, 1024))


def run_shapes(dtypes, Hs, Ts) -> None:
    for dtype in (getattr(torch, d) for d in dtypes):
        for H in Hs:
            for T in Ts:
                B = max(1, TOKENS // T)
                leaves = [torch.randn(*s, device="cuda", dtype=dtype, requires_grad=True)
                          for s in [(B, T, H)] * 4 + [(H,), (H,)]]
                out = lstm_attn.attention_layernorm(*leaves, backend="triton")
                out.backward(torch.randn_like(out))
                x, u, c = (torch.randn(*s, device="cuda", dtype=dtype, requires_grad=True)
                           for s in [(B, T, H), (B, H), (B,)])
                pooled = lstm_attn.softmax_pool(x, u, c, backend="triton")
                pooled.backward(torch.randn_like(pooled))
                torch.cuda.synchronize()
                print(f"tuned {dtype} H={H} T={T}", flush=True)


def choices(arch: str) -> tuple[list[dict], dict]:
    """Every autotuner's choice per key, and the winner per (kernel, arch, dtype, launch class)."""
    from lstm_attn.kernels import attention_layernorm, softmax_pool

    families = {"attention_fwd": attention_layernorm._FWD, "attention_bwd": attention_layernorm._BWD,
                "softmax_pool_fwd": softmax_pool._FWD, "softmax_pool_bwd": softmax_pool._BWD}
    rows, votes = [], defaultdict(Counter)
    for name, launcher in families.items():
        for launch_class, tuner in launcher.kernels.items():
            for key, config in sorted(tuner.cache.items(), key=lambda kv: str(kv[0])):
                # The autotuner's key: its key arguments' values, then the dtype of each tensor argument, the
                # first of which (q or x) has the op's dtype, as the pinned-winner lookup reads it.
                dtype = str(key[len(tuner.keys)]).removeprefix("torch.")
                chosen = config.all_kwargs()
                rows.append({"kernel": name, "arch": arch, "dtype": dtype, "launch_class": launch_class,
                             "key": [str(k) for k in key], "config": chosen})
                # Later (longer) buckets come last in the sort: a tie goes to the longest bucket's choice.
                votes[(name, arch, dtype, launch_class)][tuple(sorted(chosen.items()))] += 1
    winners = {group: dict(max(counter.items(), key=lambda kv: kv[1])[0]) for group, counter in votes.items()}
    return rows, winners


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=".", help="folder for tune-<gpu>-<date>.json (default: current)")
    parser.add_argument("--quick", action="store_true", help="bfloat16, H 64 and 128, T 256 and 1024 only")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("tune_triton.py needs a CUDA GPU: autotuning measures kernels, and there is none here")
        return 2
    sweep = QUICK if args.quick else FULL
    run_shapes(sweep["dtypes"], sweep["H"], sweep["T"])
    major, minor = torch.cuda.get_device_capability()
    rows, winners = choices(f"sm_{major}{minor}")
    device = torch.device("cuda")
    path = Path(args.out) / f"tune-{device_slug(device)}-{datetime.date.today().isoformat()}.json"
    write_json({"schema": "lstm_attn.tune/1", "env": environment(device), "sweep": sweep, "tokens": TOKENS,
                "choices": rows, "winners": [{"group": list(g), "config": c} for g, c in winners.items()]}, path)
    print(f"wrote {path}\nRows for PINNED in kernels/tuned.py:")
    for group, config in sorted(winners.items(), key=str):
        print(f"    {group!r}: {config!r},")
    return 0


if __name__ == "__main__":
    sys.exit(main())
