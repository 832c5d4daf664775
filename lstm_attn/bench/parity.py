"""Parity before timing: a result that is wrong is refused, never timed as fast.

Every output (and, for passes with a backward, every gradient) is held to the package's parity rule,
lstm_attn.testing.parity_failure, against the reference computed in float64: the same rule the tests apply.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from lstm_attn.testing import parity_failure


@dataclass(frozen=True)
class Parity:
    err: float  # the largest max |got - truth| / max(1, max |truth|) over the tensors compared
    failure: str | None  # why the first failing tensor fails; None when all pass


Rule = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], "str | None"]


def check(got: dict[str, torch.Tensor], truth: dict[str, torch.Tensor],
          same_dtype_reference: dict[str, torch.Tensor], rule: Rule = parity_failure) -> Parity:
    """got, the float64 truth and the reference run in the inputs' dtype, by tensor name.

    rule(actual, truth, same_dtype_reference) says why a tensor fails, or None; the model case under autocast
    passes its own (see model_step.py).
    """
    missing = sorted(set(truth) - set(got))
    if missing:
        return Parity(float("nan"), f"no {', '.join(missing)} in the result")
    worst, failure = 0.0, None
    for name, ref in truth.items():
        why = rule(got[name], ref, same_dtype_reference[name])
        if why is not None and failure is None:
            failure = f"{name}: {why}"
        if got[name].shape == ref.shape and ref.numel():
            diff = (got[name].detach().double() - ref).abs().max().item()
            worst = max(worst, diff / max(1.0, ref.abs().max().item()))
    return Parity(worst, failure)
