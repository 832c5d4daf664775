"""Where a benchmark ran: the device, the software, the commit. Recorded in every result file."""

from __future__ import annotations

import datetime
import os
import platform
import re
import subprocess
from pathlib import Path

import torch

import lstm_attn
from lstm_attn import cpu_features, plans

REPO = Path(lstm_attn.__file__).resolve().parent.parent


def _run(cmd: list[str], cwd=None) -> str | None:
    try:
        done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip()


def git_commit() -> str:
    """The commit of the checkout; LSTM_ATTN_GIT_COMMIT wins, for copies of a tree made without .git."""
    given = os.environ.get("LSTM_ATTN_GIT_COMMIT")
    if given:
        return given
    commit = _run(["git", "rev-parse", "HEAD"], cwd=REPO)
    if commit is None:
        return "unknown (no git commit; set LSTM_ATTN_GIT_COMMIT)"
    # Untracked files count: new kernels that are not committed yet are part of what was measured.
    dirty = _run(["git", "status", "--porcelain"], cwd=REPO)
    return commit + ("-dirty" if dirty else "")


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()


def device_slug(device) -> str:
    """A file-name-safe name: "nvidia-h100-80gb-hbm3", or "cpu-amd-epyc" for CPUs."""
    device = torch.device(device)
    name = device_name(device).lower()
    if device.type == "cpu":
        name = "cpu-" + name
    return re.sub(r"[^a-z0-9]+", "-", name).strip("-")


def cache_bytes(device: torch.device) -> int:
    """The last-level cache a small case could sit in: the GPU's L2, else the CPU's largest cache."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).L2_cache_size
    sizes = []
    for f in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size"):
        m = re.fullmatch(r"(\d+)([KMG]?)", f.read_text().strip())
        if m:
            sizes.append(int(m.group(1)) * {"": 1, "K": 2**10, "M": 2**20, "G": 2**30}[m.group(2)])
    return max(sizes, default=32 * 2**20)


def _triton_version() -> str:
    try:
        import triton
    except ImportError:
        return "not installed"
    return triton.__version__


def _driver_version() -> str:
    out = _run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"])
    return out.splitlines()[0] if out else "unknown"


def allocator_settings() -> dict:
    """What decides how the host allocator hands out big blocks: glibc's tunables (MALLOC_*_ and GLIBC_TUNABLES) and an
    allocator preloaded in its place (jemalloc, tcmalloc). A CPU LSTM's time depends on it: with glibc's defaults,
    every large block freed goes back to the kernel, and the next call's pages are faulted in and zeroed again."""
    return {k: v for k, v in sorted(os.environ.items())
            if k.startswith("MALLOC_") or k in ("GLIBC_TUNABLES", "LD_PRELOAD", "THP_MEM_ALLOC_ENABLE")}


def environment(device: torch.device) -> dict:
    env = {
        "device": device_name(device),
        "device_type": device.type,
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "triton": _triton_version(),
        "python": platform.python_version(),
        "version": lstm_attn.__version__,
        "git_commit": git_commit(),
        "backends": {name: repr(status) for name, status in lstm_attn.available_backends(device).items()},
        "cache_bytes": cache_bytes(device),
        "cores": os.cpu_count(),  # what lstm_attn.bench.load weighs each row's load average against
        # The kernel plans forced for every row (lstm_attn/plans.py's variables); the tables chose the others.
        "plans_forced": plans.forced_summary(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update({
            "sm_count": props.multi_processor_count,
            "capability": f"{props.major}.{props.minor}",
            "memory_gib": round(props.total_memory / 2**30, 1),
            "driver": _driver_version(),
            "cuda": torch.version.cuda or "none",
            # Whether the Triton rows come from autotuned configs or each table's first (default) config.
            "triton_autotune": os.environ.get("LSTM_ATTN_TRITON_AUTOTUNE", "1") != "0",
            "allow_tf32": torch.backends.cuda.matmul.allow_tf32,
        })
    else:
        # Other processes share a CPU's cores: the load at the start says how quiet the machine was.
        # cpu_features.describe(): the instruction set torch dispatches to and what oneDNN can build here, which decide
        # which code paths a CPU row measured.
        env.update({**cpu_features.describe(),
                    "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
                    "load_average_1min": round(os.getloadavg()[0], 2),
                    "allocator": allocator_settings()})
    return env


def device_kind(requested: str | None) -> str:
    """--device, defaulting to cuda when a GPU is visible; asking for a missing GPU is an error."""
    kind = requested or ("cuda" if torch.cuda.is_available() else "cpu")
    if kind == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda, but torch sees no CUDA GPU here")
    return kind
