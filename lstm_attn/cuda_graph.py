"""A training step's forward, loss and backward captured once in a CUDA graph and replayed for every batch of the
captured shape: one launch of host time instead of one per kernel, which is most of a small model's step on a GPU.

PyTorch's recipe (torch.cuda.graph, "whole-network capture"): static input and target buffers, warm-up passes on a
side stream, then capture. The optimizer step stays outside the graph, where Lightning counts it (global_step,
schedulers, checkpoints) and where one fused Adam kernel costs little host time; so the warm-up passes update
nothing, and the first replayed step is the model's first step. Inside the graph autocast's cast cache is off: a
cast of a parameter cached at capture would be stale once the optimizer updated the parameter. A batch of another
shape (the last, partial one) runs eagerly, its gradients accumulated into the graph's own gradient tensors, which
is where the optimizer reads them.

Requirements: the model on a GPU, one process (no DistributedDataParallel hooks in a graph), no gradient scaler
(float16 mixed precision); `lstm-attn train --cuda-graph` checks them before training.
"""

from __future__ import annotations

import contextlib

import torch
from torch import Tensor

WARMUP_PASSES = 3


def _autocast_without_cache():
    # Lightning's bf16-mixed runs the step under autocast; re-entered here with the same dtype and no cast cache.
    if torch.is_autocast_enabled("cuda"):
        return torch.autocast("cuda", dtype=torch.get_autocast_dtype("cuda"), cache_enabled=False)
    return contextlib.nullcontext()


class GraphedForwardBackward:
    """Calls return the loss of model.loss_fn(model(x), y) after its backward, the gradients left in the
    parameters' .grad (written, not accumulated) for the optimizer to step on."""

    def __init__(self):
        self.graph: torch.cuda.CUDAGraph | None = None
        self.x = self.y = self.loss = None

    def _loss(self, model, x: Tensor, y: Tensor) -> Tensor:
        with _autocast_without_cache():
            return model.loss_fn(model(x), y)

    def _capture(self, model, x: Tensor, y: Tensor) -> None:
        if not x.is_cuda:
            raise RuntimeError(f"CUDA-graph training needs the model and data on a GPU; the batch is on {x.device}")
        self.x, self.y = x.clone(), y.clone()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # cuBLAS handles, autotuning and the allocator settle before the capture
            for _ in range(WARMUP_PASSES):
                model.zero_grad(set_to_none=True)
                self._loss(model, self.x, self.y).backward()
        torch.cuda.current_stream().wait_stream(side)
        # Gradients created during the capture live in the graph's memory, and each replay overwrites them.
        model.zero_grad(set_to_none=True)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.loss = self._loss(model, self.x, self.y)
            self.loss.backward()

    def __call__(self, model, x: Tensor, y: Tensor) -> Tensor:
        if self.graph is None:
            self._capture(model, x, y)
        if x.shape != self.x.shape or y.shape != self.y.shape:
            for p in model.parameters():
                if p.grad is not None:
                    p.grad.zero_()
            loss = self._loss(model, x, y)
            loss.backward()  # accumulates into the graph's gradient tensors, zeroed above
            return loss.detach()
        self.x.copy_(x)
        self.y.copy_(y)
        self.graph.replay()
        return self.loss.detach().clone()
