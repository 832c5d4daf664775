"""layer_norm(softmax(q k^T * scale) v + residual) in Triton: a FlashAttention-2 forward with the residual and
LayerNorm in its epilogue, and a recomputing backward.

Forward: a program owns BLOCK_M query rows of one batch row, streams BLOCK_N keys/values at a time through an online
softmax, and keeps the (BLOCK_M, H) output on chip until the epilogue adds the residual and normalizes: the
attention output never makes a round trip through memory before the LayerNorm. It saves attn (the attention
output), the log-sum-exp of the scores and the LayerNorm mean and rstd.

Backward, three kernels and a fixed-order sum, no stored probability matrix:
1. LayerNorm backward per row: grad_residual (which is also dO, the gradient of the attention output), the
   softmax backward's delta_i = attn_i . dO_i, and per-program partial sums of grad_weight and grad_bias.
2. dK, dV: a program per key block walks the query blocks, recomputing P from q, k and the saved lse.
3. dQ: a program per query block walks the key blocks.
Splitting 2 and 3 costs the scores once more but needs no atomics, so every gradient is deterministic; the
partials of grad_weight and grad_bias are summed by torch in a fixed order.

Sizes: H is any value up to 512; tiles span BLOCK_H, the next power of two, with the columns past H masked. The
accumulators always hold whole rows. The products over H that make scores (q.k, dO.v) either use tiles held for
the whole loop or, where those would not fit in registers (float32 beyond H = 64, whose three-pass TF32 products
keep split copies of their operands, and H not a multiple of 16, whose unaligned rows are addressed element by
element), stream QK_CHUNK columns at a time from memory (L2-resident after the first pass).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

from ._common import INTERPRET, autotuners, check_launch, dot_precision, head_dim_block, mma, seq_bucket, to_dtype


def _table(rows_by_class: dict) -> dict:
    """{(head-dim blocks, float32?): [(BLOCK_M, BLOCK_N, num_warps, num_stages)]} -> {(block, float32?): configs}."""
    return {(block_h, wide): [triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=s)
                              for m, n, w, s in rows]
            for (blocks, wide), rows in rows_by_class.items() for block_h in blocks}


# (BLOCK_M, BLOCK_N, num_warps, num_stages) for Hopper by (head-dim block, float32?), first entry the default.
# Chosen from ptxas on sm_90 with Triton 3.6 (no GPU run yet). Every default fits shared memory and compiles without
# register spills, except for H > 256 in dK/dV (float32: 28 bytes, 72 if H is not a multiple of 16; 16-bit with H
# not a multiple of 16: 8 bytes) and float32 dQ (H not a multiple of 16: 12 bytes), and the float16 forward at
# 128 < H <= 256 with H not a multiple of 16 (128 bytes). The alternatives are the autotuner's to weigh. In dK/dV,
# BLOCK_N key rows own the two accumulators and BLOCK_M query rows stream; in the forward and dQ the reverse.
_FWD_TABLE = _table({
    ((16, 32, 64), False): [(64, 64, 4, 3), (128, 64, 8, 3), (64, 32, 4, 2)],
    ((128,), False): [(64, 64, 8, 2), (128, 64, 8, 2), (64, 64, 4, 2)],
    ((256,), False): [(64, 32, 8, 2), (32, 32, 8, 2), (64, 64, 8, 2)],
    ((512,), False): [(16, 32, 8, 2), (32, 16, 8, 1), (16, 16, 8, 2)],
    ((16, 32, 64), True): [(32, 32, 4, 2), (64, 64, 4, 3), (64, 32, 4, 2)],
    ((128,), True): [(64, 32, 4, 2), (32, 32, 8, 2), (32, 32, 4, 2)],
    ((256,), True): [(16, 32, 8, 2), (32, 32, 8, 1), (32, 32, 8, 2)],
    ((512,), True): [(16, 16, 8, 2), (16, 32, 8, 2), (16, 16, 4, 2)],
})
_DQ_TABLE = _table({
    ((16, 32, 64), False): [(64, 64, 4, 3), (128, 64, 8, 3), (64, 32, 4, 2)],
    ((128,), False): [(64, 64, 8, 2), (128, 64, 8, 2), (64, 32, 4, 2)],
    ((256,), False): [(64, 32, 8, 2), (32, 32, 8, 2), (64, 64, 8, 2)],
    ((512,), False): [(16, 32, 8, 2), (32, 16, 8, 1), (16, 16, 8, 2)],
    ((16, 32, 64), True): [(64, 32, 4, 2), (32, 32, 4, 2), (64, 64, 8, 2)],
    ((128,), True): [(32, 32, 8, 2), (64, 32, 4, 2), (32, 32, 4, 2)],
    ((256,), True): [(16, 16, 8, 2), (16, 32, 8, 2), (32, 16, 8, 2)],
    ((512,), True): [(16, 16, 8, 1), (16, 16, 8, 2), (16, 32, 8, 1)],
})
_DKDV_TABLE = _table({
    ((16, 32, 64), False): [(64, 64, 4, 3), (64, 64, 8, 3), (64, 32, 4, 2)],
    ((128,), False): [(64, 32, 8, 2), (32, 64, 8, 2), (32, 32, 8, 2)],
    ((256,), False): [(32, 16, 8, 2), (16, 32, 8, 2), (32, 32, 8, 2)],
    ((512,), False): [(16, 32, 8, 2), (16, 16, 8, 1), (32, 16, 8, 2)],
    ((16, 32), True): [(32, 64, 8, 2), (32, 64, 4, 2), (32, 32, 8, 2)],
    ((64,), True): [(32, 32, 8, 2), (32, 64, 4, 2), (32, 64, 8, 2)],
    ((128,), True): [(16, 32, 8, 2), (32, 16, 8, 2), (16, 16, 8, 2)],
    ((256,), True): [(16, 16, 8, 2), (16, 16, 8, 1), (32, 16, 8, 1)],
    ((512,), True): [(16, 16, 8, 1), (32, 16, 8, 1)],
})
_INTERPRETER_CONFIG = triton.Config({"BLOCK_M": 64, "BLOCK_N": 64}, num_warps=4, num_stages=1)
_KEY = ["TQ_BUCKET", "TK_BUCKET"]
# Lengths take no integer specialization (== 1, multiple of 16): it would buy nothing here (H, which sets the
# alignment, keeps its own) and would multiply the variants compiled for every head-dim block and dtype.
_SIZES = ["Tq", "Tk", "TQ_BUCKET", "TK_BUCKET"]
# Columns per streamed step of a score product (see the module docstring).
_QK_CHUNK = 64


@triton.jit
def _scores_streamed(A, a_rows, a_mask, B, b_rows, b_mask, H,
                     BLOCK_H: tl.constexpr, QK_CHUNK: tl.constexpr, INPUT_PRECISION: tl.constexpr):
    """sum_h A[a, h] B[b, h] for the rows a_rows of A and b_rows of B (pointers at the batch row), loading
    QK_CHUNK columns of each at a time."""
    s = tl.zeros([a_rows.shape[0], b_rows.shape[0]], tl.float32)
    for h0 in tl.static_range(0, BLOCK_H, QK_CHUNK):
        h = h0 + tl.arange(0, QK_CHUNK)
        h_mask = h < H
        a = tl.load(A + a_rows[:, None] * H + h[None, :], mask=a_mask[:, None] & h_mask[None, :], other=0.0)
        b = tl.load(B + b_rows[:, None] * H + h[None, :], mask=b_mask[:, None] & h_mask[None, :], other=0.0)
        s += mma(a, tl.trans(b), INPUT_PRECISION)
    return s


@triton.jit(do_not_specialize=_SIZES)
def _attention_layernorm_fwd_kernel(
    Q, K, V, RESIDUAL, WEIGHT, BIAS, OUT, ATTN, LSE, MEAN, RSTD,
    Tq, Tk, H, scale, eps,
    TQ_BUCKET, TK_BUCKET,  # autotuning keys only
    BLOCK_H: tl.constexpr, QK_CHUNK: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    # torch.compile's Inductor passes Python floats as float64 scalars; left so, they would promote the float32
    # softmax state to float64 in the loop.
    scale = tl.cast(scale, tl.float32)
    eps = tl.cast(eps, tl.float32)
    # One flat grid axis (batch-major): the batch can exceed the 65535 programs of the second axis.
    num_m_blocks = tl.cdiv(Tq, BLOCK_M)
    b = (tl.program_id(0) // num_m_blocks).to(tl.int64)
    # The batch offset (64-bit: B * T * H may pass 2**31) moves the base pointers once; tile offsets stay 32-bit.
    Q += b * Tq * H
    RESIDUAL += b * Tq * H
    OUT += b * Tq * H
    ATTN += b * Tq * H
    K += b * Tk * H
    V += b * Tk * H
    offs_m = (tl.program_id(0) % num_m_blocks) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_h = tl.arange(0, BLOCK_H)
    m_mask = offs_m < Tq
    h_mask = offs_h < H
    q_mask = m_mask[:, None] & h_mask[None, :]
    q_offs = offs_m[:, None] * H + offs_h[None, :]

    if QK_CHUNK == BLOCK_H:
        q = tl.load(Q + q_offs, mask=q_mask, other=0.0)
    # Running max and running sum of the online softmax, and the unnormalized output. The scores stay in natural
    # units (no log2(e) folded into the scale, as FlashAttention does to save a multiply): the saved lse is then
    # m + log(l) with no change of base, and the backward's exp(s - lse) rounds half as much for large scores.
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_H], tl.float32)
    # Every key block holds at least one real key, so m_i is finite after the first block and no block's
    # rescaling evaluates -inf - (-inf).
    for start_n in range(0, Tk, BLOCK_N):
        n = start_n + offs_n
        n_mask = n < Tk
        kv_offs = n[:, None] * H + offs_h[None, :]
        kv_mask = n_mask[:, None] & h_mask[None, :]
        if QK_CHUNK == BLOCK_H:
            s = mma(q, tl.trans(tl.load(K + kv_offs, mask=kv_mask, other=0.0)), INPUT_PRECISION)
        else:
            s = _scores_streamed(Q, offs_m, m_mask, K, n, n_mask, H, BLOCK_H, QK_CHUNK, INPUT_PRECISION)
        s = tl.where(n_mask[None, :], s * scale, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp(m_i - m_new)
        p = tl.exp(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(V + kv_offs, mask=kv_mask, other=0.0)
        acc = acc * alpha[:, None] + mma(to_dtype(p, v.dtype), v, INPUT_PRECISION)
        m_i = m_new

    # Epilogue: normalize, save attn, add the residual and apply the LayerNorm in float32 (the columns past H are
    # zero in attn and residual, so the sum for the mean needs no mask; the centred values do). The LayerNorm
    # reads attn as saved, in the input dtype: its statistics then describe exactly the rows the backward
    # rebuilds from the saved attn, and the forward loses no more than that rounding.
    attn = to_dtype(acc / l_i[:, None], ATTN.dtype.element_ty)
    tl.store(ATTN + q_offs, attn, mask=q_mask)
    y = attn.to(tl.float32) + tl.load(RESIDUAL + q_offs, mask=q_mask, other=0.0).to(tl.float32)
    mean = tl.sum(y, 1) / H
    centred = tl.where(h_mask[None, :], y - mean[:, None], 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(centred * centred, 1) / H + eps)
    weight = tl.load(WEIGHT + offs_h, mask=h_mask, other=0.0).to(tl.float32)
    bias = tl.load(BIAS + offs_h, mask=h_mask, other=0.0).to(tl.float32)
    out = centred * rstd[:, None] * weight[None, :] + bias[None, :]
    tl.store(OUT + q_offs, to_dtype(out, OUT.dtype.element_ty), mask=q_mask)

    stats = b * Tq + offs_m
    tl.store(LSE + stats, m_i + tl.log(l_i), mask=m_mask)
    tl.store(MEAN + stats, mean, mask=m_mask)
    tl.store(RSTD + stats, rstd, mask=m_mask)


@triton.jit(do_not_specialize=["rows"])
def _layernorm_bwd_kernel(
    GRAD_OUT, ATTN, RESIDUAL, WEIGHT, MEAN, RSTD, GRAD_RESIDUAL, DELTA, PARTIALS,
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
    mean = tl.load(MEAN + first_row + offs_r, mask=r_mask, other=0.0)
    rstd = tl.load(RSTD + first_row + offs_r, mask=r_mask, other=0.0)
    weight = tl.load(WEIGHT + offs_h, mask=h_mask, other=0.0).to(tl.float32)

    xhat = tl.where(mask, (attn + residual - mean[:, None]) * rstd[:, None], 0.0)
    g = grad_out * weight[None, :]
    mean_gx = tl.sum(g * xhat, 1) / H
    mean_g = tl.sum(g, 1) / H
    dy = tl.where(mask, (g - xhat * mean_gx[:, None] - mean_g[:, None]) * rstd[:, None], 0.0)
    dy = to_dtype(dy, GRAD_RESIDUAL.dtype.element_ty)
    tl.store(GRAD_RESIDUAL + base + offs, dy, mask=mask)
    # delta = attn . dO with dO as the attention kernels will read it (in the input dtype).
    tl.store(DELTA + first_row + offs_r, tl.sum(attn * dy.to(tl.float32), 1), mask=r_mask)

    # This program's share of grad_weight (row pid) and grad_bias (row num_programs + pid).
    tl.store(PARTIALS + pid * H + offs_h, tl.sum(grad_out * xhat, 0), mask=h_mask)
    tl.store(PARTIALS + (tl.num_programs(0) + pid) * H + offs_h, tl.sum(grad_out, 0), mask=h_mask)


@triton.jit(do_not_specialize=_SIZES)
def _attention_bwd_dkdv_kernel(
    Q, K, V, DO, LSE, DELTA, DK, DV,
    Tq, Tk, H, scale,
    TQ_BUCKET, TK_BUCKET,  # autotuning keys only
    BLOCK_H: tl.constexpr, QK_CHUNK: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    scale = tl.cast(scale, tl.float32)  # float64 when Inductor launches it (see the forward)
    num_n_blocks = tl.cdiv(Tk, BLOCK_N)
    b = (tl.program_id(0) // num_n_blocks).to(tl.int64)
    Q += b * Tq * H
    DO += b * Tq * H
    K += b * Tk * H
    V += b * Tk * H
    DK += b * Tk * H
    DV += b * Tk * H
    LSE += b * Tq
    DELTA += b * Tq
    offs_n = (tl.program_id(0) % num_n_blocks) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    offs_h = tl.arange(0, BLOCK_H)
    n_mask = offs_n < Tk
    h_mask = offs_h < H
    kv_mask = n_mask[:, None] & h_mask[None, :]
    kv_offs = offs_n[:, None] * H + offs_h[None, :]

    if QK_CHUNK == BLOCK_H:
        k = tl.load(K + kv_offs, mask=kv_mask, other=0.0)
        v = tl.load(V + kv_offs, mask=kv_mask, other=0.0)
    dk = tl.zeros([BLOCK_N, BLOCK_H], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_H], tl.float32)
    # Transposed scores (keys down, queries across), so dV and dK accumulate with plain (not transposed) products.
    for start_m in range(0, Tq, BLOCK_M):
        m = start_m + offs_m
        m_mask = m < Tq
        q_offs = m[:, None] * H + offs_h[None, :]
        q_mask = m_mask[:, None] & h_mask[None, :]
        q = tl.load(Q + q_offs, mask=q_mask, other=0.0)
        do = tl.load(DO + q_offs, mask=q_mask, other=0.0)
        if QK_CHUNK == BLOCK_H:
            s_t = mma(k, tl.trans(q), INPUT_PRECISION)
            dp_t = mma(v, tl.trans(do), INPUT_PRECISION)
        else:
            s_t = _scores_streamed(K, offs_n, n_mask, Q, m, m_mask, H, BLOCK_H, QK_CHUNK, INPUT_PRECISION)
            dp_t = _scores_streamed(V, offs_n, n_mask, DO, m, m_mask, H, BLOCK_H, QK_CHUNK, INPUT_PRECISION)
        lse = tl.load(LSE + m, mask=m_mask, other=0.0)
        delta = tl.load(DELTA + m, mask=m_mask, other=0.0)
        p_t = tl.where(m_mask[None, :], tl.exp(s_t * scale - lse[None, :]), 0.0)
        dv += mma(to_dtype(p_t, do.dtype), do, INPUT_PRECISION)
        ds_t = p_t * (dp_t - delta[None, :])
        dk += mma(to_dtype(ds_t, q.dtype), q, INPUT_PRECISION)
    tl.store(DK + kv_offs, to_dtype(dk * scale, DK.dtype.element_ty), mask=kv_mask)
    tl.store(DV + kv_offs, to_dtype(dv, DV.dtype.element_ty), mask=kv_mask)


@triton.jit(do_not_specialize=_SIZES)
def _attention_bwd_dq_kernel(
    Q, K, V, DO, LSE, DELTA, DQ,
    Tq, Tk, H, scale,
    TQ_BUCKET, TK_BUCKET,  # autotuning keys only
    BLOCK_H: tl.constexpr, QK_CHUNK: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    scale = tl.cast(scale, tl.float32)  # float64 when Inductor launches it (see the forward)
    num_m_blocks = tl.cdiv(Tq, BLOCK_M)
    b = (tl.program_id(0) // num_m_blocks).to(tl.int64)
    Q += b * Tq * H
    DO += b * Tq * H
    DQ += b * Tq * H
    K += b * Tk * H
    V += b * Tk * H
    offs_m = (tl.program_id(0) % num_m_blocks) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_h = tl.arange(0, BLOCK_H)
    m_mask = offs_m < Tq
    h_mask = offs_h < H
    q_mask = m_mask[:, None] & h_mask[None, :]
    q_offs = offs_m[:, None] * H + offs_h[None, :]

    if QK_CHUNK == BLOCK_H:
        q = tl.load(Q + q_offs, mask=q_mask, other=0.0)
        do = tl.load(DO + q_offs, mask=q_mask, other=0.0)
    lse = tl.load(LSE + b * Tq + offs_m, mask=m_mask, other=0.0)
    delta = tl.load(DELTA + b * Tq + offs_m, mask=m_mask, other=0.0)
    dq = tl.zeros([BLOCK_M, BLOCK_H], tl.float32)
    for start_n in range(0, Tk, BLOCK_N):
        n = start_n + offs_n
        n_mask = n < Tk
        kv_offs = n[:, None] * H + offs_h[None, :]
        kv_mask = n_mask[:, None] & h_mask[None, :]
        k = tl.load(K + kv_offs, mask=kv_mask, other=0.0)
        if QK_CHUNK == BLOCK_H:
            s = mma(q, tl.trans(k), INPUT_PRECISION)
            dp = mma(do, tl.trans(tl.load(V + kv_offs, mask=kv_mask, other=0.0)), INPUT_PRECISION)
        else:
            s = _scores_streamed(Q, offs_m, m_mask, K, n, n_mask, H, BLOCK_H, QK_CHUNK, INPUT_PRECISION)
            dp = _scores_streamed(DO, offs_m, m_mask, V, n, n_mask, H, BLOCK_H, QK_CHUNK, INPUT_PRECISION)
        p = tl.where(n_mask[None, :], tl.exp(s * scale - lse[:, None]), 0.0)
        ds = p * (dp - delta[:, None])
        dq += mma(to_dtype(ds, k.dtype), k, INPUT_PRECISION)
    tl.store(DQ + q_offs, to_dtype(dq * scale, DQ.dtype.element_ty), mask=q_mask)


_FWD = autotuners(_attention_layernorm_fwd_kernel, _FWD_TABLE, _INTERPRETER_CONFIG, _KEY)
_DKDV = autotuners(_attention_bwd_dkdv_kernel, _DKDV_TABLE, _INTERPRETER_CONFIG, _KEY)
_DQ = autotuners(_attention_bwd_dq_kernel, _DQ_TABLE, _INTERPRETER_CONFIG, _KEY)


def _layernorm_bwd_launch(block_h: int) -> tuple[int, int]:
    """(rows per program, num_warps) of the LayerNorm backward. Fixed rather than tuned: the number of programs
    sizes the grad_weight/grad_bias partials buffer, allocated before the launch. On a GPU about 16 elements of
    each row tile per thread; the interpreter takes big tiles, since each program costs Python time."""
    if INTERPRET:
        return max(1, 16384 // block_h), 4
    num_warps = 4 if block_h <= 128 else 8
    return max(1, 16 * 32 * num_warps // block_h), num_warps


def _attention_launch(q, H: int) -> tuple[tuple, dict]:
    """What the three attention kernels share: the autotuners' key (head-dim block, float32 or not) and the launch
    arguments that follow from the shapes and dtype."""
    block_h = head_dim_block(H)
    wide = q.dtype == torch.float32
    # Score products stream their operands unless a whole-row tile is cheap to hold (see the module docstring).
    resident = block_h <= _QK_CHUNK or (not wide and H % 16 == 0)
    meta = dict(BLOCK_H=block_h, QK_CHUNK=block_h if resident else _QK_CHUNK, INPUT_PRECISION=dot_precision(q.dtype))
    return (block_h, wide), meta


def attention_layernorm_fwd(q, k, v, residual, weight, bias, eps: float, scale: float):
    """-> out, attn (B, Tq, H) in the input dtype; lse, mean, rstd (B, Tq) float32."""
    q, k, v, residual, weight, bias = (t.contiguous() for t in (q, k, v, residual, weight, bias))
    B, Tq, H = q.shape
    Tk = k.shape[1]
    check_launch("attention_layernorm", q.dtype, Tq=Tq, Tk=Tk, H=H)
    out = torch.empty_like(q)
    attn = torch.empty_like(q)
    lse, mean, rstd = (q.new_empty((B, Tq), dtype=torch.float32) for _ in range(3))
    if B == 0:
        return out, attn, lse, mean, rstd
    kernel_class, meta = _attention_launch(q, H)
    wrap_triton(_FWD[kernel_class])[lambda cfg: (triton.cdiv(Tq, cfg["BLOCK_M"]) * B,)](
        q, k, v, residual, weight, bias, out, attn, lse, mean, rstd,
        Tq, Tk, H, scale, eps, seq_bucket(Tq), seq_bucket(Tk), **meta)
    return out, attn, lse, mean, rstd


def attention_layernorm_bwd(grad_out, q, k, v, residual, weight, attn, lse, mean, rstd, scale: float):
    """-> grad_q, grad_k, grad_v, grad_residual (input shapes and dtype), grad_weight, grad_bias (H,)."""
    grad_out, q, k, v, residual, weight, attn, lse, mean, rstd = (
        t.contiguous() for t in (grad_out, q, k, v, residual, weight, attn, lse, mean, rstd))
    B, Tq, H = q.shape
    Tk = k.shape[1]
    check_launch("attention_layernorm", q.dtype, Tq=Tq, Tk=Tk, H=H)
    grad_q = torch.empty_like(q)
    grad_k = torch.empty_like(k)
    grad_v = torch.empty_like(v)
    grad_residual = torch.empty_like(residual)
    delta = q.new_empty((B, Tq), dtype=torch.float32)
    block_h = head_dim_block(H)
    rows_per_program, num_warps = _layernorm_bwd_launch(block_h)
    # Rows 0..n-1: grad_weight partials, rows n..2n-1: grad_bias partials, one pair per program.
    num_programs = triton.cdiv(B * Tq, rows_per_program)
    partials = q.new_empty((2, num_programs, H), dtype=torch.float32)
    if B > 0:
        wrap_triton(_layernorm_bwd_kernel)[(num_programs,)](
            grad_out, attn, residual, weight, mean, rstd, grad_residual, delta, partials, B * Tq, H,
            BLOCK_R=rows_per_program, BLOCK_H=block_h, num_warps=num_warps)
        kernel_class, meta = _attention_launch(q, H)
        args = (Tq, Tk, H, scale, seq_bucket(Tq), seq_bucket(Tk))
        # grad_residual is dO: LayerNorm's input gradient is the attention output's gradient.
        wrap_triton(_DKDV[kernel_class])[lambda cfg: (triton.cdiv(Tk, cfg["BLOCK_N"]) * B,)](
            q, k, v, grad_residual, lse, delta, grad_k, grad_v, *args, **meta)
        wrap_triton(_DQ[kernel_class])[lambda cfg: (triton.cdiv(Tq, cfg["BLOCK_M"]) * B,)](
            q, k, v, grad_residual, lse, delta, grad_q, *args, **meta)
    # A fixed-order reduction over the partials (torch's sum is deterministic on a given device).
    grad_weight = partials[0].sum(0).to(weight.dtype)
    grad_bias = partials[1].sum(0).to(weight.dtype)
    return grad_q, grad_k, grad_v, grad_residual, grad_weight, grad_bias
