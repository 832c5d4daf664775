"""layer_norm(softmax(q k^T * scale) v + residual), matmul plan: the four products as GEMMs through torch (cuBLAS
on a GPU, with full 64-128-row Tensor Core tiles whatever H is), and everything between them in Triton row kernels.
No whole-row accumulator is held anywhere, which is what limits the flash plan's tiles, and so its occupancy, at
large head dims. lstm_attn/plans.py chooses between the plans; both save the same tensors.

Forward: S = q k^T (input dtype, float32 accumulation); P = softmax(S * scale) written over S, with the lse;
attn = P v; out = LayerNorm(attn + residual) with its mean and rstd. Backward: the LayerNorm backward and delta
(layernorm.py, shared with the flash plan); S = q k^T again and dP = dO v^T; one kernel writes P = exp(S * scale -
lse) over S and dS = P (dP - delta) * scale over dP, while its first programs sum the grad_weight/grad_bias
partials; then dV = P^T dO, dQ = dS k, dK = dS^T q. Memory: two (B, Tq, Tk) buffers in the input dtype, as the
reference's eager autograd holds. Deterministic: cuBLAS products and fixed-order sums.

Products of float32 inputs follow torch.backends.cuda.matmul.allow_tf32 as torch's own do (exact float32 when it
is off), so the flash plan's TF32 flag has nothing to choose here.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import INTERPRET, cdiv, head_dim_block, launch_key, to_dtype
from ._launch import Launcher
from .layernorm import _layernorm_fwd_kernel, layernorm_bwd, layernorm_launch, reduce_launch, reduce_partials


def _row_launch(Tk) -> tuple[int, int]:
    """(rows, columns) of a softmax kernel's tile: columns the power of two >= Tk up to 1024 (longer rows loop),
    about 16 values per thread of 4 warps on a GPU; the interpreter takes bigger tiles, each program costing
    Python time."""
    elements = 16384 if INTERPRET else 2048
    block_t = 16
    while block_t < Tk and block_t < 1024:
        block_t *= 2
    return max(1, elements // block_t), block_t


@triton.jit(do_not_specialize=["rows", "Tk"])
def _softmax_fwd_kernel(S, STATS, rows, Tk, scale, BLOCK_R: tl.constexpr, BLOCK_T: tl.constexpr):
    """P = softmax(S * scale) over rows of Tk, written over S; the lse into the first rows of STATS."""
    scale = tl.cast(scale, tl.float32)  # float64 when Inductor launches it
    offs_r = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    r_mask = offs_r < rows
    offs_t = tl.arange(0, BLOCK_T)
    m_i = tl.full([BLOCK_R], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_R], tl.float32)
    # Every column tile holds at least one real column, so m_i is finite after the first.
    for start in range(0, Tk, BLOCK_T):
        t = start + offs_t
        t_mask = (t < Tk)[None, :]
        # Rows past the end read zeros rather than -inf, so that their (discarded) statistics stay finite.
        s = tl.load(S + offs_r[:, None] * Tk + t[None, :], mask=r_mask[:, None] & t_mask, other=0.0)
        s = tl.where(t_mask, s.to(tl.float32) * scale, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        l_i = l_i * tl.exp(m_i - m_new) + tl.sum(tl.exp(s - m_new[:, None]), 1)
        m_i = m_new
    lse = m_i + tl.log(l_i)
    for start in range(0, Tk, BLOCK_T):
        t = start + offs_t
        mask = r_mask[:, None] & (t < Tk)[None, :]
        offs = offs_r[:, None] * Tk + t[None, :]
        s = tl.load(S + offs, mask=mask, other=0.0).to(tl.float32) * scale
        tl.store(S + offs, to_dtype(tl.exp(s - lse[:, None]), S.dtype.element_ty), mask=mask)
    tl.store(STATS + offs_r, lse, mask=r_mask)


@triton.jit(do_not_specialize=["rows", "Tk", "num_partials"])
def _softmax_bwd_kernel(S, DP, STATS, WORKSPACE, GRAD_WEIGHT, GRAD_BIAS, rows, Tk, H, scale, num_partials,
                        BLOCK_R: tl.constexpr, BLOCK_T: tl.constexpr, RED_ROWS: tl.constexpr,
                        RED_COLS: tl.constexpr):
    """P = exp(S * scale - lse) over S and dS = P (dP - delta) * scale over dP; the first programs sum the
    grad_weight/grad_bias partials (as the flash plan's backward does)."""
    scale = tl.cast(scale, tl.float32)
    reduce_programs = tl.cdiv(H, RED_COLS)
    pid = tl.program_id(0)
    if pid < reduce_programs:
        reduce_partials(WORKSPACE, num_partials, H, GRAD_WEIGHT, GRAD_BIAS, pid, RED_ROWS, RED_COLS)
    else:
        offs_r = (pid - reduce_programs).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
        r_mask = offs_r < rows
        lse = tl.load(STATS + offs_r, mask=r_mask, other=0.0)
        delta = tl.load(WORKSPACE + 2 * num_partials * H + offs_r, mask=r_mask, other=0.0)
        offs_t = tl.arange(0, BLOCK_T)
        for start in range(0, Tk, BLOCK_T):
            t = start + offs_t
            mask = r_mask[:, None] & (t < Tk)[None, :]
            offs = offs_r[:, None] * Tk + t[None, :]
            p = tl.exp(tl.load(S + offs, mask=mask, other=0.0).to(tl.float32) * scale - lse[:, None])
            dp = tl.load(DP + offs, mask=mask, other=0.0).to(tl.float32)
            tl.store(S + offs, to_dtype(p, S.dtype.element_ty), mask=mask)
            tl.store(DP + offs, to_dtype(p * (dp - delta[:, None]) * scale, DP.dtype.element_ty), mask=mask)


_SOFTMAX_FWD = Launcher({None: _softmax_fwd_kernel})
_SOFTMAX_BWD = Launcher({None: _softmax_bwd_kernel})
_LAYERNORM_FWD = Launcher({None: _layernorm_fwd_kernel})


def _launch(launcher: Launcher, key, args: tuple, grid: tuple, meta: dict) -> None:
    """key: the replay key, None to launch traced."""
    def spec():
        return None, grid, meta

    if key is None:
        launcher.traced(args, spec)
    else:
        launcher(key, args, spec)


def attention_layernorm_fwd(q, k, v, residual, weight, bias, eps: float, scale: float, traced: bool):
    """As attention_layernorm.attention_layernorm_fwd, by GEMMs: -> out, attn, stats (lse, mean, rstd)."""
    B, Tq, H = q.shape
    Tk = k.shape[1]
    rows = B * Tq
    key = None if traced else launch_key(q, k, (q, k, v, residual, weight, bias))
    p = torch.bmm(q, k.transpose(1, 2))
    stats = torch.empty((3, B, Tq), dtype=torch.float32, device=q.device)
    out = torch.empty_like(q)
    if B == 0:
        return out, torch.empty_like(q), stats
    block_r, block_t = _row_launch(Tk)
    _launch(_SOFTMAX_FWD, key, (p, stats, rows, Tk, scale), (cdiv(rows, block_r),),
            dict(BLOCK_R=block_r, BLOCK_T=block_t))
    attn = torch.bmm(p, v)
    block_h = head_dim_block(H)
    rows_per_program, num_warps = layernorm_launch(block_h)
    _launch(_LAYERNORM_FWD, key, (attn, residual, weight, bias, out, stats, rows, H, eps),
            (cdiv(rows, rows_per_program),), dict(BLOCK_R=rows_per_program, BLOCK_H=block_h,
                                                         num_warps=num_warps))
    return out, attn, stats


def attention_layernorm_bwd(grad_out, q, k, v, residual, weight, attn, stats, scale: float, key):
    """As attention_layernorm.attention_layernorm_bwd, by GEMMs; key: its replay key, None to launch traced."""
    B, Tq, H = q.shape
    Tk = k.shape[1]
    grad_weight = torch.empty_like(weight)
    grad_bias = torch.empty_like(weight)
    if B == 0:
        return (torch.empty_like(q), torch.empty_like(k), torch.empty_like(v), torch.empty_like(residual),
                grad_weight.zero_(), grad_bias.zero_())
    grad_residual, workspace, num_partials = layernorm_bwd(grad_out, attn, residual, weight, stats, key)
    # grad_residual is dO (see the flash plan).
    p = torch.bmm(q, k.transpose(1, 2))
    ds = torch.bmm(grad_residual, v.transpose(1, 2))
    block_r, block_t = _row_launch(Tk)
    red_rows, red_cols = reduce_launch(head_dim_block(H))
    _launch(_SOFTMAX_BWD, key,
            (p, ds, stats, workspace, grad_weight, grad_bias, B * Tq, Tk, H, scale, num_partials),
            (cdiv(H, red_cols) + cdiv(B * Tq, block_r),),
            dict(BLOCK_R=block_r, BLOCK_T=block_t, RED_ROWS=red_rows, RED_COLS=red_cols))
    grad_v = torch.bmm(p.transpose(1, 2), grad_residual)
    grad_q = torch.bmm(ds, k)
    grad_k = torch.bmm(ds.transpose(1, 2), q)
    return grad_q, grad_k, grad_v, grad_residual, grad_weight, grad_bias
