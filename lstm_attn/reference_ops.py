"""lstm_attn's ops in plain PyTorch: the original model's arithmetic, op for op, as functions.

The `reference` backend runs these, and every fast path is tested against them. They import torch alone, so that
`import lstm_attn` stays light (the original model's classes, in lstm_attn/reference.py, need Lightning).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def attention_layernorm(q, k, v, residual, weight, bias, eps=1e-5, scale=None):
    """layer_norm(softmax(q @ k^T * scale) @ v + residual): the original model's arithmetic, op for op."""
    if scale is None:
        scale = q.shape[-1] ** -0.5
    scores = torch.matmul(q, k.transpose(-2, -1)) * scale
    weights = torch.softmax(scores, dim=-1)
    attn = torch.matmul(weights, v)
    return F.layer_norm(attn + residual, (q.shape[-1],), weight, bias, eps)


def softmax_pool(x, u, c):
    """sum_j softmax_j(x_j . u + c) x_j over the time axis: x (B, T, H), u (B, H), c (B,) -> (B, H)."""
    scores = torch.matmul(x, u.unsqueeze(-1)).squeeze(-1) + c.unsqueeze(-1)
    weights = torch.softmax(scores, dim=-1)
    return torch.matmul(weights.unsqueeze(1), x).squeeze(1)


def lstm(x, weights, h0=None, c0=None, dropout=0.0, training=False):
    """nn.LSTM(batch_first=True) with both biases as a function of its flat weights: PyTorch's own LSTM (cuDNN on a
    GPU, oneDNN on a CPU), exactly what the module runs. Returns (output, (h_n, c_n))."""
    zeros = x.new_zeros(len(weights) // 4, x.shape[0], weights[1].shape[1])
    output, h_n, c_n = torch.lstm(x, (zeros if h0 is None else h0, zeros if c0 is None else c0), weights, True,
                                  len(weights) // 4, dropout, training, False, True)
    return output, (h_n, c_n)
