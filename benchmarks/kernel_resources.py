"""The static resources of every CUDA kernel in the built extension, known without a GPU (developer tooling).

    python benchmarks/kernel_resources.py [--so PATH] [--json OUT]

What ptxas decided is in the binary: registers per thread, static shared memory, stack and local memory, the
block size the kernel was built for (__launch_bounds__), and in the SASS, any local-memory load or store (LDL,
STL), which in these kernels means a register spill. From those follow the blocks per SM that registers and
threads allow on the target architecture. Dynamic shared memory is chosen at launch and is not in the binary:
where a kernel uses it, its occupancy can only be lower than the bound printed here, and Nsight Compute on the
GPU gives the achieved figure.

It reads the binary with cuobjdump (CUDA_HOME's, the one on PATH, or the copy Triton's wheel ships), prints a
markdown table, optionally writes JSON, and exits 1 if any kernel spills: CI runs it after the CUDA build.
"""

from __future__ import annotations

import argparse
import glob
import os
import re
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from lstm_attn import strict_json

# Per-SM limits by architecture (CUDA C Programming Guide, "Compute Capabilities"): registers, threads, blocks,
# register allocation unit per warp.
ARCH_LIMITS = {
    "sm_80": dict(registers=65536, threads=2048, blocks=32, reg_unit=256),
    "sm_90": dict(registers=65536, threads=2048, blocks=32, reg_unit=256),
}
_RESOURCE = re.compile(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)")
_LOCAL_ACCESS = re.compile(r"\b(?:LDL|STL)(?:\.\S+)?\s")


@dataclass
class Kernel:
    name: str  # demangled, template arguments abbreviated
    arch: str
    registers: int
    static_shared: int  # bytes, as the binary states it (the 1 KB a block reserves on sm_80+ included)
    stack: int
    local: int
    max_threads: int | None  # from __launch_bounds__; None if the kernel declares none
    local_accesses: int  # LDL/STL instructions in its SASS: spills
    blocks_per_sm: int | None  # bound by registers and threads (dynamic shared memory can only lower it)
    limited_by: str


def find_cuobjdump() -> str:
    candidates = [os.path.join(os.environ.get("CUDA_HOME", "/usr/local/cuda"), "bin", "cuobjdump"),
                  shutil.which("cuobjdump") or ""]
    try:
        import triton.backends.nvidia as nvidia

        candidates.append(os.path.join(os.path.dirname(nvidia.__file__), "bin", "cuobjdump"))
    except ImportError:
        pass
    for path in candidates:
        if path and os.access(path, os.X_OK):
            return path
    raise FileNotFoundError("cuobjdump was not found in CUDA_HOME/bin, on PATH, or in Triton's wheel")


def find_extension() -> str:
    """The lstm_attn._C library this Python would load, without loading it."""
    import importlib.util

    spec = importlib.util.find_spec("lstm_attn")
    for folder in spec.submodule_search_locations or []:
        found = sorted(glob.glob(os.path.join(folder, "_C*.so")))
        if found:
            return found[0]
    raise FileNotFoundError("lstm_attn/_C*.so was not found: build the extension first")


def _run(cuobjdump: str, *args: str) -> str:
    done = subprocess.run([cuobjdump, *args], capture_output=True, text=True, check=False)
    if done.returncode != 0 and "does not contain device code" in done.stderr + done.stdout:
        return ""
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join([cuobjdump, *args])} failed: {done.stderr.strip()[:400]}")
    return done.stdout


def _demangle(names: list[str]) -> dict[str, str]:
    if not names or not shutil.which("c++filt"):
        return {n: n for n in names}
    out = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True, check=False).stdout
    return dict(zip(names, out.splitlines())) if out else {n: n for n in names}


def _short(name: str) -> str:
    # "void lstm_attn::gpu::attention_bwd_dq_kernel<lstm_attn::gpu::SimtMma<128>, float, ...>(...)": keep the
    # kernel's own name and its template arguments, without namespaces and the parameter list.
    name = re.sub(r"^void ", "", name).replace("(anonymous namespace)::", "")
    if name.endswith(")"):  # the parameter list: from its matching "(" to the end
        depth = 0
        for i in range(len(name) - 1, -1, -1):
            depth += {")": 1, "(": -1}.get(name[i], 0)
            if depth == 0:
                name = name[:i]
                break
    return re.sub(r"\b\w+::", "", name)


def parse_resources(text: str) -> list[tuple[str, str, tuple[int, int, int, int]]]:
    """(arch, mangled name, (registers, stack, shared, local)) per kernel from --dump-resource-usage."""
    found, arch, function = [], None, None
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("arch = "):
            arch = line.split("=", 1)[1].strip()
        elif line.startswith("Function ") and line.endswith(":"):
            function = line[len("Function "):-1]
        elif function and (m := _RESOURCE.search(line)):
            found.append((arch, function, tuple(int(g) for g in m.groups())))
            function = None
    return found


def parse_max_threads(elf: str) -> dict[str, int]:
    """Mangled name -> the block size of its __launch_bounds__, from the .nv.info sections."""
    threads, function, attribute = {}, None, None
    for line in elf.splitlines():
        if line.startswith(".nv.info."):
            function = line[len(".nv.info."):].strip()
        elif "Attribute:" in line:
            attribute = line.split("Attribute:", 1)[1].strip()
        elif function and attribute == "EIATTR_MAX_THREADS" and "Value:" in line:
            x, y, z = (int(v, 16) for v in line.split("Value:", 1)[1].split()[:3])
            threads[function] = x * y * z
            attribute = None
    return threads


def parse_local_accesses(sass: str) -> dict[str, int]:
    """Mangled name -> the number of LDL/STL instructions in its SASS."""
    counts, function = {}, None
    for line in sass.splitlines():
        stripped = line.strip()
        if stripped.startswith("Function : "):
            function = stripped[len("Function : "):]
            counts.setdefault(function, 0)
        elif function and _LOCAL_ACCESS.search(stripped):
            counts[function] += 1
    return counts


def blocks_per_sm(arch: str, registers: int, threads: int | None) -> tuple[int | None, str]:
    limits = ARCH_LIMITS.get(arch)
    if limits is None or not threads:
        return None, "unknown architecture" if limits is None else "no __launch_bounds__"
    warps = -(-threads // 32)
    regs_per_warp = -(-registers * 32 // limits["reg_unit"]) * limits["reg_unit"]
    bounds = {
        "registers": (limits["registers"] // regs_per_warp) // warps if regs_per_warp else limits["blocks"],
        "threads": limits["threads"] // (warps * 32),
        "blocks": limits["blocks"],
    }
    limit = min(bounds, key=bounds.get)
    return bounds[limit], limit


def kernel_table(so: str, cuobjdump: str | None = None) -> list[Kernel]:
    cuobjdump = cuobjdump or find_cuobjdump()
    resources = parse_resources(_run(cuobjdump, "--dump-resource-usage", so))
    threads = parse_max_threads(_run(cuobjdump, "-elf", so))
    local = parse_local_accesses(_run(cuobjdump, "-sass", so))
    names = _demangle(sorted({name for _, name, _ in resources}))
    kernels = []
    for arch, name, (registers, stack, shared, local_bytes) in resources:
        blocks, limit = blocks_per_sm(arch, registers, threads.get(name))
        kernels.append(Kernel(_short(names[name]), arch, registers, shared, stack, local_bytes, threads.get(name),
                              local.get(name, 0), blocks, limit))
    return sorted(kernels, key=lambda k: (k.arch, k.name))


def markdown(kernels: list[Kernel]) -> str:
    from lstm_attn.bench.tables import markdown_table

    body = [[f"`{k.name}`", k.arch, str(k.registers), str(k.static_shared), str(k.stack), str(k.local),
             str(k.max_threads or "–"), str(k.local_accesses),
             f"{k.blocks_per_sm} ({k.limited_by})" if k.blocks_per_sm is not None else k.limited_by]
            for k in kernels]
    return markdown_table(["kernel", "arch", "registers", "static smem B", "stack B", "local B", "threads",
                           "LDL/STL", "blocks/SM ≤"], body)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks/kernel_resources.py", description=__doc__.splitlines()[0])
    parser.add_argument("--so", help="the extension library to read (default: the lstm_attn._C this Python loads)")
    parser.add_argument("--cuobjdump", help="path to cuobjdump (default: CUDA_HOME, PATH, then Triton's copy)")
    parser.add_argument("--json", help="also write the table as JSON to this file")
    args = parser.parse_args(argv)
    try:
        so = args.so or find_extension()
        kernels = kernel_table(so, args.cuobjdump)
    except (FileNotFoundError, RuntimeError) as exc:
        print(f"kernel_resources: error: {exc}", file=sys.stderr)
        return 2
    if not kernels:
        print(f"kernel_resources: {so} holds no CUDA kernels (built without CUDA)", file=sys.stderr)
        return 2
    print(f"CUDA kernels in {so}: static resources from cuobjdump; dynamic shared memory is set at launch and not "
          f"counted (it can only lower blocks/SM)\n")
    print(markdown(kernels))
    if args.json:
        strict_json.write([asdict(k) for k in kernels], args.json)
    spilling = [k for k in kernels if k.local_accesses]
    if spilling:
        print(f"\n{len(spilling)} kernel(s) load or store local memory (register spills): "
              + ", ".join(k.name for k in spilling), file=sys.stderr)
        return 1
    print(f"\n{len(kernels)} kernels, none spills.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
