"""layer_norm(softmax(q k^T * scale) v + residual) in Triton, flash plan: a FlashAttention-2 forward with the
residual and LayerNorm in its epilogue, and a recomputing backward; and the launchers, which run this plan or the
matmul plan (attention_layernorm_matmul.py), whichever they are handed (lstm_attn/plans.py chooses).

Forward (one launch): a program owns BLOCK_M query rows of one batch row, streams BLOCK_N keys/values at a time
through an online softmax, and keeps the (BLOCK_M, H) output on chip until the epilogue adds the residual and
normalizes: the attention output never makes a round trip through memory before the LayerNorm. It saves attn (the
attention output) and the row statistics lse, mean and rstd (one buffer, see layernorm.py).

Backward (two launches), no stored probability matrix and no atomics:
1. the LayerNorm backward per row (layernorm.py): grad_residual, which is also dO, the gradient of the attention
   output; the softmax backward's delta_i = attn_i . dO_i; per-program partial sums of grad_weight and grad_bias.
2. one kernel, as the Triton fused-attention tutorial's: each program computes dK and dV for one key block
   (walking the query blocks, recomputing P from q, k and the saved lse) and then dQ for one query block (walking
   the key blocks). That costs the scores once more than a shared pass would, but needs no atomics, so every
   gradient is deterministic. A few more programs sum the partials of grad_weight and grad_bias in a fixed order
   and cast them: nothing runs between the kernels.

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

from . import attention_layernorm_matmul as matmul_plan
from ._common import autotuners, cdiv, dot_precision, head_dim_block, launch_key, mma, seq_bucket, to_dtype
from ._launch import Launcher
from .layernorm import layernorm_bwd, reduce_launch, reduce_partials

# The plan arrives by name from the caller ("flash", this file; or "matmul", attention_layernorm_matmul.py: the
# products as GEMMs through torch, so cuBLAS with full Tensor Core tiles; softmax, residual and LayerNorm in Triton
# row kernels). lstm_attn/plans.py chooses it; the backward takes the forward's.
PLANS = ("flash", "matmul")


def _check_plan(plan: str) -> None:
    if plan not in PLANS:
        raise ValueError(f"plan must be one of {', '.join(PLANS)}; got {plan!r}")


def _table(rows_by_class: dict, names: tuple[str, ...]) -> dict:
    """{(head-dim blocks, float32?): [(*block sizes, num_warps, num_stages)]} -> {(block, float32?): configs}."""
    return {(block_h, wide): [triton.Config(dict(zip(names, row[:-2])), num_warps=row[-2], num_stages=row[-1])
                              for row in rows]
            for (blocks, wide), rows in rows_by_class.items() for block_h in blocks}


# Configs for Hopper by (head-dim block, float32?), first entry the default. Chosen from ptxas on sm_90 with
# Triton 3.6 (no GPU run yet). Forward: (BLOCK_M, BLOCK_N, num_warps, num_stages); every default fits shared memory
# and compiles without register spills, except the float16 forward at 128 < H <= 256 with H not a multiple of 16
# (128 bytes).
_FWD_TABLE = _table({
    ((16, 32, 64), False): [(64, 64, 4, 3), (128, 64, 8, 3), (64, 32, 4, 2)],
    ((128,), False): [(64, 64, 8, 2), (128, 64, 8, 2), (64, 64, 4, 2)],
    ((256,), False): [(64, 32, 8, 2), (32, 32, 8, 2), (64, 64, 8, 2)],
    ((512,), False): [(16, 32, 8, 2), (32, 16, 8, 1), (16, 16, 8, 2)],
    ((16, 32, 64), True): [(32, 32, 4, 2), (64, 64, 4, 3), (64, 32, 4, 2)],
    ((128,), True): [(64, 32, 4, 2), (32, 32, 8, 2), (32, 32, 4, 2)],
    ((256,), True): [(16, 32, 8, 2), (32, 32, 8, 1), (32, 32, 8, 2)],
    ((512,), True): [(16, 16, 8, 2), (16, 32, 8, 2), (16, 16, 4, 2)],
}, ("BLOCK_M", "BLOCK_N"))
# Backward: (BLOCK_M1, BLOCK_N1) are the dK/dV phase's query and key tiles (BLOCK_N1 key rows own the two
# accumulators, BLOCK_M1 query rows stream), (BLOCK_M2, BLOCK_N2) the dQ phase's. Each row joins the tiles of the
# former separate dK/dV and dQ kernels, with the dK/dV phase's warps where the two differed: the phases run one
# after the other, so the fused kernel needs the larger phase's registers, not their sum. ptxas for sm_90 (Triton
# 3.9's, run offline, no GPU) finds the defaults spill-free for 16-bit inputs at H = 64, 128, 256, 512 and float32
# at H = 64, 128, 256 (for float32 at H = 128 only the second of the joined rows was, so it leads); they spill at
# float32 H = 512 (368 bytes) and where H is not a multiple of 16 (H = 59: 24 bytes 16-bit, 60 float32; H = 200:
# 128 and 140). Not yet run on a GPU.
_BWD_TABLE = _table({
    ((16, 32, 64), False): [(64, 64, 64, 64, 4, 3), (64, 64, 128, 64, 8, 3), (64, 32, 64, 32, 4, 2)],
    ((128,), False): [(64, 32, 64, 64, 8, 2), (32, 64, 128, 64, 8, 2), (32, 32, 64, 32, 8, 2)],
    ((256,), False): [(32, 16, 64, 32, 8, 2), (16, 32, 32, 32, 8, 2), (32, 32, 64, 64, 8, 2)],
    ((512,), False): [(16, 32, 16, 32, 8, 2), (16, 16, 32, 16, 8, 1), (32, 16, 16, 16, 8, 2)],
    ((16, 32), True): [(32, 64, 64, 32, 8, 2), (32, 64, 32, 32, 4, 2), (32, 32, 64, 64, 8, 2)],
    ((64,), True): [(32, 32, 64, 32, 8, 2), (32, 64, 32, 32, 4, 2), (32, 64, 64, 64, 8, 2)],
    ((128,), True): [(32, 16, 64, 32, 8, 2), (16, 32, 32, 32, 8, 2), (16, 16, 32, 32, 8, 2)],
    ((256,), True): [(16, 16, 16, 16, 8, 2), (16, 16, 16, 32, 8, 1), (32, 16, 32, 16, 8, 1)],
    ((512,), True): [(16, 16, 16, 16, 8, 1), (32, 16, 16, 16, 8, 1)],
}, ("BLOCK_M1", "BLOCK_N1", "BLOCK_M2", "BLOCK_N2"))
_INTERPRETER_FWD = triton.Config({"BLOCK_M": 64, "BLOCK_N": 64}, num_warps=4, num_stages=1)
_INTERPRETER_BWD = triton.Config({"BLOCK_M1": 64, "BLOCK_N1": 64, "BLOCK_M2": 64, "BLOCK_N2": 64}, num_warps=4,
                                 num_stages=1)
_KEY = ["TQ_BUCKET", "TK_BUCKET"]
# Sizes take no integer specialization (== 1, multiple of 16): it would buy nothing here (H, which sets the
# alignment, keeps its own) and would multiply the variants compiled for every head-dim block and dtype.
_SIZES = ["B", "Tq", "Tk", "TQ_BUCKET", "TK_BUCKET", "num_partials"]
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


@triton.jit(do_not_specialize=["B", "Tq", "Tk", "TQ_BUCKET", "TK_BUCKET"])
def _attention_layernorm_fwd_kernel(
    Q, K, V, RESIDUAL, WEIGHT, BIAS, OUT, ATTN, STATS,
    B, Tq, Tk, H, scale, eps,
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

    rows = B * Tq
    stats = b * Tq + offs_m
    tl.store(STATS + stats, m_i + tl.log(l_i), mask=m_mask)
    tl.store(STATS + rows + stats, mean, mask=m_mask)
    tl.store(STATS + 2 * rows + stats, rstd, mask=m_mask)


@triton.jit
def _bwd_dkdv(Q, K, V, DO, LSE, DELTA, DK, DV, Tq, Tk, H, scale, start_n,
              BLOCK_H: tl.constexpr, QK_CHUNK: tl.constexpr, INPUT_PRECISION: tl.constexpr,
              BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """dK and dV of the keys start_n .. start_n + BLOCK_N (pointers at the batch row)."""
    offs_n = start_n + tl.arange(0, BLOCK_N)
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


@triton.jit
def _bwd_dq(Q, K, V, DO, LSE, DELTA, DQ, Tq, Tk, H, scale, start_m,
            BLOCK_H: tl.constexpr, QK_CHUNK: tl.constexpr, INPUT_PRECISION: tl.constexpr,
            BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """dQ of the queries start_m .. start_m + BLOCK_M (pointers at the batch row)."""
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_h = tl.arange(0, BLOCK_H)
    m_mask = offs_m < Tq
    h_mask = offs_h < H
    q_mask = m_mask[:, None] & h_mask[None, :]
    q_offs = offs_m[:, None] * H + offs_h[None, :]

    if QK_CHUNK == BLOCK_H:
        q = tl.load(Q + q_offs, mask=q_mask, other=0.0)
        do = tl.load(DO + q_offs, mask=q_mask, other=0.0)
    lse = tl.load(LSE + offs_m, mask=m_mask, other=0.0)
    delta = tl.load(DELTA + offs_m, mask=m_mask, other=0.0)
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


@triton.jit(do_not_specialize=["B", "Tq", "Tk", "num_partials", "TQ_BUCKET", "TK_BUCKET"])
def _attention_bwd_kernel(
    Q, K, V, DO, STATS, WORKSPACE, DQ, DK, DV, GRAD_WEIGHT, GRAD_BIAS,
    B, Tq, Tk, H, scale, num_partials,
    TQ_BUCKET, TK_BUCKET,  # autotuning keys only
    BLOCK_H: tl.constexpr, QK_CHUNK: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    RED_ROWS: tl.constexpr, RED_COLS: tl.constexpr,
    BLOCK_M1: tl.constexpr, BLOCK_N1: tl.constexpr, BLOCK_M2: tl.constexpr, BLOCK_N2: tl.constexpr,
):
    scale = tl.cast(scale, tl.float32)  # float64 when Inductor launches it (see the forward)
    # The first programs sum the grad_weight/grad_bias partials: low program ids start first, so this short
    # loop runs beside the attention programs instead of trailing them.
    reduce_programs = tl.cdiv(H, RED_COLS)
    pid = tl.program_id(0)
    if pid < reduce_programs:
        reduce_partials(WORKSPACE, num_partials, H, GRAD_WEIGHT, GRAD_BIAS, pid, RED_ROWS, RED_COLS)
    else:
        pid -= reduce_programs
        num_blocks = tl.maximum(tl.cdiv(Tk, BLOCK_N1), tl.cdiv(Tq, BLOCK_M2))
        b = (pid // num_blocks).to(tl.int64)
        block = pid % num_blocks
        q_off = b * Tq * H
        kv_off = b * Tk * H
        LSE = STATS + b * Tq
        DELTA = WORKSPACE + 2 * num_partials * H + b * Tq
        if block * BLOCK_N1 < Tk:
            _bwd_dkdv(Q + q_off, K + kv_off, V + kv_off, DO + q_off, LSE, DELTA, DK + kv_off, DV + kv_off,
                      Tq, Tk, H, scale, block * BLOCK_N1, BLOCK_H, QK_CHUNK, INPUT_PRECISION, BLOCK_M1, BLOCK_N1)
        if block * BLOCK_M2 < Tq:
            _bwd_dq(Q + q_off, K + kv_off, V + kv_off, DO + q_off, LSE, DELTA, DQ + q_off,
                    Tq, Tk, H, scale, block * BLOCK_M2, BLOCK_H, QK_CHUNK, INPUT_PRECISION, BLOCK_M2, BLOCK_N2)


_FWD = Launcher(autotuners(_attention_layernorm_fwd_kernel, _FWD_TABLE, _INTERPRETER_FWD, _KEY, "attention_fwd"))
_BWD = Launcher(autotuners(_attention_bwd_kernel, _BWD_TABLE, _INTERPRETER_BWD, _KEY, "attention_bwd"))


def _attention_spec(q, H, grid, **extra):
    """The launch class (head-dim block, float32 or not), grid and constexprs of an attention kernel."""
    block_h = head_dim_block(H)
    wide = q.dtype == torch.float32
    # Score products stream their operands unless a whole-row tile is cheap to hold (see the module docstring).
    resident = block_h <= _QK_CHUNK or (not wide and H % 16 == 0)
    return (block_h, wide), grid, dict(BLOCK_H=block_h, QK_CHUNK=block_h if resident else _QK_CHUNK,
                                       INPUT_PRECISION=dot_precision(q.dtype), **extra)


def attention_layernorm_fwd(q, k, v, residual, weight, bias, eps: float, scale: float, plan: str = "flash",
                            traced: bool = False):
    """-> out, attn (B, Tq, H) in the input dtype; stats (3, B, Tq) float32: lse, mean, rstd.

    Inputs must be contiguous and of a size and dtype the kernels take (check_launch). traced=True launches through
    wrap_triton (inside the triton_op bodies that torch.compile and export trace); otherwise through the cached
    launches."""
    _check_plan(plan)
    B, Tq, H = q.shape
    Tk = k.shape[1]
    if plan == "matmul":
        return matmul_plan.attention_layernorm_fwd(q, k, v, residual, weight, bias, eps, scale, traced)
    out = torch.empty_like(q)
    attn = torch.empty_like(q)
    stats = torch.empty((3, B, Tq), dtype=torch.float32, device=q.device)
    if B == 0:
        return out, attn, stats
    args = (q, k, v, residual, weight, bias, out, attn, stats, B, Tq, Tk, H, scale, eps, seq_bucket(Tq), seq_bucket(Tk))

    def spec():
        return _attention_spec(q, H, lambda cfg: (cdiv(Tq, cfg["BLOCK_M"]) * B,))

    if traced:
        _FWD.traced(args, spec)
    else:
        _FWD(launch_key(q, k, (q, k, v, residual, weight, bias)), args, spec)
    return out, attn, stats


def attention_layernorm_bwd(grad_out, q, k, v, residual, weight, attn, stats, scale: float, plan: str = "flash",
                            traced: bool = False):
    """-> grad_q, grad_k, grad_v, grad_residual (input shapes and dtype), grad_weight, grad_bias (H,).

    Inputs as in attention_layernorm_fwd; plan: the forward's."""
    _check_plan(plan)
    B, Tq, H = q.shape
    Tk = k.shape[1]
    # One key for the backward's launches: grad_out comes from outside too.
    key = None if traced else launch_key(q, k, (grad_out, q, k, v, residual, weight))
    if plan == "matmul":
        return matmul_plan.attention_layernorm_bwd(grad_out, q, k, v, residual, weight, attn, stats, scale, key)
    grad_q = torch.empty_like(q)
    grad_k = torch.empty_like(k)
    grad_v = torch.empty_like(v)
    grad_weight = torch.empty_like(weight)
    grad_bias = torch.empty_like(weight)
    if B == 0:
        return grad_q, grad_k, grad_v, torch.empty_like(residual), grad_weight.zero_(), grad_bias.zero_()
    grad_residual, workspace, num_partials = layernorm_bwd(grad_out, attn, residual, weight, stats, key)
    # grad_residual is dO: LayerNorm's input gradient is the attention output's gradient.
    args = (q, k, v, grad_residual, stats, workspace, grad_q, grad_k, grad_v, grad_weight, grad_bias,
            B, Tq, Tk, H, scale, num_partials, seq_bucket(Tq), seq_bucket(Tk))

    def spec():
        red_rows, red_cols = reduce_launch(head_dim_block(H))
        # The partials' programs first (see the kernel), then the attention programs of every batch row.
        grid = lambda cfg: (cdiv(H, red_cols) + B * max(cdiv(Tk, cfg["BLOCK_N1"]),  # noqa: E731
                                                               cdiv(Tq, cfg["BLOCK_M2"])),)
        return _attention_spec(q, H, grid, RED_ROWS=red_rows, RED_COLS=red_cols)

    if key is None:
        _BWD.traced(args, spec)
    else:
        _BWD(key, args, spec)
    return grad_q, grad_k, grad_v, grad_residual, grad_weight, grad_bias


class AttentionLayerNormFunction(torch.autograd.Function):
    """The eager path of lstm_attn.attention_layernorm(backend="triton"): the launchers under a plain
    autograd.Function, whose host cost is a fraction of torch.library's custom-op and autograd layers.
    torch.compile and export take the triton_op registration in lstm_attn.ops instead; both run these launchers
    and kernels, so both give bitwise the same results."""

    @staticmethod
    def forward(ctx, q, k, v, residual, weight, bias, eps: float, scale: float, plan: str):
        out, attn, stats = attention_layernorm_fwd(q, k, v, residual, weight, bias, eps, scale, plan)
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(q, k, v, residual, weight, attn, stats)
        ctx.scale, ctx.plan = scale, plan
        return out

    @staticmethod
    def backward(ctx, grad_out):
        if grad_out is None:
            return (None,) * 9
        grads = attention_layernorm_bwd(grad_out.contiguous(), *ctx.saved_tensors, ctx.scale, ctx.plan)
        return (*grads, None, None, None)
