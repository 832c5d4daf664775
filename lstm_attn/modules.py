"""LSTMWithAttention and AttentionLayer: the original classes (lstm_attn.reference), computed fast.

Constructor arguments, submodules and state_dict keys are the original's, so a checkpoint moves both ways
with load_state_dict(strict=True); the additions are `lr` (Adam's learning rate, by default the original's 0.001)
and `backend`, which picks the kernels of lstm_attn.softmax_pool / lstm_attn.attention_layernorm (see AttentionLayer
for its full-sequence output) and of lstm_attn.lstm, through which the nn.LSTM submodule's own parameters run. The
model calls the functional API only: which kernels run below it is the backends' and the plan tables' choice.

The original forward reads only the last row of the attention output. For that row attention collapses,
exactly, to a softmax-weighted mean of the LSTM output (AttentionLayer.last_step), so the model never
builds K, V or the (T, T) scores: O(B*T*H + B*H^2) instead of O(B*T*H^2 + B*T^2*H).
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

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
    """The original single-head self-attention: softmax(Q K^T * scale) V with Q, K, V linear in x.

    Which kernels run, by backend:
      last_step (what LSTMWithAttention.forward uses): lstm_attn.softmax_pool on `backend`, every backend.
      forward (the whole (B, T, H) output, which the original model computes and then mostly drops): "reference"
        runs the original model's arithmetic; every other backend runs PyTorch's F.scaled_dot_product_attention, since the
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
        """The full attention output, (B, T, H) -> (B, T, H), as the original's."""
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
        term, so it stays in the autograd graph (its gradient zero up to rounding, as in the original) and
        DistributedDataParallel finds every parameter used.
        """
        q = self.query(x[:, -1])
        u = self.scale * torch.matmul(q, self.key.weight)
        c = self.scale * (q * self.key.bias).sum(-1)
        pooled = softmax_pool(x, u.to(x.dtype), c.to(x.dtype), backend=_kernel_backend(self.backend))
        return self.value(pooled)


SEED_LR = 0.001  # the original's Adam learning rate, which its configure_optimizers fixes
# The constructor's arguments that a checkpoint must give, in its hyperparameters or, but for dropout, its weights.
REQUIRED_ARGUMENTS = ("input_size", "hidden_size", "num_layers", "dropout")
_LSTM_LAYER_KEY = re.compile(r"lstm\.weight_ih_l(\d+)")


class LSTMWithAttention(pl.LightningModule):
    """The original model: LSTM -> self-attention -> residual LayerNorm -> linear head on the last step.

    `lr` is Adam's learning rate (the original fixes it at SEED_LR). The class is a pytorch_lightning.LightningModule, as
    the original's: train it with pytorch_lightning's Trainer, also in a project that uses the `lightning` package (see
    the README).
    """

    def __init__(self, input_size, hidden_size, num_layers, dropout, output_size=1, backend="auto", lr=SEED_LR):
        super().__init__()
        self.save_hyperparameters()
        self.lr = lr
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

    @staticmethod
    def sizes_from_state_dict(state_dict) -> dict:
        """input_size, hidden_size, num_layers and output_size, read from the shapes of the weights: what a checkpoint
        without hyperparameters (the original class never saved them) still tells. Dropout is not in the weights.
        A ValueError if `state_dict` is not this model's."""
        layers = [int(m.group(1)) for key in state_dict if (m := _LSTM_LAYER_KEY.fullmatch(key))]
        missing = [k for k in ("lstm.weight_ih_l0", "lstm.weight_hh_l0", "fc.weight") if k not in state_dict]
        if missing or not layers:
            raise ValueError(f"the weights are not LSTMWithAttention's: no {', '.join(missing) or 'LSTM layers'}")
        return {"input_size": state_dict["lstm.weight_ih_l0"].shape[1],
                "hidden_size": state_dict["lstm.weight_hh_l0"].shape[1],
                "num_layers": max(layers) + 1, "output_size": state_dict["fc.weight"].shape[0]}

    @classmethod
    def arguments_for_checkpoint(cls, checkpoint: dict, given: dict | None = None) -> tuple[dict, list[str]]:
        """The constructor arguments a checkpoint lacks in its hyperparameters and `given` does not supply, read from
        its weights (sizes_from_state_dict), and the names of those it cannot tell: ["dropout"] (then 0.0), or []."""
        known = {**(checkpoint.get("hyper_parameters") or {}), **(given or {})}
        if all(k in known for k in REQUIRED_ARGUMENTS):
            return {}, []
        sizes = cls.sizes_from_state_dict(checkpoint.get("state_dict") or {})
        inferred = {k: v for k, v in sizes.items() if k not in known}
        if "dropout" in known:
            return inferred, []
        return {**inferred, "dropout": 0.0}, ["dropout"]

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path, map_location=None, hparams_file=None, strict=None,
                             weights_only=None, **kwargs):
        """Lightning's load_from_checkpoint, which also loads checkpoints without hyperparameters, such as the original
        class writes: the sizes come from the weights' shapes, and dropout, which they do not hold, is 0.0 unless
        given (a warning says so; it matters only to further training). Arguments given here win, as in Lightning."""
        if hparams_file is None and not all(k in kwargs for k in REQUIRED_ARGUMENTS):
            checkpoint = _read_checkpoint(checkpoint_path, weights_only)
            inferred, unknown = cls.arguments_for_checkpoint(checkpoint, kwargs) if checkpoint else ({}, [])
            if unknown:
                warnings.warn(f"the checkpoint records no {' or '.join(unknown)} (a checkpoint of the original class "
                              f"saves no hyperparameters): 0.0 assumed; pass dropout=... to load_from_checkpoint to "
                              f"set it. The sizes were read from the weights: {inferred}", UserWarning, stacklevel=2)
            kwargs = {**inferred, **kwargs}
        # Lightning before 2.4 has no weights_only: passed on only when given.
        extra = {} if weights_only is None else {"weights_only": weights_only}
        return super().load_from_checkpoint(checkpoint_path, map_location, hparams_file, strict, **extra, **kwargs)

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
        # The original's Adam; fused (one kernel) where the step's other kernels are one graph replay.
        return torch.optim.Adam(self.parameters(), lr=self.lr, **({"fused": True} if self._graphed else {}))


def _read_checkpoint(source, weights_only: bool | None) -> dict:
    """A checkpoint's contents, to read its hyperparameters and weight shapes before Lightning loads it: a local file
    memory-mapped (its tensors' bytes are not read), a file object read and rewound. {} for anything else (a remote
    path) or a file torch cannot read: Lightning's own loading then says what is wrong with it."""
    weights_only = True if weights_only is None else weights_only
    try:
        if isinstance(source, (str, Path)):
            if not Path(source).is_file():
                return {}
            return torch.load(source, map_location="cpu", weights_only=weights_only, mmap=True)
        start = source.tell()
        checkpoint = torch.load(source, map_location="cpu", weights_only=weights_only)
        source.seek(start)
        return checkpoint
    except Exception:  # noqa: BLE001  (reported by the load that follows, with Lightning's message)
        return {}
