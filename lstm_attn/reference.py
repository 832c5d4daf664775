"""The seed's model (ADR 004) in plain PyTorch, and the functional references of lstm_attn's ops.

Everything fast in this package is tested against this file. Keep it short and obviously right:
the classes below are the seed's, unchanged in meaning, so a checkpoint of the seed loads here and
the outputs are the seed's outputs.
"""

from __future__ import annotations

import pytorch_lightning as pl
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn import LayerNorm


class AttentionLayer(nn.Module):
    def __init__(self, hidden_size):
        super().__init__()
        self.query = nn.Linear(hidden_size, hidden_size)
        self.key = nn.Linear(hidden_size, hidden_size)
        self.value = nn.Linear(hidden_size, hidden_size)
        self.scale = hidden_size**-0.5

    def forward(self, x):
        Q = self.query(x)
        K = self.key(x)
        V = self.value(x)

        scores = torch.matmul(Q, K.transpose(-2, -1)) * self.scale
        weights = torch.softmax(scores, dim=-1)

        return torch.matmul(weights, V)


class LSTMWithAttention(pl.LightningModule):
    def __init__(self, input_size, hidden_size, num_layers, dropout, output_size=1):
        super().__init__()
        self.lstm = nn.LSTM(
            input_size=input_size,
            hidden_size=hidden_size,
            num_layers=num_layers,
            dropout=dropout,
            batch_first=True,
        )
        self.attention = AttentionLayer(hidden_size)
        self.layer_norm = LayerNorm(hidden_size)
        self.fc = nn.Linear(hidden_size, output_size)
        self.loss_fn = nn.MSELoss()

    def forward(self, x):
        lstm_out, (h_n, c_n) = self.lstm(x)

        attn_out = self.attention(lstm_out)
        attn_out = self.layer_norm(attn_out + lstm_out)

        last_out = attn_out[:, -1, :]

        output = self.fc(last_out)
        return output

    def training_step(self, batch, batch_idx):
        x, y = batch
        y_hat = self(x)
        loss = self.loss_fn(y_hat, y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        y_hat = self(x)
        loss = self.loss_fn(y_hat, y)
        self.log("val_loss", loss)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=0.001)


def attention_layernorm(q, k, v, residual, weight, bias, eps=1e-5, scale=None):
    """layer_norm(softmax(q @ k^T * scale) @ v + residual): the seed's arithmetic, op for op."""
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
