"""The original LSTMWithAttention in plain PyTorch and Lightning: the model lstm_attn makes fast.

Everything fast in this package is tested against this file and lstm_attn/reference_ops.py. Keep it short and
obviously right: the classes below are the original code, unchanged in meaning, so a checkpoint of the original
model loads here and the outputs are its outputs.
"""

from __future__ import annotations

import pytorch_lightning as pl
import torch
import torch.nn as nn
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
