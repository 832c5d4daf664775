"""Input checks shared by every backend, run before any kernel.

Each message names the argument and says what was wrong, so a user reads their mistake instead of a
shape error from deep inside a kernel (or worse, a silent wrong answer).
"""

from __future__ import annotations

import math

import torch

from lstm_attn.limits import ALL_FLOATS as FLOAT_DTYPES


def _check_tensor(name: str, t, ndim: int, what: str) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != ndim:
        raise ValueError(f"{name} must be {ndim}-D {what}, got {t.dim()}-D with shape {tuple(t.shape)}")


def _check_same_device_and_dtype(named: dict[str, torch.Tensor]) -> None:
    first_name, first = next(iter(named.items()))
    # Every call of every backend passes here: the common case (all alike and supported) in one pass, the loops
    # below only to name the first problem.
    device, dtype = first.device, first.dtype
    if dtype in FLOAT_DTYPES and all(t.device == device and t.dtype == dtype for t in named.values()):
        return
    for name, t in named.items():
        if t.device != first.device:
            raise ValueError(
                f"{name} is on {t.device} but {first_name} is on {first.device}: all inputs must be on one device"
            )
    for name, t in named.items():
        if t.dtype not in FLOAT_DTYPES:
            raise TypeError(f"{name} has dtype {t.dtype}; supported dtypes are {', '.join(map(str, FLOAT_DTYPES))}")
    for name, t in named.items():
        if t.dtype != first.dtype:
            raise TypeError(
                f"{name} has dtype {t.dtype} but {first_name} has {first.dtype}: all inputs must share one dtype"
            )


def _check_positive(name: str, size: int, what: str) -> None:
    if size == 0:
        raise ValueError(f"{name} has {what} = 0; it must be at least 1")


def _is_number(x) -> bool:
    # torch.compile(dynamic=True) hands Python floats in as SymFloat (ints as SymInt); bool is not a number here.
    return isinstance(x, (int, float, torch.SymInt, torch.SymFloat)) and not isinstance(x, bool)


def _finite(x) -> bool:
    # Comparisons rather than math.isfinite, which cannot take a SymFloat; NaN fails both.
    return -math.inf < x < math.inf


def check_attention_layernorm(q, k, v, residual, weight, bias, eps, scale) -> None:
    _check_tensor("q", q, 3, "(B, Tq, H)")
    _check_tensor("k", k, 3, "(B, Tk, H)")
    _check_tensor("v", v, 3, "(B, Tk, H)")
    _check_tensor("residual", residual, 3, "(B, Tq, H)")
    _check_tensor("weight", weight, 1, "(H,)")
    _check_tensor("bias", bias, 1, "(H,)")
    B, Tq, H = q.shape
    _check_positive("q", Tq, "Tq (dim 1)")
    _check_positive("q", H, "H (dim 2)")
    if k.shape[0] != B or k.shape[2] != H:
        raise ValueError(f"k has shape {tuple(k.shape)}; expected (B={B}, Tk, H={H}) to match q {tuple(q.shape)}")
    _check_positive("k", k.shape[1], "Tk (dim 1)")
    if v.shape != k.shape:
        raise ValueError(f"v has shape {tuple(v.shape)}; expected the shape of k, {tuple(k.shape)}")
    if residual.shape != q.shape:
        raise ValueError(f"residual has shape {tuple(residual.shape)}; expected the shape of q, {tuple(q.shape)}")
    for name, t in (("weight", weight), ("bias", bias)):
        if t.shape[0] != H:
            raise ValueError(f"{name} has shape {tuple(t.shape)}; expected (H,) = ({H},)")
    _check_same_device_and_dtype({"q": q, "k": k, "v": v, "residual": residual, "weight": weight, "bias": bias})
    if not (_is_number(eps) and _finite(eps) and eps > 0):
        raise ValueError(f"eps must be a finite number > 0, got {eps!r}")
    if scale is not None and not (_is_number(scale) and _finite(scale)):
        raise ValueError(f"scale must be a finite number (or None for H ** -0.5), got {scale!r}")


def check_softmax_pool(x, u, c) -> None:
    _check_tensor("x", x, 3, "(B, T, H)")
    _check_tensor("u", u, 2, "(B, H)")
    _check_tensor("c", c, 1, "(B,)")
    B, T, H = x.shape
    _check_positive("x", T, "T (dim 1)")
    _check_positive("x", H, "H (dim 2)")
    if u.shape != (B, H):
        raise ValueError(f"u has shape {tuple(u.shape)}; expected (B, H) = ({B}, {H}) to match x {tuple(x.shape)}")
    if c.shape != (B,):
        raise ValueError(f"c has shape {tuple(c.shape)}; expected (B,) = ({B},) to match x {tuple(x.shape)}")
    _check_same_device_and_dtype({"x": x, "u": u, "c": c})


_LSTM_WEIGHT_NAMES = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")


def _lstm_layout(weights, input_size: int) -> tuple[int, int]:
    """(tensors per layer: 4 with biases, 2 without; H) of nn.LSTM flat weights, refusing, by name, what an nn.LSTM
    with proj_size > 0 or bidirectional=True holds: told apart by shape (an nn.LSTM(I, H, 1, bidirectional=True)
    with I = H is the one case that reads as a valid 2-layer LSTM)."""
    if not isinstance(weights, (list, tuple)) or not all(isinstance(w, torch.Tensor) for w in weights):
        raise TypeError("weights must be a list of tensors: an nn.LSTM's _flat_weights "
                        "[weight_ih_l0, weight_hh_l0, bias_ih_l0, bias_hh_l0, weight_ih_l1, ...]")
    if len(weights) < 2:
        raise ValueError(f"weights must hold weight_ih and weight_hh per layer (and bias_ih, bias_hh with "
                         f"bias=True), as nn.LSTM._flat_weights holds them; got {len(weights)} tensors")
    _check_tensor("weights[1] (weight_hh_l0)", weights[1], 2, "(4H, H)")
    rows, cols = weights[1].shape
    if rows % 4 == 0 and rows > 0 and cols != rows // 4:
        raise ValueError(f"weights[1] (weight_hh_l0) has shape {tuple(weights[1].shape)}, not (4H, H): the flat "
                         f"weights of an nn.LSTM with proj_size = {cols} > 0, which lstm_attn.lstm does not support "
                         f"(proj_size must be 0)")
    hidden = cols
    per_layer = 4 if len(weights) > 2 and weights[2].dim() == 1 else 2
    for i in range(per_layer, len(weights), per_layer):
        w = weights[i]
        if isinstance(w, torch.Tensor) and w.dim() == 2 and w.shape[0] == 4 * hidden and hidden > 0:
            layer = i // per_layer
            if w.shape[1] == 2 * hidden or (layer % 2 == 1 and w.shape[1] == input_size != hidden):
                raise ValueError(f"weights[{i}] has shape {tuple(w.shape)}: the flat weights of a bidirectional "
                                 f"nn.LSTM (its reverse direction or a layer above it), which lstm_attn.lstm does "
                                 f"not support (bidirectional must be False)")
    if len(weights) % per_layer:
        raise ValueError(f"weights must hold four tensors per layer (weight_ih, weight_hh, bias_ih, bias_hh), or two "
                         f"(weight_ih, weight_hh) for an nn.LSTM with bias=False, as nn.LSTM._flat_weights holds "
                         f"them; got {len(weights)}, which is neither for weights[2] of dim {weights[2].dim()}")
    return per_layer, hidden


def check_lstm(x, weights, h0, c0, dropout, training) -> bool:
    """Checks lstm_attn.lstm's arguments; returns whether the weights include biases (nn.LSTM's bias=True)."""
    _check_tensor("x", x, x.dim() if isinstance(x, torch.Tensor) and x.dim() in (2, 3) else 3,
                  "(B, T, input_size), batch_first as nn.LSTM(batch_first=True) takes it, or (T, input_size) "
                  "unbatched")
    batched = x.dim() == 3
    T, input_size = x.shape[-2:]
    _check_positive("x", T, f"T (dim {x.dim() - 2})")
    _check_positive("x", input_size, f"input_size (dim {x.dim() - 1})")
    per_layer, hidden = _lstm_layout(weights, input_size)
    _check_positive("weights[1] (weight_hh_l0)", hidden, "H (dim 1)")
    names = _LSTM_WEIGHT_NAMES[:per_layer]
    named = {"x": x}
    for i, w in enumerate(weights):
        layer, kind = divmod(i, per_layer)
        name = f"weights[{i}] ({names[kind]}_l{layer})"
        expected = ((4 * hidden, input_size if layer == 0 else hidden), (4 * hidden, hidden), (4 * hidden,),
                    (4 * hidden,))[kind]
        if tuple(w.shape) != expected:
            raise ValueError(f"{name} has shape {tuple(w.shape)}; expected {expected} for H = {hidden}"
                             f"{' and input_size = ' + str(input_size) if kind == 0 and layer == 0 else ''}")
        named[name] = w
    layers = len(weights) // per_layer
    expected = (layers, x.shape[0], hidden) if batched else (layers, hidden)
    what = "(num_layers, B, H)" if batched else "(num_layers, H) for an unbatched x"
    for name, t in (("h0", h0), ("c0", c0)):
        if t is not None:
            _check_tensor(name, t, len(expected), what)
            if tuple(t.shape) != expected:
                raise ValueError(f"{name} has shape {tuple(t.shape)}; expected {what} = {expected}")
            named[name] = t
    _check_same_device_and_dtype(named)
    if not (_is_number(dropout) and 0 <= dropout <= 1):
        raise ValueError(f"dropout must be a number in [0, 1], got {dropout!r}")
    if not isinstance(training, bool):
        raise TypeError(f"training must be a bool, got {training!r}")
    return per_layer == 4
