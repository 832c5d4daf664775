"""Peak memory of one LSTM forward+backward on a CPU: the package's `cpu` backend against PyTorch's LSTM (oneDNN),
measured as the model_scaling case measures a step (developer tooling).

    python benchmarks/lstm_memory.py [--shapes 64x256x64,...] [--json OUT]

Each (shape, backend) runs in a Python process of its own: inputs and weights made, freed memory handed back
(malloc_trim), the resident high-water mark reset through /proc/self/clear_refs, then four forward+backward calls;
the row is VmHWM - VmRSS before them, the memory the calls added (2 layers, input 8, float32, the weights'
gradients included). The first call is among them: what a backend keeps between calls (the `cpu` backend's
workspace cache, oneDNN's primitives) counts. Linux only.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

LAYERS, INPUT_SIZE = 2, 8
DEFAULT_SHAPES = "64x256x64,16x1024x64,64x256x128,256x256x128"


def point(B: int, T: int, H: int, backend: str) -> dict:
    import torch

    from lstm_attn.bench.scaling import _peak_mb, _reset_peak, _resident_mb
    from lstm_attn.functional import lstm

    cpu = torch.device("cpu")
    torch.manual_seed(0)
    module = torch.nn.LSTM(INPUT_SIZE, H, LAYERS, batch_first=True)
    weights = [w.detach().requires_grad_() for w in module._flat_weights]
    x = torch.randn(B, T, INPUT_SIZE, requires_grad=True)

    def call():
        for t in (x, *weights):
            t.grad = None
        output, _ = lstm(x, weights, training=True, backend=backend)
        output.sum().backward()

    if not _reset_peak(cpu):
        return {"error": "/proc/self/clear_refs is not writable: no peak for these calls alone"}
    base = _resident_mb(cpu)
    for _ in range(4):
        call()
    return {"peak_mb": _peak_mb(cpu) - base}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default=DEFAULT_SHAPES, help="comma-separated BxTxH (default: %(default)s)")
    parser.add_argument("--json", help="also write the rows to this file")
    parser.add_argument("--point", help=argparse.SUPPRESS)  # one measurement, in the child process
    args = parser.parse_args(argv)
    if args.point:
        B, T, H, backend = json.loads(args.point)
        print(json.dumps(point(B, T, H, backend)))
        return 0
    rows = []
    print("| B | T | H | PyTorch's LSTM MiB | cpu MiB | cpu / PyTorch |\n|---|---|---|---|---|---|")
    for shape in args.shapes.split(","):
        B, T, H = (int(v) for v in shape.split("x"))
        found = {}
        for backend in ("reference", "cpu"):
            done = subprocess.run([sys.executable, __file__, "--point", json.dumps([B, T, H, backend])],
                                  capture_output=True, text=True)
            lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
            if done.returncode != 0 or not lines:
                print(done.stderr[-2000:], file=sys.stderr)
                return 1
            found[backend] = json.loads(lines[-1])
            if "error" in found[backend]:
                print(found[backend]["error"], file=sys.stderr)
                return 1
        ref, ours = found["reference"]["peak_mb"], found["cpu"]["peak_mb"]
        rows.append({"B": B, "T": T, "H": H, "layers": LAYERS, "input_size": INPUT_SIZE, "reference_mb": ref,
                     "cpu_mb": ours})
        print(f"| {B} | {T} | {H} | {ref:.0f} | {ours:.0f} | {ours / ref:.2f} |", flush=True)
    if args.json:
        import torch

        from lstm_attn import strict_json
        from lstm_attn.bench.env import environment

        strict_json.write({"tool": "benchmarks/lstm_memory.py", "env": environment(torch.device("cpu")),
                           "rows": rows}, Path(args.json))
    return 0


if __name__ == "__main__":
    sys.exit(main())
