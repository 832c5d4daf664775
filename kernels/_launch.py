"""How the launchers start a kernel: traced for torch.compile, or eagerly through a per-shape replay of a recorded launch.

Triton's generic launch path costs tens of microseconds of host time per launch (the autotuner's key and lookup,
JITFunction.run's argument binding, specialization and cache key, the launch metadata), against about five for the
compiled kernel's own launcher. A Launcher runs each shape's first call through that generic path (so the
autotuner and the compile cache decide what runs, as always), then remembers what it ran: the compiled kernel, its
grid and its constexpr arguments, under a key that fixes every input of those decisions (the launchers' keys hold
the device, dtype, sizes, TF32 flag and input alignment). Later calls with that key launch the compiled kernel
directly on the current stream.

Replays use Triton internals: the compiled kernel's `run`, `function` and `packed_metadata`, the argument order of
its launcher, and the launch hooks in `triton.knobs.runtime`. They were read from Triton 3.6 and 3.9 and are the
same in both; other versions, a missing attribute, a JIT pre-run hook and any launch hook (a profiler such as
Proton) send every call down the generic path. So does Triton's interpreter, which never compiles a kernel. What a
replay skips besides: Triton's check that the globals a kernel read at compile time still hold their values (this
package's kernels read only constants) and re-reading compile options such as TRITON_DEBUG (set before the first
call, as Triton reads it at import).
"""

from __future__ import annotations

import triton
from torch.library import wrap_triton

from ._common import INTERPRET

# The Triton versions whose launch internals replays were written against (inclusive).
REPLAY_TRITON_VERSIONS = ((3, 6), (3, 9))
# Each launcher keeps at most this many shapes' recorded launches; a workload with more distinct shapes than this (lengths that
# change every batch) starts over rather than growing without bound.
MAX_REPLAYS = 1024


def _triton_version() -> tuple[int, int]:
    major, minor = triton.__version__.split(".")[:2]
    return int(major), int(minor)


def _launch_hooks():
    """Triton's launch hook chains, or None where this Triton keeps them elsewhere (then replays are off)."""
    try:
        from triton.knobs import HookChain, runtime
    except ImportError:
        return None
    hooks = (runtime.launch_enter_hook, runtime.launch_exit_hook)
    return hooks if all(isinstance(h, HookChain) for h in hooks) else None


def replays_supported() -> str | None:
    """Why replays are off in this process, or None when they are on."""
    if INTERPRET:
        return "Triton's interpreter compiles no kernel"
    low, high = REPLAY_TRITON_VERSIONS
    if not low <= _triton_version() <= high:
        return f"triton {triton.__version__} is outside the versions replays were written for ({low} to {high})"
    if _launch_hooks() is None:
        return "this triton keeps its launch hooks elsewhere"
    return None


_HOOKS = _launch_hooks()
REPLAYS_OFF_REASON = replays_supported()


def launch_hooks_set() -> bool:
    """A profiler or tool has registered a launch hook: it must see every launch, so the generic path runs."""
    enter, exit_ = _HOOKS
    return bool(enter.calls or exit_.calls)


def _jit_function(kernel):
    while not isinstance(kernel, triton.runtime.JITFunction):
        kernel = kernel.fn
    return kernel


class Replay:
    """One shape's launch of one compiled kernel: everything but the runtime arguments and the stream fixed."""

    __slots__ = ("run", "grid", "head", "tail", "stream", "device")

    def __init__(self, compiled, grid: tuple, constexprs: tuple, device: int):
        from triton.runtime.driver import driver

        self.run = compiled.run
        self.grid = (*grid, 1, 1)[:3]
        # The launcher's arguments before the kernel's own: no launch metadata and no hooks, since none are set
        # (launch_hooks_set is checked before every replay).
        self.head = (compiled.function, compiled.packed_metadata, None, None, None)
        self.tail = constexprs
        self.stream = driver.active.get_current_stream
        self.device = device

    def __call__(self, args: tuple) -> None:
        g0, g1, g2 = self.grid
        self.run(g0, g1, g2, self.stream(self.device), *self.head, *args, *self.tail)


def _record(kernel, compiled, grid, args: tuple, meta: dict) -> Replay | None:
    """The replay of the generic launch that just ran `compiled`, or None if it cannot be replayed exactly."""
    if not all(hasattr(compiled, a) for a in ("run", "function", "packed_metadata")) or compiled.function is None:
        return None
    jit = _jit_function(kernel)
    if jit.pre_run_hooks:
        return None
    config = getattr(kernel, "best_config", None)
    chosen = {**meta, **(config.all_kwargs() if config is not None else {})}
    names = [p.name for p in jit.params]
    if any(name not in chosen for name in names[len(args):]):
        return None
    full = {**dict(zip(names, args)), **chosen}
    from triton.runtime.driver import driver

    return Replay(compiled, grid(full) if callable(grid) else grid, tuple(full[n] for n in names[len(args):]),
                driver.active.get_current_device())


class Launcher:
    """Launches one kernel family (an autotuner per launch class over one jitted kernel, as _common.autotuners
    builds them).

    `spec` is a callable returning (launch class, grid, meta); a replay never calls it, so the launchers put
    all their per-launch Python there."""

    def __init__(self, kernels: dict):
        self.kernels = kernels
        self.replays: dict = {}

    def traced(self, args: tuple, spec) -> None:
        """Through wrap_triton: inside a triton_op body, where torch.compile and export trace the launch."""
        launch_class, grid, meta = spec()
        wrap_triton(self.kernels[launch_class])[grid](*args, **meta)

    def __call__(self, key, args: tuple, spec) -> None:
        """Eagerly, on real tensors. `key` must determine everything `spec` returns and every specialization
        Triton makes on `args` (sizes, dtypes, pointer alignment), or None when it cannot be formed."""
        replay = self.replays.get(key)
        if replay and not launch_hooks_set():
            replay(args)
            return
        launch_class, grid, meta = spec()
        kernel = self.kernels[launch_class]
        compiled = kernel[grid](*args, **meta)
        if replay is None and key is not None and REPLAYS_OFF_REASON is None:
            if len(self.replays) >= MAX_REPLAYS:
                self.replays.clear()
            # False marks a shape whose launch cannot be replayed, so that it is not examined again.
            self.replays[key] = _record(kernel, compiled, grid, args, meta) or False
