"""A stand-in for Triton's GPU driver and compiler, so that Triton's real launch path runs on a machine without a GPU.

What stays real: the autotuner (its key, cache and config choice), JITFunction.run (argument binding,
specialization, cache key, grid), the project's launchers, replays, autograd and allocations (CPU tensors).
What is replaced: the driver reports device 0, stream 0 and an sm_90 target; compiling a kernel returns a
FakeCompiledKernel instead of running the compiler; the autotuner's benchmark runs each config once through the
real path and reports fixed times, so the table's first config wins (as LSTM_ATTN_TRITON_AUTOTUNE=0 picks on a
GPU); and the compiled kernel's C launcher is a Python stub that only counts (and, for tests, records) the
launch: the C launcher's own work (reading each tensor's data_ptr, packing the arguments, cuLaunchKernel) is
left out, as the host-cost measurements of issue 13 left it out. No kernel runs: outputs hold whatever memory held.

install() must run before lstm_attn (or anything defining @triton.jit kernels) is imported, with TRITON_INTERPRET
unset. It touches Triton internals read from Triton 3.6 and 3.9 (JITFunction._do_compile, Autotuner._bench,
driver.set_active); it is a measuring and testing tool, never imported by the package.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch


@dataclass
class Launch:
    kernel: str
    function: int
    grid: tuple
    args: tuple
    hooks: bool  # whether launch hooks were passed: Triton's generic path passes its hook chains, a replay None


@dataclass
class Record:
    """Stubbed launches and fake compiles since the last reset(); with keep=True each launch's kernel, grid and
    arguments too (tests compare them; timing leaves it off, as the C launcher keeps nothing)."""
    launches: int = 0
    compiles: int = 0
    keep: bool = False
    kept: list[Launch] = field(default_factory=list)

    def reset(self, keep: bool = False) -> None:
        self.launches = self.compiles = 0
        self.keep = keep
        self.kept.clear()


RECORD = Record()


class _FakeDriver:
    def get_current_device(self):
        return 0

    def get_current_stream(self, device=None):
        return 0

    def get_current_target(self):
        from triton.backends.compiler import GPUTarget

        return GPUTarget("cuda", 90, 32)

    def get_active_torch_device(self):
        return torch.device("cpu")

    def is_active(self):
        return True


class FakeCompiledKernel:
    """What JITFunction.run gets back from a compile: the attributes the launch path reads, and a stub launcher."""

    def __init__(self, name: str, constexprs: dict):
        self.name = name
        self.constexprs = constexprs
        self.function = id(self)  # stands for the CUfunction handle: one per compiled variant
        self.packed_metadata = ()

    def launch_metadata(self, grid, stream, *args):
        return None

    def run(self, gx, gy, gz, stream, function, packed_metadata, launch_metadata, enter_hook, exit_hook, *args):
        RECORD.launches += 1
        if RECORD.keep:
            RECORD.kept.append(Launch(self.name, function, (gx, gy, gz), args, enter_hook is not None))


def install() -> None:
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        raise RuntimeError("fake_triton_driver needs TRITON_INTERPRET unset: the interpreter compiles nothing")
    from triton.runtime import autotuner, jit
    from triton.runtime.driver import driver

    driver.set_active(_FakeDriver())

    def fake_compile(self, key, signature, device, constexprs, options, attrs, warmup):
        kernel = FakeCompiledKernel(self.fn.__name__, dict(constexprs))
        self.device_caches[device][0][key] = kernel
        RECORD.compiles += 1
        return kernel

    def fake_bench(self, *args, config, **meta):
        self.fn.run(*args, **dict(meta, **config.all_kwargs()))
        return [float(self.configs.index(config) + 1)] * 3

    jit.JITFunction._do_compile = fake_compile
    autotuner.Autotuner._bench = fake_bench
