"""The model case: a training step of the original LSTMWithAttention beside ours, and the seed's step in parts.

Passes (the original model: lstm_attn.reference; ours: lstm_attn.modules.LSTMWithAttention, one row per backend):
  step       forward, MSE loss, backward, Adam step (the seed's optimizer, lr 1e-3): seed and ours
  lstm       the LSTM alone, forward and backward: seed only (ours runs the same nn.LSTM)
  attention  attention + residual + LayerNorm of the last step, forward and backward: the seed computes the
             whole (B, T, H) sequence and keeps its last row, as its forward does; ours computes that row alone
Dropout is 0 so that ours and the seed compute the same function. dtype "bfloat16-autocast" runs under
torch.autocast(bfloat16) with float32 parameters, as Lightning's bf16-mixed precision does.
Parity (relative_to_seed) is checked with cuDNN's TF32 off, so float32 means float32; timing runs with torch's
defaults, as users do.
"""

from __future__ import annotations

import contextlib
import copy

import torch

import lstm_attn
from lstm_attn import reference
from lstm_attn.bench.group import Candidate, Group, Outputs, Runner, Work
from lstm_attn.bench.options import MODEL_CASE, MODEL_HIDDEN, MODEL_INPUT_SIZE, MODEL_LAYERS

CASE = MODEL_CASE
PASSES = ("step", "lstm", "attention")
# label -> (dtype, autocast, parity floor). The floors are tests/test_modules.py's: float32 rounding, and bf16's
# three significant digits.
DTYPES = {"float32": (torch.float32, False, 1e-5), "bfloat16-autocast": (torch.bfloat16, True, 2e-2)}
REFERENCE = "seed"
INPUT_SIZE, HIDDEN, LAYERS = MODEL_INPUT_SIZE, MODEL_HIDDEN, MODEL_LAYERS
OUR_BACKENDS = {"cuda": ("reference", "triton", "cuda"), "cpu": ("reference", "cpu")}


def model_work(pass_: str, B: int, T: int, input_size: int, H: int, layers: int, act_itemsize: int) -> Work:
    """The FLOP and byte model of the model case: the original model's arithmetic (so ours reports an effective rate).

    FLOPs: LSTM forward 8*B*T*H*(in + H) per layer (four gates, each an (in + H) -> H product), backward twice
    that; attention part forward 6*B*T*H^2 (q, k, v projections) + 4*B*T^2*H (flash-attention's convention,
    backward 2.5x) + 8*B*T*H (residual, LayerNorm; backward 16*B*T*H), projections' backward twice their
    forward; the step adds the head, 2*B*H forward and twice that backward. Gate nonlinearities, the loss
    and Adam are not counted.
    Bytes, the minimum: parameters read once and their gradients written once (float32), plus
      lstm: x read, the LSTM output written, its gradient read (act_itemsize each);
      attention: the LSTM output read and its gradient written, the last row written and its gradient read;
      step: x and y read (float32 data).
    """
    p_lstm = sum(4 * H * ((input_size if layer == 0 else H) + H) + 8 * H for layer in range(layers))
    p_attention = 3 * (H * H + H) + 2 * H
    lstm_flops = 3 * sum(8 * B * T * H * ((input_size if layer == 0 else H) + H) for layer in range(layers))
    attention_flops = 3 * 6 * B * T * H * H + 4 * B * T * T * H * 7 // 2 + (8 + 16) * B * T * H
    params_bytes = lambda n: 4 * 2 * n  # noqa: E731  (read + gradient written, float32)
    if pass_ == "lstm":
        return Work(lstm_flops, act_itemsize * (B * T * input_size + 2 * B * T * H) + params_bytes(p_lstm))
    if pass_ == "attention":
        return Work(attention_flops, act_itemsize * (2 * B * T * H + 2 * B * H) + params_bytes(p_attention))
    if pass_ == "step":
        return Work(lstm_flops + attention_flops + 3 * 2 * B * H,
                    4 * (B * T * input_size + B) + params_bytes(p_lstm + p_attention + H + 1))
    raise ValueError(f"pass must be one of {PASSES}, got {pass_!r}")


def relative_to_seed(floor: float):
    """The model's parity rule: ours' error at most twice the seed's own error in the same precision, plus
    floor * max(1, max |truth|). The op's fixed float32 bound does not fit here: an LSTM gradient sums B*T steps,
    and the seed's own float32 error grows with them."""
    def failure(actual: torch.Tensor, truth: torch.Tensor, seed_same: torch.Tensor) -> str | None:
        if actual.shape != truth.shape:
            return f"shape {tuple(actual.shape)} != reference shape {tuple(truth.shape)}"
        err = (actual.detach().double() - truth).abs().max().item()
        seed_err = (seed_same.detach().double() - truth).abs().max().item()
        bound = 2 * seed_err + floor * max(1.0, truth.abs().max().item())
        if not err <= bound:  # also NaN
            return f"max abs error {err:.3e} > {bound:.3e} = 2 x {seed_err:.3e} (the seed's) + {floor} x scale"
        return None
    return failure


@contextlib.contextmanager
def _exact_float32():
    # cuDNN's LSTM uses TF32 for float32 by default, about 1e-3 relative: parity wants float32 itself.
    saved = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32 = saved




def _head(model: torch.nn.Module, h: torch.Tensor, ours: bool) -> torch.Tensor:
    """The attention + residual + LayerNorm part of the forward, up to the row the head reads."""
    if ours:
        return model.layer_norm(model.attention.last_step(h) + h[:, -1])
    return model.layer_norm(model.attention(h) + h)[:, -1]


def _autocast(device: torch.device, enabled: bool):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


class _Setting:
    """One group's data and the pristine weights every candidate starts from."""

    def __init__(self, B, T, device, autocast: bool, seed: int, n_sets: int, H: int = HIDDEN):
        self.device, self.autocast, self.H = device, autocast, H
        torch.manual_seed(seed)
        self.seed_model = reference.LSTMWithAttention(INPUT_SIZE, H, LAYERS, 0.0).to(device)
        g = torch.Generator(device).manual_seed(seed)
        rand = lambda *s: torch.randn(*s, generator=g, device=device)  # noqa: E731
        self.batches = [(rand(B, T, INPUT_SIZE), rand(B, 1)) for _ in range(n_sets)]
        # The attention part's input stands in for the LSTM output: in (-1, 1), and in the dtype the LSTM gives
        # under this autocast setting.
        with _autocast(device, autocast):
            h_dtype = self.seed_model.lstm(self.batches[0][0][:1, :2])[0].dtype
        self.hidden = [torch.tanh(rand(B, T, H)).to(h_dtype) for _ in range(n_sets)]
        self.grad_head = [rand(B, H) for _ in range(n_sets)]
        self.grad_lstm = [rand(B, T, H) for _ in range(n_sets)]

    def model(self, cls=None, **kwargs) -> torch.nn.Module:
        if cls is None:
            return copy.deepcopy(self.seed_model)
        model = cls(INPUT_SIZE, self.H, LAYERS, 0.0, **kwargs).to(self.device)
        model.load_state_dict(self.seed_model.state_dict(), strict=True)
        return model


def step_outputs(model, x, y, autocast: bool) -> Outputs:
    model.zero_grad(set_to_none=True)
    with _autocast(x.device, autocast):
        y_hat = model(x)
        loss = model.loss_fn(y_hat, y)
    loss.backward()
    return {"output": y_hat.detach(), **{f"grad {n}": p.grad for n, p in model.named_parameters()}}


def _attention_params(model) -> list[tuple[str, torch.nn.Parameter]]:
    return [(n, p) for n, p in model.named_parameters() if n.startswith(("attention.", "layer_norm."))]


def _attention_outputs(model, h, grad, ours: bool, autocast: bool) -> Outputs:
    h = h.detach().requires_grad_()
    params = _attention_params(model)
    with _autocast(h.device, autocast):
        out = _head(model, h, ours)
    grads = torch.autograd.grad(out, [h, *(p for _, p in params)], grad.to(out.dtype))
    return {"output": out.detach(), "grad h": grads[0], **{f"grad {n}": g for (n, _), g in zip(params, grads[1:])}}


def _runner(pass_: str, model, ours: bool, setting: _Setting) -> Runner:
    s = setting

    def autocast():
        return _autocast(s.device, s.autocast)

    if pass_ == "step":
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

        def step(i):
            x, y = s.batches[i]
            with autocast():
                loss = model.loss_fn(model(x), y)
            loss.backward()
            optimizer.step()

        def outputs():
            with _exact_float32():
                return step_outputs(model, *s.batches[0], s.autocast)

        return Runner(step, outputs, setup=lambda i: optimizer.zero_grad(set_to_none=True))
    if pass_ == "attention":
        params = [p for _, p in _attention_params(model)]
        hs = [h.detach().requires_grad_() for h in s.hidden]

        def attention(i):
            with autocast():
                out = _head(model, hs[i], ours)
            return torch.autograd.grad(out, [hs[i], *params], s.grad_head[i].to(out.dtype))

        def outputs():
            with _exact_float32():
                return _attention_outputs(model, s.hidden[0], s.grad_head[0], ours, s.autocast)

        return Runner(attention, outputs)
    params = list(model.lstm.parameters())

    def lstm(i):
        with autocast():
            out, _ = model.lstm(s.batches[i][0])
        return torch.autograd.grad(out, params, s.grad_lstm[i].to(out.dtype))

    return Runner(lstm, outputs=dict)  # only the seed runs this pass, and it is not checked against itself


def _expected(pass_: str, setting: _Setting) -> tuple[Outputs, Outputs]:
    wide = copy.deepcopy(setting.seed_model).double()
    x, y = setting.batches[0]
    with _exact_float32():
        if pass_ == "step":
            return (step_outputs(wide, x.double(), y.double(), False),
                    step_outputs(setting.model(), x, y, setting.autocast))
        h, g = setting.hidden[0], setting.grad_head[0]
        return (_attention_outputs(wide, h.double(), g.double(), False, False),
                _attention_outputs(setting.model(), h, g, False, setting.autocast))


def model_group(pass_: str, dtype_label: str, B: int, T: int, device: torch.device, seed: int,
                H: int = HIDDEN) -> Group:
    dtype, autocast, floor = DTYPES[dtype_label]
    setting = _Setting(B, T, device, autocast, seed, n_sets=2, H=H)
    work = model_work(pass_, B, T, INPUT_SIZE, H, LAYERS, torch.finfo(dtype).bits // 8)

    def seed_runner():
        return _runner(pass_, setting.model(), False, setting)

    candidates = [Candidate(REFERENCE, "peer", seed_runner, checked=False)]
    if pass_ != "lstm":
        # Imported here, not at the top: lstm_attn.modules imports Lightning, which the op sweep never needs.
        from lstm_attn.modules import LSTMWithAttention as cls
        statuses = lstm_attn.available_backends(device)
        for backend in OUR_BACKENDS[device.type]:
            def ours_runner(backend=backend) -> Runner:
                return _runner(pass_, setting.model(cls, backend=backend), True, setting)
            status = statuses[backend]
            candidates.append(Candidate(f"ours-{backend}", "ours", ours_runner,
                                        skip_reason=None if status.available else status.reason))
    return Group(CASE, pass_, dtype, {"B": B, "T": T, "H": H, "input_size": INPUT_SIZE, "layers": LAYERS},
                 work, REFERENCE, (REFERENCE,), candidates, lambda: _expected(pass_, setting), n_sets=2,
                 rule=relative_to_seed(floor), dtype_label=dtype_label)
