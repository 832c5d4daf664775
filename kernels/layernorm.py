"""The residual + LayerNorm pieces both attention plans share: the LayerNorm backward with the softmax backward's
delta, the fixed-order sum of its grad_weight/grad_bias partials, and (for the matmul plan, whose attention output
comes from a GEMM) the LayerNorm forward as a row kernel.

Row statistics live in one float32 buffer per direction: the forward's STATS holds lse, mean and rstd (rows each,
in that order); the backward's WORKSPACE holds the grad_weight/grad_bias partials (2 * num_partials rows of H)
followed by delta (rows). Kernels take the buffer's base and find their part, so each direction allocates once.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import INTERPRET, cdiv, head_dim_block, to_dtype
from ._launch import Launcher


def layernorm_launch(block_h: int) -> tuple[int, int]:
    """(rows per program, num_warps) of the LayerNorm kernels. Fixed rather than tuned: in the backward the number
    of programs sizes the partials, allocated before the launch. On a GPU about 16 elements of each row tile per thread; the
    interpreter takes big tiles, since each program costs Python time."""
    if INTERPRET:
        return max(1, 16384 // block_h), 4
    num_warps = 4 if block_h <= 128 else 8
    return max(1, 16 * 32 * num_warps // block_h), num_warps


def reduce_launch(block_h: int) -> tuple[int, int]:
    """(partial rows, columns) per step of the partials' sum: a 32 x 64 tile on a GPU (16 values per thread of 4
    warps), the whole head dim in one step in the interpreter."""
    if INTERPRET:
        return 64, block_h
    return 32, min(block_h, 64)


@triton.jit(do_not_specialize=["rows"])
def _layernorm_fwd_kernel(
    ATTN, RESIDUAL, WEIGHT, BIAS, OUT, STATS,
    rows, H, eps,
    BLOCK_R: tl.constexpr, BLOCK_H: tl.constexpr,
):
    eps = tl.cast(eps, tl.float32)  # float64 when Inductor launches it
    first_row = tl.program_id(0).to(tl.int64) * BLOCK_R
    offs_r = first_row + tl.arange(0, BLOCK_R)
    offs_h = tl.arange(0, BLOCK_H)
    r_mask = offs_r < rows
    h_mask = offs_h < H
    mask = r_mask[:, None] & h_mask[None, :]
    offs = offs_r[:, None] * H + offs_h[None, :]
    y = (tl.load(ATTN + offs, mask=mask, other=0.0).to(tl.float32)
         + tl.load(RESIDUAL + offs, mask=mask, other=0.0).to(tl.float32))
    mean = tl.sum(y, 1) / H
    centred = tl.where(mask, y - mean[:, None], 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(centred * centred, 1) / H + eps)
    weight = tl.load(WEIGHT + offs_h, mask=h_mask, other=0.0).to(tl.float32)
    bias = tl.load(BIAS + offs_h, mask=h_mask, other=0.0).to(tl.float32)
    out = centred * rstd[:, None] * weight[None, :] + bias[None, :]
    tl.store(OUT + offs, to_dtype(out, OUT.dtype.element_ty), mask=mask)
    tl.store(STATS + rows + offs_r, mean, mask=r_mask)
    tl.store(STATS + 2 * rows + offs_r, rstd, mask=r_mask)


@triton.jit(do_not_specialize=["rows"])
def _layernorm_bwd_kernel(
    GRAD_OUT, ATTN, RESIDUAL, WEIGHT, STATS, GRAD_RESIDUAL, WORKSPACE,
    rows, H,
    BLOCK_R: tl.constexpr, BLOCK_H: tl.constexpr,
):
    pid = tl.program_id(0)
    first_row = pid.to(tl.int64) * BLOCK_R
    base = first_row * H
    offs_r = tl.arange(0, BLOCK_R)
    offs_h = tl.arange(0, BLOCK_H)
    r_mask = first_row + offs_r < rows
    h_mask = offs_h < H
    mask = r_mask[:, None] & h_mask[None, :]
    offs = offs_r[:, None] * H + offs_h[None, :]

    grad_out = tl.load(GRAD_OUT + base + offs, mask=mask, other=0.0).to(tl.float32)
    attn = tl.load(ATTN + base + offs, mask=mask, other=0.0).to(tl.float32)
    residual = tl.load(RESIDUAL + base + offs, mask=mask, other=0.0).to(tl.float32)
    mean = tl.load(STATS + rows + first_row + offs_r, mask=r_mask, other=0.0)
    rstd = tl.load(STATS + 2 * rows + first_row + offs_r, mask=r_mask, other=0.0)
    weight = tl.load(WEIGHT + offs_h, mask=h_mask, other=0.0).to(tl.float32)

    xhat = tl.where(mask, (attn + residual - mean[:, None]) * rstd[:, None], 0.0)
    g = grad_out * weight[None, :]
    mean_gx = tl.sum(g * xhat, 1) / H
    mean_g = tl.sum(g, 1) / H
    dy = tl.where(mask, (g - xhat * mean_gx[:, None] - mean_g[:, None]) * rstd[:, None], 0.0)
    dy = to_dtype(dy, GRAD_RESIDUAL.dtype.element_ty)
    tl.store(GRAD_RESIDUAL + base + offs, dy, mask=mask)

    # This program's share of grad_weight (partial row pid) and grad_bias (row num_programs + pid), then delta =
    # attn . dO with dO as the attention kernels will read it (in the input dtype).
    num_partials = tl.num_programs(0)
    tl.store(WORKSPACE + pid * H + offs_h, tl.sum(grad_out * xhat, 0), mask=h_mask)
    tl.store(WORKSPACE + (num_partials + pid) * H + offs_h, tl.sum(grad_out, 0), mask=h_mask)
    tl.store(WORKSPACE + 2 * num_partials * H + first_row + offs_r, tl.sum(attn * dy.to(tl.float32), 1),
             mask=r_mask)


@triton.jit
def reduce_partials(WORKSPACE, num_partials, H, GRAD_WEIGHT, GRAD_BIAS, col_block,
                    RED_ROWS: tl.constexpr, RED_COLS: tl.constexpr):
    """grad_weight and grad_bias for columns col_block * RED_COLS onward: the sum over the LayerNorm backward's
    partial rows, always in the same order (tiles top to bottom, then a tree within the tile), cast in the kernel."""
    cols = col_block * RED_COLS + tl.arange(0, RED_COLS)
    c_mask = cols < H
    offs_p = tl.arange(0, RED_ROWS)
    acc_w = tl.zeros([RED_ROWS, RED_COLS], tl.float32)
    acc_b = tl.zeros([RED_ROWS, RED_COLS], tl.float32)
    for start in range(0, num_partials, RED_ROWS):
        p = start + offs_p
        mask = (p < num_partials)[:, None] & c_mask[None, :]
        acc_w += tl.load(WORKSPACE + p[:, None] * H + cols[None, :], mask=mask, other=0.0)
        acc_b += tl.load(WORKSPACE + (num_partials + p[:, None]) * H + cols[None, :], mask=mask, other=0.0)
    tl.store(GRAD_WEIGHT + cols, to_dtype(tl.sum(acc_w, 0), GRAD_WEIGHT.dtype.element_ty), mask=c_mask)
    tl.store(GRAD_BIAS + cols, to_dtype(tl.sum(acc_b, 0), GRAD_BIAS.dtype.element_ty), mask=c_mask)


_LAYERNORM_BWD = Launcher({None: _layernorm_bwd_kernel})


def layernorm_bwd(grad_out, attn, residual, weight, stats, key) -> tuple:
    """The first backward launch of both attention plans -> grad_residual (= dO), workspace (partials, then delta),
    and the number of partial rows. key: the backward's replay key, None to launch traced."""
    B, Tq, H = attn.shape
    grad_residual = torch.empty_like(residual)
    block_h = head_dim_block(H)
    rows_per_program, num_warps = layernorm_launch(block_h)
    num_partials = cdiv(B * Tq, rows_per_program)
    workspace = torch.empty(2 * num_partials * H + B * Tq, dtype=torch.float32, device=attn.device)
    args = (grad_out, attn, residual, weight, stats, grad_residual, workspace, B * Tq, H)

    def spec():
        return None, (num_partials,), dict(BLOCK_R=rows_per_program, BLOCK_H=block_h, num_warps=num_warps)

    if key is None:
        _LAYERNORM_BWD.traced(args, spec)
    else:
        _LAYERNORM_BWD(key, args, spec)
    return grad_residual, workspace, num_partials
