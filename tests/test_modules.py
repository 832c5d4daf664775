"""The drop-in model against the seed's (lstm_attn.reference): checkpoints, outputs, gradients, the exact
last-step path, the full-sequence features, Lightning behaviour, mixed precision and torch.compile."""

import copy
import inspect
import warnings

import pytest
import torch
import torch._dynamo
from torch.utils._python_dispatch import TorchDispatchMode

import lstm_attn
from _backends import model_backend_params, require_backend
from lstm_attn import reference
from lstm_attn.modules import AttentionLayer, LSTMWithAttention
from lstm_attn.testing import assert_parity

# (B, T, input_size, hidden_size, num_layers): T = 1, a single row, H = 1, odd and non-power-of-two sizes.
SHAPES = [(1, 1, 1, 1, 1), (3, 1, 3, 5, 2), (3, 7, 3, 16, 2), (2, 33, 1, 5, 1), (4, 33, 3, 16, 2), (2, 130, 2, 64, 2)]


def takes_float64(backend: str, device: str) -> bool:
    try:
        lstm_attn.backends.resolve(backend, device, torch.float64, 16)
    except ValueError:
        return False
    return True


@pytest.fixture(autouse=True)
def _no_tf32():
    # cuDNN's LSTM may use TF32 for float32 by default, about 1e-3 relative: more than float32 rounding.
    saved = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32 = saved


def lstm_backward_in_any_mode(device: str, train: bool):
    """cuDNN's LSTM has no backward in eval mode (the seed cannot take one there either); torch's own LSTM kernels
    have, so gradients in eval mode on CUDA are compared with cuDNN off."""
    return torch.backends.cudnn.flags(enabled=train or device != "cuda", allow_tf32=False)


def pair(input_size, hidden_size, num_layers, backend, device, dropout=None):
    """The seed's model and ours with the same weights."""
    if dropout is None:
        dropout = 0.25 if num_layers > 1 else 0.0
    torch.manual_seed(0)
    seed = reference.LSTMWithAttention(input_size, hidden_size, num_layers, dropout).to(device)
    ours = LSTMWithAttention(input_size, hidden_size, num_layers, dropout, backend=backend).to(device)
    ours.load_state_dict(seed.state_dict(), strict=True)
    return seed, ours


def forward_backward(model, x, grad_seed=7, rng_seed=5):
    """The output and every parameter's gradient, with dropout drawn from a fixed seed."""
    model.zero_grad()
    torch.manual_seed(rng_seed)
    y = model(x)
    g = torch.randn(y.shape, generator=torch.Generator().manual_seed(grad_seed), dtype=torch.float64)
    y.backward(g.to(y.device, y.dtype))
    return {"output": y, **{f"grad {n}": p.grad for n, p in model.named_parameters()}}


def test_constructor_matches_the_seed():
    seed_params = inspect.signature(reference.LSTMWithAttention.__init__).parameters
    ours_params = inspect.signature(LSTMWithAttention.__init__).parameters
    assert list(ours_params)[: len(seed_params)] == list(seed_params)
    assert all(ours_params[n].default == p.default for n, p in seed_params.items())
    # The additions, each with a default, so that the seed's calls build ours: the kernels, and Adam's learning rate
    # (the seed fixes it at 0.001).
    assert list(ours_params)[len(seed_params):] == ["backend", "lr"] and ours_params["backend"].default == "auto"
    assert ours_params["lr"].default == 0.001
    assert list(inspect.signature(AttentionLayer.__init__).parameters) == ["self", "hidden_size", "backend"]


def test_submodules_and_checkpoints_move_both_ways():
    seed, ours = pair(3, 6, 2, "reference", "cpu")
    assert [(n, type(m).__name__) for n, m in seed.named_modules()] == \
           [(n, type(m).__name__) for n, m in ours.named_modules()]
    assert list(seed.state_dict()) == list(ours.state_dict())
    assert ours.attention.scale == seed.attention.scale
    fresh_seed = reference.LSTMWithAttention(3, 6, 2, 0.25)
    fresh_seed.load_state_dict(ours.state_dict(), strict=True)
    fresh_ours = LSTMWithAttention(3, 6, 2, 0.25)
    fresh_ours.load_state_dict(fresh_seed.state_dict(), strict=True)
    for name, value in seed.state_dict().items():
        assert torch.equal(fresh_ours.state_dict()[name], value), name


def test_unknown_backend_is_refused():
    with pytest.raises(ValueError, match="backend"):
        LSTMWithAttention(1, 4, 1, 0.0, backend="fast")
    with pytest.raises(ValueError, match="backend"):
        AttentionLayer(4, backend="gpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine where backend 'cuda' cannot run")
def test_attention_layer_refuses_a_backend_that_cannot_run_here():
    """The full-sequence forward runs SDPA for the fast backends, yet a backend named for a GPU is refused on a CPU
    as the op refuses it, instead of quietly running elsewhere."""
    layer = AttentionLayer(16, backend="cuda")
    x = torch.randn(2, 5, 16)
    with pytest.raises(RuntimeError, match="backend='cuda' is not available on cpu"):
        layer(x)
    with pytest.raises(RuntimeError, match="backend='cuda' is not available on cpu"):
        layer.last_step(x)


@pytest.mark.parametrize("backend, device", model_backend_params())
@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B{}-T{}-I{}-H{}-L{}".format(*s))
def test_outputs_and_gradients_equal_the_seed(backend, device, shape, train):
    require_backend(backend, device)
    if backend == "triton" and device == "cpu" and shape[1] > 40:
        pytest.skip("Triton's interpreter runs every program in Python: long sequences are left to the GPU run")
    B, T, input_size, hidden_size, num_layers = shape
    # Where our LSTM replaces cuDNN's, dropout draws other masks than cuDNN's: compare without it (tests/test_lstm.py
    # checks the masks).
    lstm_kernels = lstm_attn.backends.resolve(LSTMWithAttention(1, 1, 1, 0.0, backend=backend).lstm_backend, device,
                                              torch.float32, hidden_size, op="lstm").name
    dropout = 0.0 if train and lstm_kernels != "reference" else None
    seed, ours = pair(input_size, hidden_size, num_layers, backend, device, dropout=dropout)
    seed64 = copy.deepcopy(seed).double().train(train)
    ours.train(train)
    x = torch.randn(B, T, input_size, generator=torch.Generator().manual_seed(1)).to(device)
    with lstm_backward_in_any_mode(device, train):
        got = forward_backward(ours, x)
        want = forward_backward(seed64, x.double())
        # The seed in float32 on the same device: its LSTM rounds as ours does, and its error is the yardstick.
        seed32 = forward_backward(seed.train(train), x)
    assert got.keys() == want.keys()
    for name in got:
        assert got[name] is not None, f"{name} is missing: the parameter left the autograd graph"
        assert_parity(name, got[name], want[name], seed32[name] if got[name].dtype == torch.float32 else None)


@pytest.mark.parametrize("backend, device", model_backend_params())
def test_float64_model_matches_the_seed_tightly(backend, device):
    require_backend(backend, device)
    if not takes_float64(backend, device):
        pytest.skip(f"backend {backend!r} does not take float64")
    seed, ours = pair(3, 16, 2, backend, device)
    x = torch.randn(3, 20, 3, dtype=torch.float64, device=device)
    got = forward_backward(ours.double().train(), x)
    want = forward_backward(seed.double().train(), x)
    for name in got:
        # Sums in another order, carried through the LSTM's backward: float64 rounding, a little grown.
        scale = max(1.0, want[name].abs().max().item())
        torch.testing.assert_close(got[name], want[name], rtol=0, atol=1e-8 * scale, msg=lambda m, name=name: f"{name}: {m}")


def test_key_bias_stays_in_the_graph_with_zero_gradient():
    _, ours = pair(3, 16, 2, "reference", "cpu")
    grads = forward_backward(ours, torch.randn(4, 9, 3))
    key_bias = grads["grad attention.key.bias"]
    assert key_bias is not None
    assert key_bias.abs().max() < 1e-6 * max(1.0, grads["grad attention.key.weight"].abs().max().item())


@pytest.mark.parametrize("backend, device", model_backend_params())
@pytest.mark.parametrize("shape", [(2, 1, 5), (3, 17, 16), (2, 70, 64)], ids=lambda s: "B{}-T{}-H{}".format(*s))
def test_attention_layer_returns_the_seeds_full_output(backend, device, shape):
    """Every fast backend runs SDPA here (AttentionLayer's docstring says why); each is still held to the seed."""
    require_backend(backend, device)
    B, T, H = shape
    torch.manual_seed(0)
    seed = reference.AttentionLayer(H).to(device)
    ours = AttentionLayer(H, backend=backend).to(device)
    ours.load_state_dict(seed.state_dict(), strict=True)
    x = torch.randn(B, T, H, device=device)
    grad = torch.randn(B, T, H, device=device)

    def run(layer, inputs):
        inputs = inputs.clone().requires_grad_(True)
        layer.zero_grad()
        out = layer(inputs)
        out.backward(grad.to(out.dtype))
        return {"output": out, "grad x": inputs.grad, **{f"grad {n}": p.grad for n, p in layer.named_parameters()}}

    got, want = run(ours, x), run(copy.deepcopy(seed).double(), x.double())
    for name in want:
        assert_parity(name, got[name], want[name])


@pytest.mark.parametrize("backend, device", model_backend_params())
@pytest.mark.parametrize("shape", [(2, 1, 5), (3, 17, 16), (2, 130, 64)], ids=lambda s: "B{}-T{}-H{}".format(*s))
def test_last_step_is_the_full_attentions_last_row(backend, device, shape):
    """The exact fast path against the full computation it replaces, in float64 where the backend takes it."""
    require_backend(backend, device)
    B, T, H = shape
    dtype = torch.float64 if takes_float64(backend, device) else torch.float32
    torch.manual_seed(0)
    layer = AttentionLayer(H, backend=backend).to(device, dtype)
    full = reference.AttentionLayer(H).to(device, torch.float64)
    full.load_state_dict(layer.state_dict())
    # Scores spread well apart, so a wrong softmax would show.
    x = (3 * torch.randn(B, T, H, dtype=torch.float64)).to(device)
    assert_parity("last_step", layer.last_step(x.to(dtype)), full(x)[:, -1])


def test_last_step_never_builds_keys_values_or_the_score_matrix():
    B, T, H = 2, 257, 4
    _, ours = pair(1, H, 1, "auto", "cpu")
    for name in ("key", "value"):
        getattr(ours.attention, name).register_forward_hook(
            lambda module, inputs, output, name=name: pytest.fail(f"{name} ran on {tuple(inputs[0].shape)}")
            if inputs[0].dim() == 3 else None)

    class ShapesSeen(TorchDispatchMode):
        square = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, (tuple, list)) else (out,):
                if isinstance(t, torch.Tensor) and list(t.shape).count(T) >= 2:
                    self.square.append(f"{func}: {tuple(t.shape)}")
            return out

    with ShapesSeen() as mode:
        ours(torch.randn(B, T, 1)).sum().backward()
    assert not mode.square, f"(T, T) tensors were built: {mode.square}"


@pytest.mark.parametrize("backend, device", model_backend_params())
@pytest.mark.parametrize("shape", [(2, 1, 1, 5), (3, 17, 3, 16), (2, 70, 2, 64)],
                         ids=lambda s: "B{}-T{}-I{}-H{}".format(*s))
def test_sequence_features_equal_the_seeds_intermediate(backend, device, shape):
    """layer_norm(attention(h) + h) for every step: what the seed computes before keeping the last row."""
    require_backend(backend, device)
    B, T, input_size, H = shape
    seed, ours = pair(input_size, H, 2, backend, device)
    seed64 = copy.deepcopy(seed).double().eval()
    ours.eval()
    x = torch.randn(B, T, input_size, device=device)
    grad = torch.randn(B, T, H, device=device)

    def seeds_features(x):
        h, _ = seed64.lstm(x)
        return seed64.layer_norm(seed64.attention(h) + h)

    def run(model, fn, inputs):
        model.zero_grad()
        out = fn(inputs)
        out.backward(grad.to(out.dtype))
        return {"features": out, **{f"grad {n}": p.grad for n, p in model.named_parameters() if p.grad is not None}}

    with lstm_backward_in_any_mode(device, train=False):
        got, want = run(ours, ours.sequence_features, x), run(seed64, seeds_features, x.double())
    assert got.keys() == {"features"} | {k for k in want if "fc" not in k}
    for name in got:
        assert_parity(name, got[name], want[name])
    with torch.no_grad():  # forward is fc of the last row
        assert_parity("fc(last row)", ours.fc(got["features"][:, -1]), seed64(x.double()))


def lstm_out_of_autocast(lstm: torch.nn.LSTM) -> None:
    """Make one LSTM run as ours does under CPU autocast on a CPU without a bfloat16 LSTM: autocast off, in its
    own dtype. Applied to the seed's model, it gives the seed's accuracy under the same split of precisions."""
    def forward(x, hx=None):
        with torch.autocast("cpu", enabled=False):
            return torch.nn.LSTM.forward(lstm, x.to(lstm.weight_ih_l0.dtype), hx)

    lstm.forward = forward


@pytest.mark.parametrize("backend, device", model_backend_params())
def test_bf16_autocast_runs_and_stays_close(backend, device, cpu_bf16_lstm_missing):
    """Under autocast the LSTM and Linear outputs are bf16 while LayerNorm's parameters stay float32; the
    model must run there (that is --precision bf16-mixed) with the seed's accuracy under the same autocast.
    On a CPU whose oneDNN has no bfloat16 LSTM (AVX2-only x86) the seed cannot run at all; ours runs its LSTM
    in float32 there, and is held to the seed with the same split of precisions."""
    require_backend(backend, device)
    seed_falls_back = cpu_bf16_lstm_missing and device == "cpu"
    seed, ours = pair(3, 32, 2, backend, device, dropout=0.0)
    # Only PyTorch's LSTM needs oneDNN's bfloat16 primitive; the package's own LSTM kernels run bfloat16 anywhere.
    # Under autocast the LSTM's kernels are chosen for the autocast dtype.
    lstm_kernels = lstm_attn.backends.resolve(ours.lstm_backend, device, torch.bfloat16, 32, op="lstm").name
    falls_back = seed_falls_back and lstm_kernels == "reference"
    x = torch.randn(4, 40, 3, device=device)
    exact = forward_backward(copy.deepcopy(seed).double(), x.double())
    if seed_falls_back:
        lstm_out_of_autocast(seed.lstm)
    lstm_dtypes = []
    run_lstm = ours._lstm
    ours._lstm = lambda x: (lambda out: lstm_dtypes.append(out[0].dtype) or out)(run_lstm(x))
    with warnings.catch_warnings(record=True) as caught, torch.autocast(device, dtype=torch.bfloat16):
        warnings.simplefilter("always")
        got = forward_backward(ours, x)
        seeds = forward_backward(seed, x)
        features = ours.sequence_features(x)
    assert lstm_dtypes == [torch.float32 if falls_back else torch.bfloat16] * 2
    said = [w for w in caught if "cannot run nn.LSTM under torch.bfloat16 autocast" in str(w.message)]
    assert len(said) == int(falls_back), [str(w.message) for w in caught]
    assert features.shape == (4, 40, 32) and torch.isfinite(features).all()
    for name in exact:
        err = (got[name].double() - exact[name]).abs().max().item()
        seed_err = (seeds[name].double() - exact[name]).abs().max().item()
        scale = max(1.0, exact[name].abs().max().item())
        # bf16 keeps about 3 significant digits; ours must be about as good as the seed's own bf16 run.
        assert err <= 2 * seed_err + 2e-2 * scale, f"{name}: error {err:.3e}, the seed's {seed_err:.3e}"


def test_lightning_hooks_and_optimizer_are_the_seeds():
    _, ours = pair(2, 8, 1, "auto", "cpu")
    logged = {}
    ours.log = lambda name, value, *args, **kwargs: logged.__setitem__(name, value.item())
    batch = (torch.randn(5, 6, 2), torch.randn(5, 1))
    loss = ours.training_step(batch, 0)
    assert logged["train_loss"] == pytest.approx(loss.item())
    assert loss.item() == pytest.approx(torch.nn.functional.mse_loss(ours(batch[0]), batch[1]).item())
    assert ours.validation_step(batch, 0) is None and logged["val_loss"] == pytest.approx(loss.item())
    optimizer = ours.configure_optimizers()
    assert isinstance(optimizer, torch.optim.Adam) and optimizer.defaults["lr"] == 1e-3
    assert isinstance(ours.loss_fn, torch.nn.MSELoss)
    assert dict(ours.hparams) == {"input_size": 2, "hidden_size": 8, "num_layers": 1, "dropout": 0.0,
                                  "output_size": 1, "backend": "auto", "lr": 0.001}


def test_torch_compile_has_no_graph_break_and_matches_eager():
    torch._dynamo.reset()
    _, ours = pair(3, 16, 2, "auto", "cpu", dropout=0.0)
    x = torch.randn(4, 11, 3)
    explanation = torch._dynamo.explain(ours)(x)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    for method, inputs in ((ours.attention.last_step, torch.randn(4, 11, 16)), (ours.sequence_features, x)):
        assert torch._dynamo.explain(method)(inputs).graph_break_count == 0, method.__name__
    compiled = torch.compile(ours)
    eager = forward_backward(ours, x)
    got = {name.replace("_orig_mod.", ""): value for name, value in forward_backward(compiled, x).items()}
    for name in eager:
        torch.testing.assert_close(got[name], eager[name], rtol=1e-5, atol=1e-6, msg=lambda m, name=name: f"{name}: {m}")
    torch._dynamo.reset()
