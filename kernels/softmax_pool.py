"""sum_j softmax_j(x_j . u + c) x_j in Triton: the memory-bound core of the model's exact last-step attention.

Both directions are one program per batch row streaming x (B, T, H) once in BLOCK_T-row tiles of the whole H:
the score of a row x_j needs all of x_j . u, so a program cannot split H, and it does not split T either (a
second pass to merge split softmaxes would cost more than it saves at the model's sizes). Products are
row-by-vector, so they are elementwise multiplies and tl.sum, not tl.dot; everything accumulates in float32.

Forward: an online softmax over the tiles (running max, running sum, running weighted sum of the rows); saves
lse. Backward: p_j = exp(s_j - lse) from the saved lse, delta = g . pooled, ds_j = p_j (g . x_j - delta);
writes grad_x_j = p_j g + ds_j u tile by tile and accumulates grad_u = sum_j ds_j x_j and grad_c = sum_j ds_j.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import HEAD_DIM_BLOCKS, alignment, autotuners, head_dim_block, seq_bucket, to_dtype
from ._launch import Launcher


def _configs(elements_and_warps, block_h):
    """Tiles of a fixed number of elements: BLOCK_T rows of the head-dim block."""
    return [triton.Config({"BLOCK_T": max(1, elements // block_h)}, num_warps=w) for elements, w in elements_and_warps]


# (tile elements, num_warps) for Hopper, first entry the default: 8 to 16 elements of the x tile per thread, enough
# loads in flight to stream x at bandwidth while the float32 tile and its products stay well inside the registers
# (ptxas for sm_90: at most ~130 per thread in the backward; twice the elements reach the 255 limit).
_TILES = [(2048, 4), (4096, 8), (1024, 4)]
_TABLE = {block_h: _configs(_TILES, block_h) for block_h in HEAD_DIM_BLOCKS}
_INTERPRETER_CONFIG = triton.Config({"BLOCK_T": 64}, num_warps=4)
_KEY = ["T_BUCKET"]
# T takes no integer specialization: only H sets the alignment of the rows.
_SIZES = ["T", "T_BUCKET"]


@triton.jit(do_not_specialize=_SIZES)
def _softmax_pool_fwd_kernel(
    X, U, C, POOLED, LSE,
    T, H,
    T_BUCKET,  # autotuning key only
    BLOCK_H: tl.constexpr, BLOCK_T: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    offs_t = tl.arange(0, BLOCK_T)
    offs_h = tl.arange(0, BLOCK_H)
    h_mask = offs_h < H
    # The batch offset (64-bit) moves the base pointer once; tile offsets stay 32-bit.
    X += b * T * H
    u = tl.load(U + b * H + offs_h, mask=h_mask, other=0.0).to(tl.float32)
    c = tl.load(C + b).to(tl.float32)

    m_i = tl.full([], float("-inf"), tl.float32)
    l_i = tl.zeros([], tl.float32)
    acc = tl.zeros([BLOCK_H], tl.float32)
    # Every tile holds at least one real row, so m_i is finite after the first and never meets -inf - (-inf).
    for start_t in range(0, T, BLOCK_T):
        t = start_t + offs_t
        t_mask = t < T
        x = tl.load(X + t[:, None] * H + offs_h[None, :], mask=t_mask[:, None] & h_mask[None, :],
                    other=0.0).to(tl.float32)
        s = tl.where(t_mask, tl.sum(x * u[None, :], 1) + c, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 0))
        alpha = tl.exp(m_i - m_new)
        p = tl.exp(s - m_new)
        l_i = l_i * alpha + tl.sum(p, 0)
        acc = acc * alpha + tl.sum(p[:, None] * x, 0)
        m_i = m_new
    tl.store(POOLED + b * H + offs_h, to_dtype(acc / l_i, POOLED.dtype.element_ty), mask=h_mask)
    tl.store(LSE + b, m_i + tl.log(l_i))


@triton.jit(do_not_specialize=_SIZES)
def _softmax_pool_bwd_kernel(
    GRAD_POOLED, X, U, C, POOLED, LSE, GRAD_X, GRAD_U, GRAD_C,
    T, H,
    T_BUCKET,  # autotuning key only
    BLOCK_H: tl.constexpr, BLOCK_T: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    offs_t = tl.arange(0, BLOCK_T)
    offs_h = tl.arange(0, BLOCK_H)
    h_mask = offs_h < H
    X += b * T * H
    GRAD_X += b * T * H
    g = tl.load(GRAD_POOLED + b * H + offs_h, mask=h_mask, other=0.0).to(tl.float32)
    u = tl.load(U + b * H + offs_h, mask=h_mask, other=0.0).to(tl.float32)
    pooled = tl.load(POOLED + b * H + offs_h, mask=h_mask, other=0.0).to(tl.float32)
    c = tl.load(C + b).to(tl.float32)
    lse = tl.load(LSE + b)
    # grad_x needs delta = g . pooled before the pass, so it takes the saved pooled. grad_u and grad_c are sums
    # over the pass, linear in delta: they are accumulated with the saved delta like grad_x, then corrected to
    # the delta of the pass's own probabilities, sum_j p_j g.x_j / sum_j p_j. The correction is of the size of
    # the saved pooled's rounding: nothing in float32, but in 16-bit dtypes it is what keeps grad_c (zero in
    # exact arithmetic, c shifts every score alike) at rounding noise rather than at a 16-bit ulp.
    saved_delta = tl.sum(g * pooled, 0)

    sum_p = tl.zeros([], tl.float32)
    sum_p_gx = tl.zeros([], tl.float32)
    sum_ds = tl.zeros([], tl.float32)
    sum_p_x = tl.zeros([BLOCK_H], tl.float32)
    sum_ds_x = tl.zeros([BLOCK_H], tl.float32)
    for start_t in range(0, T, BLOCK_T):
        t = start_t + offs_t
        t_mask = t < T
        mask = t_mask[:, None] & h_mask[None, :]
        offs = t[:, None] * H + offs_h[None, :]
        x = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
        p = tl.where(t_mask, tl.exp(tl.sum(x * u[None, :], 1) + c - lse), 0.0)
        gx = tl.sum(x * g[None, :], 1)
        ds = p * (gx - saved_delta)
        grad_x = p[:, None] * g[None, :] + ds[:, None] * u[None, :]
        tl.store(GRAD_X + offs, to_dtype(grad_x, GRAD_X.dtype.element_ty), mask=mask)
        sum_p += tl.sum(p, 0)
        sum_p_gx += tl.sum(p * gx, 0)
        sum_ds += tl.sum(ds, 0)
        sum_p_x += tl.sum(p[:, None] * x, 0)
        sum_ds_x += tl.sum(ds[:, None] * x, 0)
    correction = sum_p_gx / sum_p - saved_delta
    tl.store(GRAD_U + b * H + offs_h, to_dtype(sum_ds_x - correction * sum_p_x, GRAD_U.dtype.element_ty),
             mask=h_mask)
    tl.store(GRAD_C + b, to_dtype(sum_ds - correction * sum_p, GRAD_C.dtype.element_ty))


_FWD = Launcher(autotuners(_softmax_pool_fwd_kernel, _TABLE, _INTERPRETER_CONFIG, _KEY, "softmax_pool_fwd"))
_BWD = Launcher(autotuners(_softmax_pool_bwd_kernel, _TABLE, _INTERPRETER_CONFIG, _KEY, "softmax_pool_bwd"))


def _launch(launcher: Launcher, x, args: tuple, aligned: tuple, traced: bool) -> None:
    """One program per batch row; the replay key (see _launch.py) holds what the block and autotuner key follow from,
    and the alignment of the arguments from outside."""
    B, T, H = x.shape

    def spec():
        return head_dim_block(H), (B,), dict(BLOCK_H=head_dim_block(H))

    if traced:
        launcher.traced(args, spec)
    else:
        launcher((x.device, x.dtype, B, T, H, alignment(*aligned)), args, spec)


def softmax_pool_fwd(x, u, c, traced: bool = False):
    """-> pooled (B, H) in the input dtype, lse (B,) float32. Inputs must be contiguous and of a size and dtype the
    kernels take (check_launch); traced=True launches through wrap_triton (inside the triton_op bodies), otherwise
    through the replays."""
    B, T, H = x.shape
    pooled = torch.empty_like(u)
    lse = torch.empty(B, dtype=torch.float32, device=x.device)
    if B > 0:
        _launch(_FWD, x, (x, u, c, pooled, lse, T, H, seq_bucket(T)), (x, u, c), traced)
    return pooled, lse


def softmax_pool_bwd(grad_pooled, x, u, c, pooled, lse, traced: bool = False):
    """-> grad_x (B, T, H), grad_u (B, H), grad_c (B,), in the input dtype. Inputs must be contiguous."""
    B, T, H = x.shape
    grad_x = torch.empty_like(x)
    grad_u = torch.empty_like(u)
    grad_c = torch.empty_like(c)
    if B > 0:
        _launch(_BWD, x, (grad_pooled, x, u, c, pooled, lse, grad_x, grad_u, grad_c, T, H, seq_bucket(T)),
                (grad_pooled, x, u, c), traced)
    return grad_x, grad_u, grad_c


class SoftmaxPoolFunction(torch.autograd.Function):
    """The eager path of lstm_attn.softmax_pool(backend="triton"): the launchers under a plain autograd.Function
    (torch.compile and export take the triton_op registration in lstm_attn.ops instead)."""

    @staticmethod
    def forward(ctx, x, u, c):
        pooled, lse = softmax_pool_fwd(x, u, c)
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(x, u, c, pooled, lse)
        return pooled

    @staticmethod
    def backward(ctx, grad_pooled):
        if grad_pooled is None:
            return None, None, None
        return softmax_pool_bwd(grad_pooled.contiguous(), *ctx.saved_tensors)
