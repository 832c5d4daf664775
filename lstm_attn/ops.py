"""Registration of lstm_attn's ops with torch.library: fake (meta) rules, and autograd for the Triton ops.

Three ops, each a forward and a backward:
- attention_layernorm: layer_norm(softmax(q k^T * scale) v + residual). The forward also returns what the
  backward needs: the attention output before the residual (B, Tq, H, input dtype), three row statistics
  (B, Tq), float32 (float64 for float64 inputs): the log-sum-exp of the scaled scores, the LayerNorm mean and
  rstd (the Triton op returns the three as one (3, B, Tq) buffer); and, from the extension's op, the softmax
  itself (B, Tq, Tk) where its kernel plan keeps it ("gemm", "gemm3xtf32"), else an empty tensor. The extension's op
  takes the kernel plan by name (plans.py chooses it).
- softmax_pool: sum_j softmax_j(x_j . u + c) x_j, the memory-bound middle of the model's exact last-step
  path. Its forward also returns the log-sum-exp of the scores (B,), float32 (float64 for float64 inputs).
- lstm: nn.LSTM(batch_first=True) over its flat weights, with an explicit dropout mask and a kernel plan by name
  (plans.py chooses it). Its forward also returns,
  where a gradient will be asked for, every layer's h (x's dtype), cell states and gates (float32, float64 for
  float64 inputs), from which the backward runs without recomputing the forward.

The C++ schemas live in csrc/ops.cpp, with CPU kernels beside them and CUDA kernels in csrc/cuda/; the
Triton kernels live in lstm_attn.kernels and are registered here as triton_ops under their own names, so
torch.compile sees through both. This module only registers; backends.py decides which op runs (and, for Triton
in eager mode, takes lstm_attn.kernels' autograd.Functions instead of these registrations).
"""

from __future__ import annotations

import torch
from torch import Tensor

from lstm_attn.extras import install_hint
from lstm_attn.plans import KEEPS_PROBS

try:
    from lstm_attn import _C  # noqa: F401  (loading it runs the TORCH_LIBRARY registrations)

    EXTENSION_ERROR: str | None = None
except ImportError as exc:  # a source checkout that was never built, or a build against another torch
    EXTENSION_ERROR = f"the C++ extension lstm_attn._C did not load ({exc}); reinstall with `pip install --no-build-isolation -e .`"

try:
    from lstm_attn import kernels as triton_kernels

    TRITON_ERROR: str | None = None
except ImportError as exc:
    triton_kernels = None
    TRITON_ERROR = f"triton is not importable ({exc}; {install_hint('triton')})"


def _attention_layernorm_shapes(q: Tensor, k: Tensor, v: Tensor, residual: Tensor, weight: Tensor, bias: Tensor):
    torch._check(q.dim() == 3 and k.dim() == 3 and v.dim() == 3, lambda: "q, k, v must be 3-D")
    torch._check(k.shape == v.shape, lambda: f"k {tuple(k.shape)} and v {tuple(v.shape)} differ")
    torch._check(residual.shape == q.shape, lambda: f"residual {tuple(residual.shape)} and q {tuple(q.shape)} differ")
    torch._check(k.shape[0] == q.shape[0] and k.shape[2] == q.shape[2], lambda: "q and k differ in B or H")
    torch._check(weight.shape == (q.shape[2],) and bias.shape == (q.shape[2],), lambda: "weight, bias must be (H,)")


def _row_stats(like: Tensor, *shape) -> Tensor:
    # The accumulation type: float64 statistics for float64 inputs, float32 for every other dtype.
    return like.new_empty(shape, dtype=torch.float64 if like.dtype == torch.float64 else torch.float32)


def _fake_attention_layernorm_fwd(q, k, v, residual, weight, bias, eps, scale, plan="tiled"):
    _attention_layernorm_shapes(q, k, v, residual, weight, bias)
    B, Tq, _ = q.shape
    probs = q.new_empty((B, Tq, k.shape[1]) if plan in KEEPS_PROBS else (0,))
    return (torch.empty_like(q), torch.empty_like(q), *(_row_stats(q, B, Tq) for _ in range(3)), probs)


def _fake_attention_layernorm_bwd(grad_out, q, k, v, residual, weight, attn, lse, mean, rstd, probs, scale,
                                  plan="tiled"):
    torch._check(grad_out.shape == q.shape, lambda: "grad_out must have the shape of q")
    return (torch.empty_like(q), torch.empty_like(k), torch.empty_like(v), torch.empty_like(residual),
            torch.empty_like(weight), torch.empty_like(weight))


def _fake_softmax_pool_fwd(x, u, c):
    torch._check(x.dim() == 3 and u.shape == (x.shape[0], x.shape[2]) and c.shape == (x.shape[0],),
                 lambda: "softmax_pool expects x (B, T, H), u (B, H), c (B,)")
    return x.new_empty((x.shape[0], x.shape[2])), _row_stats(x, x.shape[0])


def _fake_softmax_pool_bwd(grad_pooled, x, u, c, pooled, lse):
    return torch.empty_like(x), torch.empty_like(u), torch.empty_like(c)


def _fake_lstm_fwd(x, weights, h0, c0, dropout_mask, for_backward, plan):
    torch._check(x.dim() == 3 and len(weights) % 4 == 0 and len(weights) > 0,
                 lambda: "lstm_fwd expects x (B, T, I) and four weights per layer")
    L, (B, T, _), H = len(weights) // 4, x.shape, weights[1].shape[1]
    torch._check(h0.shape == (L, B, H) and c0.shape == (L, B, H), lambda: "h0, c0 must be (L, B, H)")
    kept = ((L, T + 1, B, H), (L, T, B, H), (L, T, B, 4 * H)) if for_backward else ((0,), (0,), (0,))
    return (x.new_empty(B, T, H), x.new_empty(L, B, H), x.new_empty(L, B, H), x.new_empty(kept[0]),
            _row_stats(x, *kept[1]), _row_stats(x, *kept[2]))


def _fake_lstm_bwd(grad_output, grad_h_n, grad_c_n, x, weights, h0, c0, dropout_mask, hidden, cell, gates, plan):
    return x.new_empty(x.shape), [w.new_empty(w.shape) for w in weights], h0.new_empty(h0.shape), c0.new_empty(c0.shape)


def _register_attention_layernorm_autograd(fwd_name: str, bwd_op) -> None:
    def setup_context(ctx, inputs, output):
        q, k, v, residual, weight, bias, eps, scale, plan = inputs
        out, attn, stats = output
        ctx.mark_non_differentiable(attn, stats)
        ctx.save_for_backward(q, k, v, residual, weight, attn, stats)
        ctx.scale, ctx.plan = scale, plan

    def backward(ctx, grad_out, *_unused_statistics_grads):
        grads = bwd_op(grad_out.contiguous(), *ctx.saved_tensors, ctx.scale, ctx.plan)
        return (*grads, None, None, None)

    torch.library.register_autograd(fwd_name, backward, setup_context=setup_context)


def _register_softmax_pool_autograd(fwd_name: str, bwd_op) -> None:
    def setup_context(ctx, inputs, output):
        x, u, c = inputs
        pooled, lse = output
        ctx.mark_non_differentiable(lse)
        ctx.save_for_backward(x, u, c, pooled, lse)

    def backward(ctx, grad_pooled, _unused_lse_grad):
        return bwd_op(grad_pooled.contiguous(), *ctx.saved_tensors)

    torch.library.register_autograd(fwd_name, backward, setup_context=setup_context)


if EXTENSION_ERROR is None:
    torch.library.register_fake("lstm_attn::attention_layernorm_fwd")(_fake_attention_layernorm_fwd)
    torch.library.register_fake("lstm_attn::attention_layernorm_bwd")(_fake_attention_layernorm_bwd)
    torch.library.register_fake("lstm_attn::softmax_pool_fwd")(_fake_softmax_pool_fwd)
    torch.library.register_fake("lstm_attn::softmax_pool_bwd")(_fake_softmax_pool_bwd)
    torch.library.register_fake("lstm_attn::lstm_fwd")(_fake_lstm_fwd)
    torch.library.register_fake("lstm_attn::lstm_bwd")(_fake_lstm_bwd)
    # Their autograd is C++ (csrc/autograd.cpp): a Python autograd.Function would cost host time on every call.


if TRITON_ERROR is None:
    # The registration torch.compile, export and opcheck see; eager calls take the plain autograd.Functions of
    # lstm_attn.kernels over the same launchers (backends.py chooses), which cost far less host time. triton_op
    # traces its body (allocations plus wrap_triton launches, hence traced=True) for torch.compile and runs it
    # under fake tensors for shapes, so these need no separate fake rule. The Triton forward returns the row
    # statistics as one (3, B, Tq) buffer: lse, mean, rstd.
    def _check_attention(q: Tensor, k: Tensor) -> None:
        triton_kernels.check_launch("attention_layernorm", q.dtype, Tq=q.shape[1], Tk=k.shape[1], H=q.shape[2])

    @torch.library.triton_op("lstm_attn::triton_attention_layernorm_fwd", mutates_args=())
    def triton_attention_layernorm_fwd(q: Tensor, k: Tensor, v: Tensor, residual: Tensor, weight: Tensor,
                                       bias: Tensor, eps: float, scale: float, plan: str
                                       ) -> tuple[Tensor, Tensor, Tensor]:
        _check_attention(q, k)
        return triton_kernels.attention_layernorm_fwd(*(t.contiguous() for t in (q, k, v, residual, weight, bias)),
                                                      eps, scale, plan, traced=True)

    @torch.library.triton_op("lstm_attn::triton_attention_layernorm_bwd", mutates_args=())
    def triton_attention_layernorm_bwd(grad_out: Tensor, q: Tensor, k: Tensor, v: Tensor, residual: Tensor,
                                       weight: Tensor, attn: Tensor, stats: Tensor, scale: float, plan: str
                                       ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
        _check_attention(q, k)
        tensors = (grad_out, q, k, v, residual, weight, attn, stats)
        return triton_kernels.attention_layernorm_bwd(*(t.contiguous() for t in tensors), scale, plan, traced=True)

    @torch.library.triton_op("lstm_attn::triton_softmax_pool_fwd", mutates_args=())
    def triton_softmax_pool_fwd(x: Tensor, u: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
        triton_kernels.check_launch("softmax_pool", x.dtype, T=x.shape[1], H=x.shape[2])
        return triton_kernels.softmax_pool_fwd(x.contiguous(), u.contiguous(), c.contiguous(), traced=True)

    @torch.library.triton_op("lstm_attn::triton_softmax_pool_bwd", mutates_args=())
    def triton_softmax_pool_bwd(grad_pooled: Tensor, x: Tensor, u: Tensor, c: Tensor, pooled: Tensor,
                                lse: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        triton_kernels.check_launch("softmax_pool", x.dtype, T=x.shape[1], H=x.shape[2])
        tensors = (grad_pooled, x, u, c, pooled, lse)
        return triton_kernels.softmax_pool_bwd(*(t.contiguous() for t in tensors), traced=True)

    _register_attention_layernorm_autograd("lstm_attn::triton_attention_layernorm_fwd",
                                           torch.ops.lstm_attn.triton_attention_layernorm_bwd)
    _register_softmax_pool_autograd("lstm_attn::triton_softmax_pool_fwd", torch.ops.lstm_attn.triton_softmax_pool_bwd)
