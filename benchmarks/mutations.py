"""Break the kernels on purpose and see which tests catch each break: proof that the suite bites.

    python benchmarks/mutations.py [--only NAME ...] [--list] [--out FILE.md]

Run on demand, not in CI (each C++ break rebuilds one file of the extension: about 15 minutes for the CPU list
on 2 cores). Every mutation replaces one exact piece of source text, which must occur exactly once (an edit that
moved it makes the script fail loudly, never test the unbroken code). The work happens in a scratch copy of the
tree, .cache/mutants/tree, kept between runs so that ninja recompiles only the broken file; the copy is put back
after each break. Mutations of CUDA code need a GPU to run their tests and are listed as not run without one.
A break that no test catches is a gap: it gets a test, and this table shows it caught from then on.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SCRATCH = REPO / ".cache" / "mutants" / "tree"


@dataclass(frozen=True)
class Mutation:
    name: str
    what: str  # the bug it stands for
    path: str
    old: str
    new: str
    tests: tuple[str, ...]  # pytest arguments: the tests that should catch it
    needs_gpu: bool = False


CPU_TESTS = ("tests/test_attention_layernorm.py", "tests/test_host.py", "tests/test_modules.py", "-k", "cpu")
POOL_TESTS = ("tests/test_softmax_pool.py", "tests/test_modules.py", "-k", "cpu")
TRITON_TESTS = ("tests/test_attention_layernorm.py", "tests/test_triton_host_path.py", "-k", "triton")
MUTATIONS = (
    Mutation("cpu-tile-rescale", "the online softmax forgets to rescale the running output between key tiles",
             "csrc/cpu/attention_layernorm.cpp", "    if (j0 > 0) scale_rows(o, m, H, rescale);\n", "", CPU_TESTS),
    Mutation("cpu-ln-bwd-mean", "the LayerNorm backward drops the mean of g",
             "csrc/cpu/attention_layernorm.cpp", "dy[h] = rs * (g[h] - mean_g - xhat[h] * mean_gx);",
             "dy[h] = rs * (g[h] - xhat[h] * mean_gx);", CPU_TESTS),
    Mutation("cpu-ln-bwd-xhat", "the LayerNorm backward drops the xhat * mean(g xhat) term",
             "csrc/cpu/attention_layernorm.cpp", "dy[h] = rs * (g[h] - mean_g - xhat[h] * mean_gx);",
             "dy[h] = rs * (g[h] - mean_g);", CPU_TESTS),
    Mutation("cpu-score-grad-scale", "the score gradients lose the softmax scale",
             "csrc/cpu/attention_layernorm.cpp", "dr[c] = scale * pr[c] * (dr[c] - delta[c]);",
             "dr[c] = pr[c] * (dr[c] - delta[c]);", CPU_TESTS),
    Mutation("cpu-dq-chunks", "dQ keeps the first key chunk's share only",
             "csrc/cpu/attention_layernorm.cpp", "for (int64_t chunk = 1; chunk < n_chunks; ++chunk) {",
             "for (int64_t chunk = 1; chunk < 1; ++chunk) {", CPU_TESTS),
    Mutation("cpu-pool-delta", "softmax_pool's backward forgets delta",
             "csrc/cpu/softmax_pool.cpp", "const acc_t ds = p[t] * (gx[t] - delta);", "const acc_t ds = p[t] * gx[t];",
             POOL_TESTS),
    Mutation("triton-fwd-scale", "the Triton forward ignores the softmax scale it is given",
             "kernels/attention_layernorm.py", "s = tl.where(n_mask[None, :], s * scale, float(\"-inf\"))",
             "s = tl.where(n_mask[None, :], s, float(\"-inf\"))", TRITON_TESTS),
    Mutation("triton-ln-bwd-mean", "the Triton LayerNorm backward drops the mean of g",
             "kernels/layernorm.py", "(g - xhat * mean_gx[:, None] - mean_g[:, None]) * rstd[:, None]",
             "(g - xhat * mean_gx[:, None]) * rstd[:, None]", TRITON_TESTS),
    Mutation("gemm3xtf32-single", "the gemm3xtf32 plan keeps one TF32 product of the split's three (a_hi b_hi)",
             "csrc/attention_gemm.cpp",
             "return steps.product_tf32(a_hi, b_lo).add_(steps.product_tf32(a_lo, b_hi)).add_(steps.product_tf32(a_hi, "
             "b_hi));", "return steps.product_tf32(a_hi, b_hi);",
             ("tests/test_attention_plans.py", "-k", "gemm3xtf32")),
    Mutation("model-key-bias", "the last-step path drops the key bias's score term (and with it its gradient)",
             "lstm_attn/modules.py", "c = self.scale * (q * self.key.bias).sum(-1)", "c = torch.zeros_like(q[:, 0])",
             ("tests/test_modules.py", "tests/test_ddp.py", "-k", "reference-cpu or ddp or key_bias")),
)


def sync_tree() -> None:
    """Bring the scratch copy up to the working tree, rewriting only files whose content differs (so that their
    timestamps, and ninja's view of them, change only when they must)."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for rel in filter(None, listed):
        src, dst = REPO / rel, SCRATCH / rel
        if not src.is_file():
            continue
        if not dst.exists() or dst.read_bytes() != src.read_bytes():
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
    # In place, the package's lstm_attn.kernels (installed from kernels/) needs a link.
    link = SCRATCH / "lstm_attn" / "kernels"
    if not link.exists():
        link.symlink_to("../kernels")


def build() -> None:
    done = subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--inplace"], cwd=SCRATCH,
                          capture_output=True, text=True, env={**os.environ, "LSTM_ATTN_CUDA": "auto"})
    if done.returncode != 0:
        raise RuntimeError(f"the build failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")


def run_tests(args: tuple[str, ...]) -> tuple[list[str], str]:
    env = {**os.environ, "PYTHONPATH": str(SCRATCH), "PYTHONDONTWRITEBYTECODE": "1"}
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "--tb=no", "-rf", "-p", "no:cacheprovider", *args],
                          cwd=SCRATCH, capture_output=True, text=True, env=env)
    failed = re.findall(r"^FAILED (\S+)", done.stdout, re.MULTILINE)
    summary = (done.stdout.strip().splitlines() or [""])[-1]
    return failed, summary


def apply(m: Mutation) -> str:
    path = SCRATCH / m.path
    text = path.read_text()
    count = text.count(m.old)
    if count != 1:
        raise RuntimeError(f"{m.name}: the text to break occurs {count} times in {m.path}, not once; update the "
                           f"mutation to the code as it is now")
    path.write_text(text.replace(m.old, m.new))
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", help="run these mutations only")
    parser.add_argument("--list", action="store_true", help="list the mutations and exit")
    parser.add_argument("--out", help="also write the result table to this markdown file")
    args = parser.parse_args(argv)
    chosen = [m for m in MUTATIONS if not args.only or m.name in args.only]
    if args.list or not chosen:
        for m in MUTATIONS:
            print(f"{m.name}: {m.what} ({m.path})")
        return 0 if chosen else 2
    import torch

    has_gpu = torch.cuda.is_available()
    SCRATCH.mkdir(parents=True, exist_ok=True)
    sync_tree()
    # What the scratch copy holds: the commit, and whether the tree had changes beyond it.
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                            text=True).stdout.strip()
    dirty = " (with uncommitted changes)" if subprocess.run(["git", "status", "--porcelain"], cwd=REPO,
                                                             capture_output=True, text=True).stdout else ""
    build()
    rows, gaps = [], []
    for m in chosen:
        if m.needs_gpu and not has_gpu:
            rows.append(f"| {m.name} | {m.what} | not run: needs a GPU | |")
            continue
        started = time.perf_counter()
        original = apply(m)
        native = m.path.endswith((".cpp", ".cu", ".cuh", ".h"))
        try:
            if native:
                build()
            failed, summary = run_tests(m.tests)
        finally:
            (SCRATCH / m.path).write_text(original)
            if native:
                build()
        caught = f"**caught** by {len(failed)} test(s)" if failed else "**not caught**"
        if not failed:
            gaps.append(m.name)
        shown = ", ".join(f"`{t.split('::')[-1]}`" for t in failed[:3]) + (" …" if len(failed) > 3 else "")
        rows.append(f"| {m.name} | {m.what} | {caught} ({summary}; {time.perf_counter() - started:.0f} s) | {shown} |")
        print(rows[-1], flush=True)
    table = "\n".join(["| mutation | the bug | result | e.g. |", "|---|---|---|---|", *rows])
    print(f"\n{table}")
    if args.out:
        command = " ".join(["python benchmarks/mutations.py", *(argv if argv is not None else sys.argv[1:])])
        Path(args.out).write_text(f"# Mutation check ({time.strftime('%Y-%m-%d')})\n\n`{command}`"
                                  f" at commit {commit}{dirty}, torch {torch.__version__}"
                                  f"{', with a GPU' if has_gpu else ', no GPU'}.\n\n{table}\n")
    if gaps:
        print(f"\nnot caught by any test: {', '.join(gaps)}", file=sys.stderr)
    return 1 if gaps else 0


if __name__ == "__main__":
    sys.exit(main())
