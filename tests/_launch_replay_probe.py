"""Run by test_triton_host_path.py in a process of its own: Triton's compiled launch path on CPU tensors, with
benchmarks/fake_triton_driver.py standing in for the GPU (the test process itself runs Triton's interpreter, which
compiles nothing and so never records a launch). Prints one JSON object of facts for the test to assert on."""

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import fake_triton_driver  # noqa: E402

fake_triton_driver.install()

import torch  # noqa: E402
import triton  # noqa: E402
from triton import knobs  # noqa: E402

import lstm_attn  # noqa: E402
from lstm_attn.kernels import _launch, attention_layernorm  # noqa: E402

os.environ["TRITON_INTERPRET"] = "1"  # opens lstm_attn's device check for CPU tensors; the kernels are compiled-style
RECORD = fake_triton_driver.RECORD


def attention_call(offset=0):
    torch.manual_seed(0)
    B, T, H = 2, 20, 64
    # offset > 0: q starts `offset` elements into its storage, off the 16-byte alignment Triton specializes on.
    q = torch.randn(B * T * H + offset).to(torch.bfloat16)[offset:].view(B, T, H).requires_grad_(True)
    rest = [torch.randn(*s).to(torch.bfloat16).requires_grad_(True) for s in [(B, T, H)] * 3 + [(H,), (H,)]]
    leaves = [q, *rest]
    grad = torch.randn(B, T, H).to(torch.bfloat16)
    return lambda: torch.autograd.grad(lstm_attn.attention_layernorm(*leaves, backend="triton"), leaves, grad)


def pool_call():
    x, u, c = (torch.randn(3, 9, 16).requires_grad_(True), torch.randn(3, 16).requires_grad_(True),
               torch.randn(3).requires_grad_(True))
    return lambda: torch.autograd.grad(lstm_attn.softmax_pool(x, u, c, backend="triton"), (x, u, c),
                                       torch.randn(3, 16))


def describe(arg):
    """A launch argument as comparable across calls: tensors by dtype, shape and whether they are the same
    storage as an input (fresh allocations differ from call to call), scalars by value."""
    if isinstance(arg, torch.Tensor):
        return [str(arg.dtype), list(arg.shape), arg.data_ptr() % 16 == 0]
    return arg


def launches(call, hook=False):
    """The launches of one call: (kernel, compiled variant, grid, arguments, hooks passed)."""
    noop = lambda *a, **k: None  # noqa: E731
    if hook:
        knobs.runtime.launch_enter_hook.add(noop)
    RECORD.reset(keep=True)
    try:
        call()
    finally:
        if hook:
            knobs.runtime.launch_enter_hook.remove(noop)
    return [[launch.kernel, launch.function, list(launch.grid), [describe(a) for a in launch.args], launch.hooks]
            for launch in RECORD.kept]


facts = {"replays_off_reason": _launch.REPLAYS_OFF_REASON}
attention = attention_call()
facts["first_call"] = launches(attention)  # through the autotuner: every config of the table runs once
facts["replayed"] = launches(attention)
facts["hooked"] = launches(attention, hook=True)
facts["replayed_after_hook"] = launches(attention)
unaligned = attention_call(offset=1)
facts["unaligned_first"] = launches(unaligned)
facts["unaligned_replayed"] = launches(unaligned)
facts["replays_for_shapes"] = len(attention_layernorm._FWD.replays)
pool = pool_call()
launches(pool)
facts["pool_replayed"] = launches(pool)
facts["pool_hooked"] = launches(pool, hook=True)

real_version = triton.__version__
triton.__version__ = "3.5.0"
facts["reason_for_3_5"] = _launch.replays_supported()
triton.__version__ = real_version
print(json.dumps(facts))
