"""The parity rule every fast path is held to, for this package's tests, its benchmarks and users' CI.

A result is compared with the reference computed in float64 from the same inputs:
- float64: max |ours - ref| <= 1e-9 * max(1, max |ref|);
- float32: max |ours - ref| <= 1e-5 * max(1, max |ref|)  (float32 rounding, about 1e-5 relative); where a float32
  run of the reference is given too (whole models, whose unfused parts such as the LSTM round alike in both),
  twice that run's own error is allowed on top;
- bfloat16 / float16: max |ours - ref| <= 2 * max |ref_lowp - ref| + eps/2 * max(1, max |ref|), where ref_lowp
  is the reference computed in that dtype (flash-attention's rule: at most twice the error of the plain
  PyTorch computation at the kernel's own precision). The floor is one rounding of the largest value to the
  dtype, which no result stored in it can avoid: without it, a correctly rounded answer fails wherever the
  low-precision reference happens to be exact (gradients zero by symmetry, sums of two rows).
NaN or inf where the reference is finite always fails.
"""

from __future__ import annotations

import torch

_TIGHT = {torch.float64: 1e-9, torch.float32: 1e-5}
LOW_PRECISION = (torch.bfloat16, torch.float16)


def parity_failure(actual: torch.Tensor, ref64: torch.Tensor, ref_lowp: torch.Tensor | None = None) -> str | None:
    """Why `actual` breaks the parity rule against `ref64`, or None if it keeps it."""
    if actual.shape != ref64.shape:
        return f"shape {tuple(actual.shape)} != reference shape {tuple(ref64.shape)}"
    a, r = actual.detach().double(), ref64.detach().double().to(actual.device)
    finite = torch.isfinite(r)
    bad = finite & ~torch.isfinite(a)
    if bad.any():
        return f"{int(bad.sum())} non-finite values where the reference is finite"
    if not finite.any():
        return None
    a, r = a[finite], r[finite]
    err = (a - r).abs().max().item()
    scale = max(1.0, r.abs().max().item())
    lowp_err = None
    if ref_lowp is not None:
        lowp_err = (ref_lowp.detach().double().to(actual.device)[finite] - r).abs().max().item()
    if actual.dtype in LOW_PRECISION:
        if lowp_err is None:
            raise ValueError(f"{actual.dtype} needs ref_lowp, the reference computed in {actual.dtype}")
        rounding = torch.finfo(actual.dtype).eps / 2
        bound = 2 * lowp_err + rounding * scale
        rule = f"2 x {lowp_err:.3e} (reference in {actual.dtype}) + {rounding:g} x {scale:.3g}"
    else:
        bound = _TIGHT[actual.dtype] * scale
        rule = f"{_TIGHT[actual.dtype]:g} x {scale:.3g}"
        if lowp_err is not None:
            bound += 2 * lowp_err
            rule += f" + 2 x {lowp_err:.3e} (reference in {ref_lowp.dtype})"
    if err > bound:
        return f"max abs error {err:.3e} > {bound:.3e} = {rule}"
    return None


def assert_parity(name: str, actual: torch.Tensor, ref64: torch.Tensor, ref_lowp: torch.Tensor | None = None):
    failure = parity_failure(actual, ref64, ref_lowp)
    assert failure is None, f"{name}: {failure}"
