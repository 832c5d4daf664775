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


def check_lstm(x, weights, h0, c0, dropout, training) -> None:
    _check_tensor("x", x, 3, "(B, T, input_size); batch_first, as nn.LSTM(batch_first=True) takes it")
    _, T, input_size = x.shape
    _check_positive("x", T, "T (dim 1)")
    _check_positive("x", input_size, "input_size (dim 2)")
    if not isinstance(weights, (list, tuple)) or not all(isinstance(w, torch.Tensor) for w in weights):
        raise TypeError("weights must be a list of tensors: an nn.LSTM's _flat_weights "
                        "[weight_ih_l0, weight_hh_l0, bias_ih_l0, bias_hh_l0, weight_ih_l1, ...]")
    if len(weights) == 0 or len(weights) % 4:
        raise ValueError(f"weights must hold four tensors per layer (weight_ih, weight_hh, bias_ih, bias_hh), as an "
                         f"nn.LSTM with bias=True and proj_size=0 holds them; got {len(weights)}")
    _check_tensor("weights[1] (weight_hh_l0)", weights[1], 2, "(4H, H)")
    hidden = weights[1].shape[1]
    _check_positive("weights[1] (weight_hh_l0)", hidden, "H (dim 1)")
    named = {"x": x}
    for i, w in enumerate(weights):
        layer, kind = divmod(i, 4)
        name = f"weights[{i}] ({_LSTM_WEIGHT_NAMES[kind]}_l{layer})"
        expected = ((4 * hidden, input_size if layer == 0 else hidden), (4 * hidden, hidden), (4 * hidden,),
                    (4 * hidden,))[kind]
        if tuple(w.shape) != expected:
            raise ValueError(f"{name} has shape {tuple(w.shape)}; expected {expected} for H = {hidden}"
                             f"{' and input_size = ' + str(input_size) if kind == 0 and layer == 0 else ''}")
        named[name] = w
    expected = (len(weights) // 4, x.shape[0], hidden)
    for name, t in (("h0", h0), ("c0", c0)):
        if t is not None:
            _check_tensor(name, t, 3, "(num_layers, B, H)")
            if tuple(t.shape) != expected:
                raise ValueError(f"{name} has shape {tuple(t.shape)}; expected (num_layers, B, H) = {expected}")
            named[name] = t
    _check_same_device_and_dtype(named)
    if not (_is_number(dropout) and 0 <= dropout <= 1):
        raise ValueError(f"dropout must be a number in [0, 1], got {dropout!r}")
    if not isinstance(training, bool):
        raise TypeError(f"training must be a bool, got {training!r}")
