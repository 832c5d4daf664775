"""LSTMWithAttention and AttentionLayer: the original classes (lstm_attn.reference), computed fast.

Constructor arguments, submodules and state_dict keys are the original's, so a checkpoint moves both ways
with load_state_dict(strict=True); the one addition is `backend`, which picks the kernels of
lstm_attn.softmax_pool / lstm_attn.attention_layernorm (see AttentionLayer for its full-sequence output) and of
lstm_attn.lstm, through which the nn.LSTM submodule's own parameters run. The model calls the functional API
only: which kernels run below it is the backends' and the plan tables' choice.

The seed's forward reads only the last row of the attention output. For that row attention collapses,
exactly, to a softmax-weighted mean of the LSTM output (AttentionLayer.last_step), so the model never
builds K, V or the (T, T) scores: O(B*T*H + B*H^2) instead of O(B*T*H^2 + B*T^2*H).
"""

from __future__ import annotations

import pytorch_lightning as pl
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor
from torch.nn import LayerNorm

from lstm_attn.functional import LSTM_BACKENDS, attention_layernorm, check_backend, softmax_pool
from lstm_attn.functional import lstm as lstm_op


def _kernel_backend(backend: str) -> str:
    # An ONNX graph must hold standard ops only; the reference backend is plain torch, which every exporter
    # lowers to them. Eager, compiled and trained models keep the backend they were given.
    return "reference" if torch.onnx.is_in_onnx_export() else backend


class AttentionLayer(nn.Module):
    """The seed's single-head self-attention: softmax(Q K^T * scale) V with Q, K, V linear in x.

    Which kernels run, by backend:
      last_step (what LSTMWithAttention.forward uses): lstm_attn.softmax_pool on `backend`, every backend.
      forward (the whole (B, T, H) output, which the seed's model computes and then mostly drops): "reference"
        runs the seed's arithmetic; every other backend runs PyTorch's F.scaled_dot_product_attention, since the
        package's kernels fuse attention with the residual and LayerNorm (LSTMWithAttention.sequence_features)
        and have no bare-attention output. A named backend must still be able to run on the input's device and
        dtype: one that cannot is refused with the op's own error, never silently replaced.
    """

    def __init__(self, hidden_size, backend="auto"):
        super().__init__()
        check_backend(backend)
        self.query = nn.Linear(hidden_size, hidden_size)
        self.key = nn.Linear(hidden_size, hidden_size)
        self.value = nn.Linear(hidden_size, hidden_size)
        self.scale = hidden_size**-0.5
        self.backend = backend

    def forward(self, x: Tensor) -> Tensor:
        """The full attention output, (B, T, H) -> (B, T, H), as the seed's."""
        q, k, v = self.query(x), self.key(x), self.value(x)
        backend = _kernel_backend(self.backend)
        if backend == "reference":
            weights = torch.softmax(torch.matmul(q, k.transpose(-2, -1)) * self.scale, dim=-1)
            return torch.matmul(weights, v)
        if backend != "auto":
            check_backend(backend, q.device, q.dtype, q.shape[-1])  # the op's error where it cannot run
        # Seen as one head of a 4-D batch, the CPU and GPU flash kernels take it: they never store the
        # (T, T) weights, unlike the 3-D path, which falls back to the unfused math.
        out = F.scaled_dot_product_attention(q.unsqueeze(1), k.unsqueeze(1), v.unsqueeze(1), scale=self.scale)
        return out.squeeze(1)

    def last_step(self, x: Tensor) -> Tensor:
        """forward(x)[:, -1], (B, T, H) -> (B, H), in O(T*H + H^2) per batch row.

        With q = Wq x_T + bq, the score of step j is scale * q.(Wk x_j + bk) = (scale Wk^T q).x_j + scale q.bk.
        The second term is the same for every j, so the softmax ignores it; and since the weights sum to 1,
        sum_j p_j (Wv x_j + bv) = Wv (sum_j p_j x_j) + bv. The key bias still enters through that constant
        term, so it stays in the autograd graph (its gradient zero up to rounding, as in the seed) and
        DistributedDataParallel finds every parameter used.
        """
        q = self.query(x[:, -1])
        u = self.scale * torch.matmul(q, self.key.weight)
        c = self.scale * (q * self.key.bias).sum(-1)
        pooled = softmax_pool(x, u.to(x.dtype), c.to(x.dtype), backend=_kernel_backend(self.backend))
        return self.value(pooled)


class LSTMWithAttention(pl.LightningModule):
    """The seed's model: LSTM -> self-attention -> residual LayerNorm -> linear head on the last step."""

    def __init__(self, input_size, hidden_size, num_layers, dropout, output_size=1, backend="auto"):
        super().__init__()
        self.save_hyperparameters()
        self.lstm = nn.LSTM(
            input_size=input_size,
            hidden_size=hidden_size,
            num_layers=num_layers,
            dropout=dropout,
            batch_first=True,
        )
        self.attention = AttentionLayer(hidden_size, backend=backend)
        self.layer_norm = LayerNorm(hidden_size)
        self.fc = nn.Linear(hidden_size, output_size)
        self.loss_fn = nn.MSELoss()
        # The LSTM runs on the model's backend where that has LSTM kernels, else on "auto" (triton has none: its
        # name picks the attention's kernels).
        self.lstm_backend = backend if backend in LSTM_BACKENDS else "auto"
        # What the LSTM op needs of the nn.LSTM, also held here: under torch.compile, touching an nn.LSTM object
        # at all makes Dynamo refuse it (a graph break; an error with fullgraph=True). The parameter objects are
        # nn.LSTM's own, re-read wherever PyTorch may replace them (_apply, load_state_dict).
        self._lstm_dropout = float(dropout)
        self._refresh_lstm_weights()
        self.register_load_state_dict_post_hook(lambda module, keys: module._refresh_lstm_weights())
        self._graphed = None  # set by use_cuda_graph

    def use_cuda_graph(self, enabled: bool = True) -> LSTMWithAttention:
        """Train with each step's forward, loss and backward captured once in a CUDA graph and replayed
        (lstm_attn.cuda_graph): one launch of host time per step. Call before Trainer.fit; needs a GPU and
        one process, and no float16 gradient scaler (32-true or bf16-mixed). The optimizer step, fused Adam, runs
        after each replay through Lightning (manual optimization), so step counts, checkpoints and the update are
        Lightning's and Adam's as in eager training. Returns self."""
        from lstm_attn.cuda_graph import GraphedForwardBackward

        self._graphed = GraphedForwardBackward() if enabled else None
        self.automatic_optimization = not enabled
        return self

    def _refresh_lstm_weights(self) -> None:
        self._lstm_weights = tuple(getattr(self.lstm, name) for name in self.lstm._flat_weights_names)

    def _apply(self, fn, *args, **kwargs):
        result = super()._apply(fn, *args, **kwargs)
        self._refresh_lstm_weights()
        return result

    def _lstm(self, x: Tensor) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """The LSTM on x through lstm_attn.lstm, with the submodule's own parameters (so parameters and state_dict
        stay nn.LSTM's, and the reference backend runs exactly what nn.LSTM's forward runs)."""
        return lstm_op(x, list(self._lstm_weights), dropout=self._lstm_dropout, training=self.training,
                       backend=_kernel_backend(self.lstm_backend))

    def forward(self, x: Tensor) -> Tensor:
        lstm_out, _ = self._lstm(x)
        last = lstm_out[:, -1]
        return self.fc(self.layer_norm(self.attention.last_step(lstm_out) + last))

    def sequence_features(self, x: Tensor) -> Tensor:
        """layer_norm(attention(h) + h) at every step, h the LSTM output: (B, T, input) -> (B, T, H).

        The seed computes this whole tensor and keeps its last row; forward needs only that row. This is for
        callers who want every step, through the fused attention + residual + LayerNorm op.
        """
        h, _ = self._lstm(x)
        attention = self.attention
        # Under autocast the Linear outputs and the LSTM output may be in a lower precision than LayerNorm's
        # parameters; the fused op takes one dtype, that of the sequence it streams (it accumulates in float32).
        q, k, v = (proj(h).to(h.dtype) for proj in (attention.query, attention.key, attention.value))
        norm = self.layer_norm
        return attention_layernorm(q, k, v, h, norm.weight.to(h.dtype), norm.bias.to(h.dtype),
                                   eps=norm.eps, scale=attention.scale, backend=_kernel_backend(attention.backend))

    def training_step(self, batch, batch_idx):
        x, y = batch
        if self._graphed is not None:
            loss = self._graphed(self, x, y)
            self.optimizers().step()  # the gradients are the graph's, overwritten by each replay: no zero_grad
        else:
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
        # The seed's Adam; fused (one kernel) where the step's other kernels are one graph replay.
        return torch.optim.Adam(self.parameters(), lr=0.001, **({"fused": True} if self._graphed else {}))
