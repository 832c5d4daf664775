"""The public functions: validate, pick a backend, call it."""

from __future__ import annotations

import torch
from torch import Tensor

from lstm_attn import backends
from lstm_attn.validation import check_attention_layernorm, check_lstm, check_softmax_pool

# The backends that take lstm_attn.lstm (triton has no LSTM kernels).
LSTM_BACKENDS = ("auto", *(name for name in backends.BACKENDS if backends.has_lstm(name)))


def _known(size) -> int | None:
    """A sequence length the backend choice may key on: a plain int, not the symbolic size that torch.export and
    dynamic torch.compile trace (unhashable, and a choice keyed on it would pin the traced length)."""
    return size if type(size) is int else None


def check_backend(backend: str, device=None, dtype=None, head_dim: int | None = None) -> None:
    """Refuses, with the reason, a backend name that does not exist or, given inputs, one that cannot run them."""
    backends.check_backend_name(backend)
    if device is not None:
        backends.resolve(backend, device, dtype, head_dim)


def attention_layernorm(q: Tensor, k: Tensor, v: Tensor, residual: Tensor, weight: Tensor, bias: Tensor,
                        eps: float = 1e-5, scale: float | None = None, backend: str = "auto") -> Tensor:
    """layer_norm(softmax(q @ k^T * scale) @ v + residual) over the last dim, fused.

    q, residual: (B, Tq, H); k, v: (B, Tk, H); weight, bias: (H,). Non-causal, single head, head dim H;
    scale defaults to H ** -0.5. Differentiable in every tensor input. backend: "auto", "reference",
    "cpu", "cuda" or "triton" (see lstm_attn.available_backends).
    """
    check_attention_layernorm(q, k, v, residual, weight, bias, eps, scale)
    H = q.shape[-1]
    impl = backends.resolve(backend, q.device, q.dtype, H, keys=_known(k.shape[1]))
    scale = H**-0.5 if scale is None else float(scale)
    return impl.attention_layernorm(q.contiguous(), k.contiguous(), v.contiguous(), residual.contiguous(),
                                    weight.contiguous(), bias.contiguous(), float(eps), scale)


def softmax_pool(x: Tensor, u: Tensor, c: Tensor, backend: str = "auto") -> Tensor:
    """sum_j softmax_j(x_j . u + c) x_j: x (B, T, H), u (B, H), c (B,) -> (B, H).

    The memory-bound core of the model's exact last-step attention: one pass over x per batch row.
    c shifts every score of a row alike, so it never changes the result; it is an input so that the
    parameters it comes from stay in the autograd graph (their gradient is zero up to rounding).
    """
    check_softmax_pool(x, u, c)
    impl = backends.resolve(backend, x.device, x.dtype, x.shape[-1], keys=_known(x.shape[1]))
    return impl.softmax_pool(x.contiguous(), u.contiguous(), c.contiguous())


def lstm(x: Tensor, weights, h0: Tensor | None = None, c0: Tensor | None = None, dropout: float = 0.0,
         training: bool = False, backend: str = "auto") -> tuple[Tensor, tuple[Tensor, Tensor]]:
    """nn.LSTM(batch_first=True) as a function of its flat weights: returns (output, (h_n, c_n)).

    x: (B, T, input_size), or (T, input_size) unbatched. weights: [weight_ih_l0, weight_hh_l0, bias_ih_l0,
    bias_hh_l0, weight_ih_l1, ...] in the order nn.LSTM._flat_weights holds them, so `lstm(x, m._flat_weights)` runs
    module m; without the biases for an nn.LSTM(bias=False); gates i, f, g, o. (Bidirectional and proj_size > 0 are
    refused.) h0, c0: (num_layers, B, H), or (num_layers, H) unbatched; zeros when None. dropout: the probability of
    dropping each layer's output on its way to the next, in training only (nn.LSTM's dropout). Differentiable in x,
    h0, c0 and every weight. output (B, T, H), h_n and c_n (num_layers, B, H), unbatched without B. backend: "auto",
    "reference" (PyTorch's LSTM), "cpu" or "cuda".
    """
    has_bias = check_lstm(x, weights, h0, c0, dropout, training)
    weights = list(weights)
    H = weights[1].shape[1]
    if not has_bias:
        # Zero biases add exactly nothing: every backend takes four tensors per layer.
        zeros = x.new_zeros(4 * H)
        weights = [w for i in range(0, len(weights), 2) for w in (weights[i], weights[i + 1], zeros, zeros)]
    unbatched = x.dim() == 2
    if unbatched:
        x, h0, c0 = x.unsqueeze(0), *(None if t is None else t.unsqueeze(1) for t in (h0, c0))
    # Under autocast the LSTM runs in the autocast dtype: its kernels are chosen for that dtype.
    device = x.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype
    impl = backends.resolve(backend, x.device, dtype, H, op="lstm")
    output, (h_n, c_n) = impl.lstm(x, weights, h0, c0, float(dropout), training)
    if unbatched:
        return output.squeeze(0), (h_n.squeeze(1), c_n.squeeze(1))
    return output, (h_n, c_n)


def empty_cache() -> int:
    """Return to the system the workspaces that the `cpu` backend's LSTM keeps between calls (up to 1 GiB; a training
    loop's steps reuse them instead of faulting in fresh pages), as torch.cuda.empty_cache() does for a GPU's cache.
    Returns the bytes freed."""
    from lstm_attn import ops  # noqa: F401  (loads the extension)

    return int(torch.ops.lstm_attn.cpu_empty_cache())
